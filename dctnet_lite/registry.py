"""One registry: model families, named architectures, and the one table of shipped weights.

Three levels, after torchvision's ``Weights`` and timm's ``arch.tag`` names:

- a **family** is a network design: its config type and its builder (``dctnet``, the two-branch
  UNet of :mod:`dctnet_lite.model`). A checkpoint names its family, so every family loads through
  the same :func:`dctnet_lite.load`.
- an **architecture** is a named config of a family: ``dctnet_w48`` is the two-branch UNet at base
  width 48 (:func:`register_model`, :func:`create_model`, :func:`list_models`).
- **weights** are one shipped file each, named ``<arch>.<tag>`` (``dctnet_w48.toon``) and described
  in :data:`WEIGHTS`: architecture, tag, file, sha256 of the file, metrics, recipe, parent. The
  file names, the CLI (``dctnet-lite checkpoints``), the torch.hub entries (hubconf.py) and the cards
  (checkpoints/README.md) all read this one table.

Old names (``toon-w48``, ``toon_w48``) keep working as aliases for one release: they resolve to the
new name with a :class:`FutureWarning`. Where a weights file is found on disk is the business of
:mod:`dctnet_lite.checkpoint`; this module knows names, configs and builders only.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from torch import nn

from .model import ArchConfig, DCTNet
from .official import OfficialConfig, OfficialGenerator

#: Old names are removed in this release (a deprecation is announced for one release).
ALIASES_REMOVED_IN = "0.3"


# ---------------------------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Family:
    """A network design: the model class, its config class, and how to build one.

    ``config_cls`` must provide ``from_dict``/``to_dict``/``to_json``, ``describe()`` and
    ``diff(other)``; ``model_cls(config)`` builds the network, whose ``.config`` is that config.
    """

    name: str
    model_cls: type
    config_cls: type
    summary: str
    #: builds a config from an int (a base width) for :func:`create_model`
    from_width: Optional[Callable[[int], Any]] = None

    def build(self, config) -> nn.Module:
        if not isinstance(config, self.config_cls):
            raise TypeError(f"family {self.name!r} builds from a {self.config_cls.__name__}, "
                            f"got {type(config).__name__}")
        return self.model_cls(config)

    def config_from_dict(self, d: Mapping):
        return self.config_cls.from_dict(d)


_FAMILIES: Dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise ValueError(f"family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; this dctnet_lite knows: "
                       f"{', '.join(sorted(_FAMILIES))}") from None


def list_families() -> List[str]:
    return sorted(_FAMILIES)


def family_of(obj) -> Family:
    """The family of a model or a config (by its class)."""
    for fam in _FAMILIES.values():
        if isinstance(obj, (fam.model_cls, fam.config_cls)):
            return fam
    raise TypeError(f"{type(obj).__name__} belongs to no registered model family "
                    f"(known: {', '.join(sorted(_FAMILIES))})")


DCTNET = register_family(Family(
    name="dctnet", model_cls=DCTNet, config_cls=ArchConfig, from_width=ArchConfig.from_width,
    summary="two-branch DCT-Net UNet (content + texture encoders, fusion weighted by the style strength)"))
OFFICIAL = register_family(Family(
    name="official", model_cls=OfficialGenerator, config_cls=OfficialConfig,
    from_width=OfficialConfig.from_channels,
    summary="ModelScope's DCT-Net generator (unet_generator + guided filter), imported from its "
            "frozen TF graphs; strength blends photo and cartoon"))


# ---------------------------------------------------------------------------------------------
# Architectures (named configs)
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Arch:
    name: str
    family: str
    factory: Callable[[], Any]

    def config(self):
        return self.factory()


_ARCHS: Dict[str, Arch] = {}


def register_model(name: str, factory: Callable[[], Any], family: str = "dctnet") -> None:
    """Register an architecture name: ``factory()`` returns the config of family ``family``."""
    get_family(family)
    if name in _ARCHS:
        raise ValueError(f"model {name!r} is already registered")
    if "." in name:
        raise ValueError(f"model names may not contain '.' (it separates arch and tag): {name!r}")
    _ARCHS[name] = Arch(name, family, factory)


def list_models(family: Optional[str] = None) -> Sequence[str]:
    return sorted(n for n, a in _ARCHS.items() if family is None or a.family == family)


def get_arch(name: str) -> Arch:
    try:
        return _ARCHS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None


def build(config) -> nn.Module:
    """An untrained network of the family that owns ``config``."""
    return family_of(config).build(config)


def create_model(name_or_config: Union[str, int, Any], pretrained: bool = False) -> nn.Module:
    """An untrained network from an architecture name (``dctnet_w48``), a base width (two-branch
    family) or a config; ``pretrained=True`` loads the arch's default shipped weights instead
    (``create_model("dctnet_w48", pretrained=True)`` is ``load("dctnet_w48.toon")``)."""
    if pretrained:
        if not isinstance(name_or_config, str):
            raise ValueError("pretrained=True needs an architecture name, e.g. 'dctnet_w48'")
        from .checkpoint import load  # checkpoint imports this module

        return load(default_weights_for(name_or_config).name)
    if isinstance(name_or_config, bool):
        raise TypeError("create_model takes a name, a width or a config, not a bool")
    if isinstance(name_or_config, int):
        return DCTNet(ArchConfig.from_width(name_or_config))
    if isinstance(name_or_config, str):
        return build(get_arch(name_or_config).config())
    return build(name_or_config)


for _w in (16, 24, 32, 40, 48, 56, 64):
    register_model(f"dctnet_w{_w}", lambda _w=_w: ArchConfig.from_width(_w))
for _c in (16, 24, 32):  # official_c32n4 is every released ModelScope DCT-Net graph
    register_model(f"official_c{_c}n4", lambda _c=_c: OfficialConfig.from_channels(_c, 4), family="official")
#: official_c32n4.toon pruned to half its MACs with global LAMP ranking (prune/official_macs50.yaml):
#: the residual chain and its blocks at 64 of 128 channels, x1 at 56 of 64, the rest unpruned.
OFFICIAL_MACS50_TABLE = {"x0": 32, "down1": 32, "x1": 56, "down2": 64, "res": 64, "block0": 64, "block1": 64,
                         "block2": 64, "block3": 64, "dec1": 56, "dec0": 32}
register_model("official_macs50n4", lambda: OfficialConfig.from_table(OFFICIAL_MACS50_TABLE, 4), family="official")


# ---------------------------------------------------------------------------------------------
# Weights: the one table
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Weights:
    """One shipped weights file. ``name`` = ``<arch>.<tag>``, the file ``<name>.safetensors``."""

    arch: str
    tag: str
    sha256: str                      #: of the whole file
    summary: str
    recipe: str                      #: the commands that made it (reproducible)
    parent: Optional[str] = None     #: the weights it was derived from (pruned from / distilled)
    teacher: Optional[str] = None
    #: what the card measures: ``{metric: value}``, all against ``reference`` unless the key says
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    reference: str = ""
    packaged: bool = False           #: ships inside the wheel (package data)
    aliases: Tuple[str, ...] = ()
    card: str = ""                   #: anchor of its section in checkpoints/README.md

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"

    @property
    def file(self) -> str:
        return f"{self.name}.safetensors"

    @property
    def family(self) -> str:
        return get_arch(self.arch).family

    def config(self):
        return get_arch(self.arch).config()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(name=self.name, file=self.file, family=self.family, metrics=dict(self.metrics),
                 aliases=list(self.aliases))
        return d


def _curve(width: int, sha256: str, s1: float, s05: float) -> Weights:
    """A point of the quality-vs-latency curve: the teacher pruned to ``width``, short distillation."""
    return Weights(
        arch=f"dctnet_w{width}", tag="toon", aliases=(f"toon-w{width}", f"toon_w{width}"), sha256=sha256,
        summary=f"dctnet_w64.toon Taylor-pruned to width {width}, distilled 150 CPU steps (short budget)",
        recipe="bash finetune/reproduce.sh widths", parent="dctnet_w64.toon", teacher="dctnet_w64.toon",
        reference="dctnet_w64.toon", metrics={"lpips_alex@512 s=1": s1, "lpips_alex@512 s=0.5": s05},
        card="dctnet_w56toon-dctnet_w40toon-dctnet_w32toon-the-curve")


def _official_student(arch: str, overlay: str, sha256: str, summary: str, s1: float, s05: float,
                      card: str, packaged: bool = False) -> Weights:
    """An official_c32n4.toon student of ``bash finetune/reproduce.sh official``: pruned by
    ``prune/official_<overlay>.yaml``, distilled with ``finetune/distill_official_<overlay>_cpu.yaml``."""
    return Weights(
        arch=arch, tag="toon", sha256=sha256, summary=summary, packaged=packaged,
        recipe=f"dctnet-lite prune --config prune/official_c24.yaml --config prune/official_{overlay}.yaml, then "
               "dctnet-lite train --config finetune/distill_official_c24.yaml --config finetune/distill_official_c24_cpu.yaml "
               f"--config finetune/distill_official_{overlay}_cpu.yaml (bash finetune/reproduce.sh official)",
        parent="official_c32n4.toon", teacher="official_c32n4.toon", reference="official_c32n4.toon",
        metrics={"lpips_alex@512 s=1": s1, "lpips_alex@512 s=0.5": s05}, card=card)


#: Every weights file we ship. The default first: the one eval/quality_vs_latency.yaml's rule picks
#: (the fastest on the default CPU path at 1024 px whose LPIPS to the renderer is within 0.01 of the
#: best shipped teacher's; report.md, "Default by the rule"). Metrics: the cards' figures
#: (eval/*_card.yaml), LPIPS (alex) on the 13 validation photos at 512 px, CPU fp32.
WEIGHTS: Tuple[Weights, ...] = (
    _official_student("official_macs50n4", "macs50", "d75d35d71bae264ed94d800b3cecddb340fa75271f514387831f0f091f9aeb9a",
                      "the default: official_c32n4.toon LAMP-pruned to half its MACs (non-uniform), distilled 500 CPU steps",
                      0.00015, 0.000044,
                      "official_macs50n4toon-the-official-teacher-pruned-to-half-its-macs-and-distilled-the-default",
                      packaged=True),
    Weights(
        arch="official_c24n4", tag="toon",
        sha256="68d7103a243da7a24df4feb14737e4fc07a7f9134ac93589b2b036ed50f61e08",
        summary="the second default: official_c32n4.toon L1-pruned to c=24, distilled 500 CPU steps",
        recipe="dctnet-lite prune --config prune/official_c24.yaml --checkpoint official_c32n4.toon, then "
               "dctnet-lite train --config finetune/distill_official_c24.yaml --config finetune/distill_official_c24_cpu.yaml "
               "--model.init_checkpoint runs/pruned-official-c24.safetensors --model.teacher_checkpoint official_c32n4.toon",
        parent="official_c32n4.toon", teacher="official_c32n4.toon", reference="official_c32n4.toon",
        metrics={"lpips_alex@512 s=1": 0.0066, "lpips_alex@512 s=0.5": 0.0019},
        card="official_c24n4toon-the-official-teacher-pruned-to-c24-and-distilled-the-second-default"),
    Weights(
        arch="dctnet_w48", tag="toon", aliases=("toon-w48", "toon_w48"),
        sha256="bc4d5dfcdc6713950d79cdb59d89c0e421414d794f25f684aa158f986de0f7ed",
        summary="the first default: dctnet_w64.toon Taylor-pruned to width 48, distilled 500 CPU steps",
        recipe="bash finetune/reproduce.sh w48",
        parent="dctnet_w64.toon", teacher="dctnet_w64.toon", reference="dctnet_w64.toon",
        metrics={"lpips_alex@512 s=1": 0.0024, "lpips_alex@512 s=0.5": 0.0022},
        card="dctnet_w48toon-pruned-and-distilled-the-first-default"),
    Weights(
        arch="dctnet_w64", tag="toon", aliases=("toon-w64", "toon_w64"),
        sha256="4a719b0f1fac87f6e2b1f717347d08bc1977f49745a1db79c00251c8ec5cb8b8",
        summary="the teacher: trained on the toon renderer's targets, 720 CPU steps",
        recipe="bash finetune/reproduce.sh teacher",
        reference="the toon renderer", metrics={"lpips_alex@512 s=1": 0.1345, "lpips_alex@512 s=0.5": 0.0499},
        card="dctnet_w64toon-the-teacher"),
    Weights(
        arch="official_c32n4", tag="toon",
        sha256="b00b8582a380ecad2235eed705b28f2b91244455c28232f69a9c20ac1e94c005",
        summary="the official DCT-Net generator trained on the toon renderer's targets, 720 CPU steps",
        recipe="dctnet-lite train --config finetune/teacher_official.yaml --config finetune/teacher_official_cpu.yaml",
        reference="the toon renderer", metrics={"lpips_alex@512 s=1": 0.0862, "lpips_alex@512 s=0.5": 0.0243},
        card="official_c32n4toon-the-official-generator-as-a-teacher"),
    _official_student("official_c16n4", "c16", "d88045ac199872e2488365e7be3698d04fc585ef99d6679576b4c51e4b1a09e9",
                      "official_c32n4.toon Taylor-pruned to c=16, distilled 500 CPU steps", 0.0524, 0.0183,
                      "official_c16n4toon-the-official-teacher-pruned-to-c16-and-distilled"),
    *(_curve(w, sha, s1, s05) for w, sha, s1, s05 in (
        (56, "7450b6c6bf91f08ab81e677167edd8759259f66d3d9172834a21950bf1c65df4", 0.0015, 0.0014),
        (40, "a763b18b437d16f0dcb3a4ac97261099310b82fb43c0974fee8db036845b75fe", 0.0280, 0.0195),
        (32, "c551b023299f4d3c669367fd9ab9f46c7030a8382cce9dd2710d18bbcb0323b4", 0.1112, 0.0655))),
)

#: The checkpoint used when none is named; it ships inside the wheel.
DEFAULT_WEIGHTS = WEIGHTS[0].name


def _index(table: Iterable[Weights]) -> Tuple[Dict[str, Weights], Dict[str, str]]:
    by_name, aliases = {}, {}
    for w in table:
        get_arch(w.arch)
        if w.name in by_name:
            raise ValueError(f"weights {w.name!r} are listed twice")
        by_name[w.name] = w
        for a in w.aliases:
            if a in aliases or a in by_name:
                raise ValueError(f"alias {a!r} is used twice")
            aliases[a] = w.name
    return by_name, aliases


_BY_NAME, _ALIASES = _index(WEIGHTS)


def canonical_name(name: str, warn: bool = True) -> str:
    """``name`` itself, or the current name of a deprecated alias (with a FutureWarning)."""
    new = _ALIASES.get(name)
    if new is None:
        return name
    if warn:
        warnings.warn(f"checkpoint name {name!r} is deprecated and will be removed in dctnet_lite "
                      f"{ALIASES_REMOVED_IN}: use {new!r}", FutureWarning, stacklevel=3)
    return new


def find_weights(name: str, warn: bool = True) -> Optional[Weights]:
    """The table entry for a name or deprecated alias, or None when it is not a shipped name."""
    return _BY_NAME.get(canonical_name(name, warn=warn))


def get_weights(name: str) -> Weights:
    w = find_weights(name)
    if w is None:
        raise KeyError(f"no shipped weights named {name!r}; shipped: {', '.join(_BY_NAME)}")
    return w


def list_weights(family: Optional[str] = None) -> List[Weights]:
    return [w for w in WEIGHTS if family is None or w.family == family]


def default_weights_for(arch: str) -> Weights:
    """The first weights of the table for an architecture (``dctnet_w48`` -> ``dctnet_w48.toon``)."""
    get_arch(arch)
    for w in WEIGHTS:
        if w.arch == arch:
            return w
    raise KeyError(f"no shipped weights for architecture {arch!r}; shipped: "
                   f"{', '.join(sorted({w.arch for w in WEIGHTS}))}")


def weights_by_sha256(sha: str) -> Optional[Weights]:
    for w in WEIGHTS:
        if w.sha256 == sha:
            return w
    return None
