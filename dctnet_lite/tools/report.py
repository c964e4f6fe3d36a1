"""One recipe -> a quality-vs-latency report: ``report.json``, ``report.md`` and ``pareto.png``.

``make_report(recipe)`` runs :func:`dctnet_lite.tools.evaluate.evaluate` and
:func:`dctnet_lite.tools.bench.bench` as a recipe says, and writes them to
``<recipe folder>/reports/<name>/`` (``eval/reports/<name>/`` for the shipped recipes). A recipe
is parsed by jsonargparse (:func:`build_parser`; the sections are the dataclasses
:class:`Quality`, :class:`Bench`, :class:`Pareto` and :class:`Rule`, each of which may be ``false``), the same
parser behind ``dctnet-lite eval --config FILE [--config OVERLAY ...] [--key VALUE ...]``
(:func:`cli_main`). Every field is described in ``eval/README.md``.

Relative paths in a recipe (images, checkpoint *paths*, reference folders, ``extra_bench``) are
resolved against ``base_dir``, itself relative to the recipe file that sets it (default: the
first recipe file's folder; the current directory for a dict). Checkpoint *names*
(``dctnet_w48.toon``: no path separator, no ``.safetensors``) go through the checkpoint registry.
The written report holds no absolute path: paths are relative to ``base_dir``, or their last two
components outside it (:func:`dctnet_lite.tools.recipes.portable_tree`).

The Pareto plot puts each evaluated checkpoint at (latency at ``pareto.resolution``, mean
``pareto.metric`` at ``pareto.strength``/``pareto.size``). Against a teacher reference the teacher
itself scores 0 by definition (it *is* the reference) and is drawn there, marked "reference".
A point is on the front when no other point is at least as fast *and* at least as good, and
strictly better in one of the two.

The report covers every family in one table (:func:`summary_rows`, "Both families" in
report.md): ``checkpoints: [shipped]`` is every row of the weights table
(:func:`expand_checkpoints`), ``quality.teachers: registry`` adds each row's own teacher as a
second reference (:func:`own_teachers`), ``bench.tf_anchor: auto`` times the official graph under
TensorFlow in the same run (:func:`tf_anchor`; TensorFlow lives in its own venv, never a
dependency), and :func:`pick_default` applies the default rule (the ``rule`` section).

``jsonargparse``, ``pyyaml`` and ``matplotlib`` (the ``eval`` extra) are imported lazily;
without matplotlib the plot is drawn with Pillow (plainer: linear axes, same points and ticks).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from PIL import Image, ImageDraw

from .. import __version__
from ..checkpoint import CheckpointError, resolve
from ..fileutil import atomic_write_bytes
from .bench import ANCHOR, bench
from .evaluate import LOWER_IS_BETTER, evaluate
from .recipes import (as_argv, check_keys, config_files, dump, parse,
                      portable_tree, rewrite_argv, run_verb, sources)

METRIC_TITLES = {"lpips_alex": "LPIPS (alex)", "lpips_vgg": "LPIPS (vgg)", "psnr": "PSNR (dB)",
                 "ssim": "SSIM"}


# ---------------------------------------------------------------------------------------------
# Recipe: three sections (each may be false) and the top-level keys, parsed by jsonargparse
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Quality:
    """What is evaluated against what (dctnet_lite.tools.evaluate.evaluate)."""

    reference: str = "renderer"
    self_reference: Optional[str] = "renderer"
    #: each row's own teacher: "registry" (the weights table's ``teacher``), a mapping
    #: {checkpoint: teacher or null} (over the table), or null (no teacher column)
    teachers: Optional[Union[str, Dict[str, Optional[str]]]] = None
    teacher_metrics: List[str] = dataclasses.field(default_factory=lambda: ["lpips_alex"])
    precision: str = "auto"
    images: Optional[str] = None
    split: Optional[str] = None
    limit: Optional[int] = None
    strengths: List[float] = dataclasses.field(default_factory=lambda: [1.0, 0.5])
    sizes: List[int] = dataclasses.field(default_factory=lambda: [512])
    metrics: List[str] = dataclasses.field(default_factory=lambda: ["lpips_alex", "lpips_vgg", "psnr", "ssim"])
    device: str = "cpu"
    interval: str = "bootstrap"


@dataclasses.dataclass
class Bench:
    """What is timed (dctnet_lite.tools.bench.bench)."""

    targets: Optional[List[Union[int, str]]] = None
    widths: List[int] = dataclasses.field(default_factory=list)
    resolutions: List[int] = dataclasses.field(default_factory=lambda: [512, 1024])
    batches: List[int] = dataclasses.field(default_factory=lambda: [1])
    precisions: List[str] = dataclasses.field(default_factory=lambda: ["fp32"])
    backends: List[str] = dataclasses.field(default_factory=lambda: ["eager"])
    device: str = "cpu"
    threads: Optional[int] = None
    warmup: int = 2
    repeats: int = 5
    cold_start: bool = True
    cold_start_size: Optional[int] = None
    #: time the targets of each configuration round-robin (bench(interleave=True)): the
    #: ratios between rows then hold on a machine whose speed drifts
    interleave: bool = False
    #: the official graph under TensorFlow as an anchor row: auto (when TensorFlow is there) or off
    tf_anchor: str = "off"
    tf_python: Optional[str] = None      #: the TensorFlow venv's python (default: $TF_PYTHON)
    tf_weights: Optional[str] = "official_c32n4.toon"  #: weights frozen into the graph (null: random)


@dataclasses.dataclass
class Pareto:
    """The two coordinates of the Pareto plot."""

    metric: str = "lpips_alex"
    strength: float = 1.0
    size: Optional[int] = None
    resolution: Optional[int] = None
    batch: int = 1
    precision: Optional[str] = None
    backend: str = "best"


@dataclasses.dataclass
class Rule:
    """The default rule (:func:`pick_default`): among the shipped rows, the fastest whose quality
    (``metric`` at ``strength``, the first quality size) is within ``tolerance`` of the best
    shipped teacher's."""

    tolerance: float = 0.01
    metric: str = "lpips_alex"
    strength: float = 1.0
    resolution: Optional[int] = None     #: latency resolution (default: the largest benchmarked)
    precision: Optional[str] = None      #: latency precision as requested (default: pareto's)
    among: str = "shipped"               #: "shipped" (rows of the weights table) or "all"


SECTIONS = {"quality": Quality, "bench": Bench, "pareto": Pareto, "rule": Rule}
TOP_KEYS = ("name", "base_dir", "checkpoints", "quality", "bench", "pareto", "rule", "extra_bench")
#: ``checkpoints`` entry that stands for every row of the weights table
#: (:data:`dctnet_lite.registry.WEIGHTS`), in table order; an empty or null list means the same.
SHIPPED = "shipped"
#: Every recipe field: top-level keys -> the fields of their section (None: not a section).
RECIPE_FIELDS: Dict[str, Optional[Tuple[str, ...]]] = {
    k: tuple(f.name for f in dataclasses.fields(SECTIONS[k])) if k in SECTIONS else None for k in TOP_KEYS}
#: Short flags of the earlier CLI, still accepted.
_ALIASES = {"--recipe": "--config", "--images": "--quality.images", "--data": "--quality.images",
            "--limit": "--quality.limit"}
#: The shipped recipe, read when no --config is given (relative to the current directory).
DEFAULT_CONFIG = "eval/quality_vs_latency.yaml"


def build_parser(prog: str = "dctnet-lite eval"):
    """The jsonargparse parser of an eval recipe (the ``dctnet-lite eval`` command line)."""
    from jsonargparse import ActionConfigFile, ArgumentParser
    from jsonargparse.typing import path_type

    parser = ArgumentParser(
        prog=prog, exit_on_error=False,
        description="Evaluate checkpoints against a reference, benchmark them and write report.json, "
                    "report.md and pareto.png (eval/README.md). Options come from --config FILE "
                    "(repeatable: later files overlay earlier ones; default " + DEFAULT_CONFIG + ") and "
                    "the command line (--quality.images DIR, --bench.threads 2, ...). Short forms: "
                    "--images/--data DIR (quality.images), --limit N (quality.limit).")
    parser.add_argument("--config", action=ActionConfigFile,
                        help="a recipe YAML (eval/*.yaml); --recipe FILE is a deprecated alias")
    parser.add_argument("--name", type=Optional[str], default=None,
                        help="report folder name (default: the first config file's stem)")
    readable_dir = path_type("dr")
    parser.add_argument("--base_dir", type=Optional[readable_dir], default=None,
                        help="folder that relative paths start from, itself relative to the config file "
                             "that sets it (default: the first config file's folder)")
    parser.add_argument("--checkpoints", type=str, nargs="+", default=[SHIPPED],
                        help="checkpoint names or paths to evaluate and benchmark; 'shipped' (the "
                             "default, also an empty list) stands for every row of the weights table")
    for key, cls in SECTIONS.items():
        parser.add_argument(f"--{key}", type=Union[cls, bool], default=cls(),
                            help=f"{cls.__doc__} false: skip the section")
    parser.add_argument("--extra_bench", type=Optional[List[str]], default=[],
                        help="bench JSON files measured elsewhere, shown as extra latency tables")
    parser.add_argument("--out", type=Optional[str], default=None,
                        help="write the report to this folder (default: <first config folder>/reports/<name>)")
    return parser


def _section(value, cls) -> Union[dict, bool]:
    if value is False or value is None:
        return False
    if value is True:
        return dataclasses.asdict(cls())
    return dict(value) if isinstance(value, Mapping) else dataclasses.asdict(value)


def parse_recipe(argv: Sequence[str]) -> Tuple[dict, List[str]]:
    """An eval recipe from command-line arguments -> (recipe dict, the config files in order).

    The recipe has every field (defaults filled in; a skipped section is ``False``), ``base_dir``
    resolved (an absolute path), ``name`` and ``out`` as given. Raises ValueError (one line) on an
    unknown field or a bad value.
    """
    argv = rewrite_argv(argv, "eval", _ALIASES)
    for source, mapping in sources(argv):
        if mapping is not None:
            check_keys(mapping, {**RECIPE_FIELDS, "out": None}, "recipe field", source)
            if isinstance(mapping.get("checkpoints"), str):
                raise ValueError(f"checkpoints must be a list in {source}: write "
                                 f"[{mapping['checkpoints']}]")
    parser = build_parser()
    cfg = parse(parser, argv)
    files = config_files(cfg)
    recipe = dump(parser, cfg)
    for key, cls in SECTIONS.items():
        recipe[key] = _section(recipe.get(key), cls)
    recipe["extra_bench"] = list(recipe.get("extra_bench") or [])
    recipe["checkpoints"] = list(recipe.get("checkpoints") or [SHIPPED])
    base = cfg.get("base_dir")
    first = Path(files[0]).parent if files else Path.cwd()
    recipe["base_dir_resolved"] = os.path.normpath(base.absolute if base is not None else first.absolute())
    if not recipe.get("name"):
        recipe["name"] = Path(files[0]).stem if files else "report"
    return recipe, files


def load_recipe(recipe: Union[Mapping, str, os.PathLike, Sequence]) -> Tuple[dict, Optional[Path]]:
    """A recipe (a mapping, a YAML path, or a list of them: later ones overlay earlier ones) with
    defaults filled in, and the first file it came from (``None`` for a mapping)."""
    cfg, files = parse_recipe(as_argv(recipe))
    return cfg, (Path(files[0]) if files else None)


def _looks_like_path(s: str) -> bool:
    return "/" in s or os.sep in s or s.endswith(".safetensors") or s.startswith(".")


def _resolve_path(value: Optional[str], base: Path) -> Optional[str]:
    if value is None:
        return None
    p = Path(os.path.expanduser(str(value)))
    return os.path.normpath(p if p.is_absolute() else (base / p))


def _resolve_spec(value, base: Path):
    """Checkpoint names and ``renderer`` pass through; paths are made relative to ``base``."""
    if value is None or isinstance(value, int) or value == "renderer" or not _looks_like_path(str(value)):
        return value
    return _resolve_path(value, base)


# ---------------------------------------------------------------------------------------------
# Pareto
# ---------------------------------------------------------------------------------------------
def pareto_front(points: Sequence[Tuple[float, float]],
                 minimize: Tuple[bool, bool] = (True, True)) -> List[bool]:
    """For each (x, y): is it on the Pareto front (not dominated by any other point)?

    A point is dominated when another is at least as good in both coordinates and strictly better
    in one (``minimize`` says which direction is better per coordinate). Equal points are both
    kept. NaN points are never on the front.
    """
    sx, sy = (1 if minimize[0] else -1), (1 if minimize[1] else -1)
    pts = [(sx * float(x), sy * float(y)) for x, y in points]
    front = []
    for i, (xi, yi) in enumerate(pts):
        if math.isnan(xi) or math.isnan(yi):
            front.append(False)
            continue
        dominated = any(j != i and xj <= xi and yj <= yi and (xj < xi or yj < yi)
                        for j, (xj, yj) in enumerate(pts) if not (math.isnan(xj) or math.isnan(yj)))
        front.append(not dominated)
    return front


def pareto_points(quality: dict, bench_result: dict, cfg: Mapping, anchor: Optional[Mapping] = None) -> dict:
    """Join quality rows and bench rows per checkpoint and mark the front (see module doc).

    ``cfg["precision"]`` matches a row's precision as it ran or as it was requested (``auto``:
    the default path). Each point has the latency's spread (``lat_lo``/``lat_hi``: min and max
    of the timed repeats) besides the quality's interval (``lo``/``hi``). ``anchor`` (a measured
    :func:`tf_anchor` row) becomes ``"anchor"``: its latency at the plot's resolution and, when its
    graph carries a checkpoint's weights, that checkpoint's quality; it is not on the front.
    """
    metric = cfg["metric"]
    strength = float(cfg["strength"])
    size = int(cfg["size"] or quality["sizes"][0])
    resolution = int(cfg["resolution"] or min(bench_result["settings"]["resolutions"]))
    batch = int(cfg["batch"] or 1)
    precision = cfg["precision"] or bench_result["settings"]["precisions"][0]
    backend = cfg["backend"] or "best"
    rows = [r for r in bench_result["rows"] if "error" not in r and r["resolution"] == resolution
            and r["batch"] == batch and precision in (r["precision"], r.get("requested_precision"))
            and (backend == "best" or r["backend"] == backend)]
    ran = sorted({r["precision"] for r in rows})
    points = []
    for q in quality["results"]:
        if q["strength"] != strength or q["size"] != size:
            continue
        qpath = Path(q["path"]).resolve()
        mine = [r for r in rows if r.get("checkpoint") and Path(r["checkpoint"]).resolve() == qpath]
        if not mine:
            continue
        fastest = min(mine, key=lambda r: r["median_ms"])
        if q.get("is_reference") and quality.get("reference_kind") == "checkpoint":
            value, lo, hi, ref = 0.0, 0.0, 0.0, True  # the reference against itself
            if not LOWER_IS_BETTER[metric]:
                continue  # PSNR/SSIM of a model with itself are not meaningful points
        elif metric in q["metrics"]:
            m = q["metrics"][metric]
            value, lo, hi, ref = m["mean"], m["lo"], m["hi"], False
        else:
            continue
        points.append({"label": q["checkpoint"], "checkpoint": q["path"], "arch": q["arch"],
                       "family": q.get("family", "dctnet"), "width": q["width"],
                       "latency_ms": fastest["median_ms"],
                       "lat_lo": fastest.get("min_ms", fastest["median_ms"]),
                       "lat_hi": fastest.get("max_ms", fastest["median_ms"]),
                       "backend": fastest["backend"], "precision": fastest["precision"],
                       "value": value, "lo": lo, "hi": hi, "is_reference": ref})
    flags = pareto_front([(p["latency_ms"], p["value"]) for p in points],
                         minimize=(True, LOWER_IS_BETTER[metric]))
    for p, f in zip(points, flags):
        p["on_front"] = f
    anchor_point = None
    if anchor and anchor.get("latency") and str(resolution) in anchor["latency"]:
        lat = anchor["latency"][str(resolution)]
        anchor_point = {"label": anchor["label"], "latency_ms": lat["median_ms"],
                        "lat_lo": lat["min_ms"], "lat_hi": lat["max_ms"], "value": None, "lo": None, "hi": None,
                        "quality_from": anchor.get("quality_from")}
        src = anchor.get("quality_path")
        for q in quality["results"]:
            if src and q["strength"] == strength and q["size"] == size and metric in q["metrics"] \
                    and Path(q["path"]).resolve() == Path(src).resolve():
                m = q["metrics"][metric]
                anchor_point.update(value=m["mean"], lo=m["lo"], hi=m["hi"])
    return {"metric": metric, "strength": strength, "size": size, "resolution": resolution,
            "batch": batch, "precision": precision, "ran_precision": "/".join(ran) or precision,
            "backend": backend, "reference": quality.get("reference"),
            "device": bench_result["settings"]["device"], "threads": bench_result["settings"].get("threads"),
            "lower_is_better": LOWER_IS_BETTER[metric], "points": points, "anchor": anchor_point}


def nice_ticks(lo: float, hi: float, log: bool = False, most: int = 8) -> Tuple[List[float], List[str]]:
    """Readable axis ticks over ``[lo, hi]``: ``(values, labels)``, 3 to ``most`` of them.

    Linear: multiples of 1, 2, 2.5 or 5 x 10^k, labelled with just enough decimals
    (``0.02, 0.04, 0.06``, never ``0.08106``). Log (``lo > 0``): 1-2-5 per decade (finer when
    the range is under a decade), labelled as plain numbers (``100, 200, 500``).
    """
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got [{lo}, {hi}]")
    if hi < lo:
        lo, hi = hi, lo
    if log and lo > 0:
        for subs in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)):
            vals = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
                    for m in subs]
            vals = [v for v in vals if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
            if len(vals) >= 4 or (len(vals) >= 3 and len(subs) > 6):
                while len(vals) > most:
                    vals = vals[::2]
                return vals, [_tick_label(v, v) for v in vals]
        # too narrow for round log ticks: linear ticks on the log axis
    span = hi - lo
    if span <= 0:
        span = abs(lo) or 1.0
        lo, hi = lo - span / 2, hi + span / 2
        span = hi - lo
    for count in (5, 4, 6, 3, 7, 8):
        raw = span / count
        e = math.floor(math.log10(raw))
        for m in (1, 2, 2.5, 5, 10):
            step = m * 10.0 ** e
            first = math.ceil(lo / step - 1e-9)
            vals = [round((first + k) * step, 12) for k in range(int(span / step) + 2)]
            vals = [v for v in vals if lo - 1e-12 <= v <= hi + 1e-12]
            if 3 <= len(vals) <= most:
                return vals, _tick_labels(vals, step)
    return [lo, hi], _tick_labels([lo, hi], span)


def _tick_label(v: float, step: float) -> str:
    """``v`` with the decimals that ``step`` needs (one more where they would round it)."""
    if v == 0:
        return "0"
    decimals = max(0, -math.floor(math.log10(abs(step)) + 1e-9))
    text = f"{v:.{decimals}f}"
    if abs(float(text) - v) > abs(step) * 1e-6:
        text = f"{v:.{decimals + 1}f}"
    return text


def _tick_labels(vals: Sequence[float], step: float) -> List[str]:
    """Labels with one number of decimals for the whole axis."""
    decimals = max((len(t.split(".")[1]) if "." in t else 0) for t in (_tick_label(v, step) for v in vals))
    return [f"{v:.{decimals}f}" if v != 0 else "0" for v in vals]


#: Family -> (colour, marker) on the Pareto plot; other families cycle through FAMILY_STYLE_MORE.
FAMILY_STYLE = {"dctnet": ("tab:blue", "o"), "official": ("tab:orange", "s")}
FAMILY_STYLE_MORE = (("tab:green", "^"), ("tab:brown", "D"), ("tab:pink", "v"))
ANCHOR_STYLE = ("tab:purple", "*")


def _family_styles(points) -> Dict[str, Tuple[str, str]]:
    styles, more = {}, list(FAMILY_STYLE_MORE)
    for p in points:
        fam = p.get("family", "dctnet")
        if fam not in styles:
            styles[fam] = FAMILY_STYLE.get(fam) or (more.pop(0) if more else ("tab:gray", "P"))
    return styles


def _axis_labels(pareto: dict) -> Tuple[str, str, str]:
    title = METRIC_TITLES.get(pareto["metric"], pareto["metric"])
    prec = pareto.get("ran_precision") or pareto.get("precision") or "?"
    path = ("default CPU path" if pareto.get("device") == "cpu" and pareto.get("precision") == "auto"
            else pareto.get("device", "?"))
    threads = f", {pareto['threads']} threads" if pareto.get("threads") else ""
    xlabel = (f"latency per image at {pareto['resolution']} px, ms, log scale ({path}: {prec}, "
              f"backend {pareto.get('backend', 'best')}{threads}, batch {pareto.get('batch', 1)}; "
              f"bars: min-max of the repeats)")
    better = "lower is better" if pareto.get("lower_is_better", True) else "higher is better"
    unit = "dB" if pareto["metric"] == "psnr" else "unitless"
    ylabel = f"{title} to {pareto.get('reference') or 'the reference'}, {unit} ({better}; bars: 95 % CI)"
    return title, xlabel, ylabel


def _extent(pareto: dict) -> Tuple[float, float, float, float]:
    pts = list(pareto["points"])
    a = pareto.get("anchor")
    xs = [v for p in pts for v in (p.get("lat_lo"), p.get("lat_hi"), p["latency_ms"])]
    ys = [v for p in pts for v in (p["lo"], p["hi"], p["value"])]
    if a:
        xs += [a["lat_lo"], a["lat_hi"]]
        ys += [v for v in (a["lo"], a["hi"]) if v is not None]
    xs = [x for x in xs if x is not None and x > 0] or [1.0, 10.0]
    ys = [y for y in ys if y is not None] or [0.0, 1.0]
    x0, x1 = min(xs) / 1.15, max(xs) * 1.15
    pad = (max(ys) - min(ys)) * 0.12 or max(abs(max(ys)) * 0.1, 1e-3)
    return x0, x1, min(ys) - pad, max(ys) + pad


def plot_pareto(pareto: dict, path: Union[str, os.PathLike]) -> str:
    """Write the Pareto plot as PNG; returns the backend used (``matplotlib``, or ``pillow`` as the
    plainer fallback when matplotlib, the ``eval`` extra, is not installed).

    Families are told apart by colour and marker (legend); x is the latency at the plot's
    resolution on a log axis with round ticks, y the metric; error bars: the quality's 95 %
    interval (y) and the min-max of the timed repeats (x); the front is a step line; the
    TensorFlow anchor is a dotted vertical line and, when its graph carries a checkpoint's
    weights, a star at that checkpoint's quality.
    """
    try:
        import matplotlib
    except ImportError:
        _plot_pillow(pareto, Path(path))
        return "pillow"
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    pts = pareto["points"]
    title, xlabel, ylabel = _axis_labels(pareto)
    styles = _family_styles(pts)
    x0, x1, y0, y1 = _extent(pareto)
    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    try:
        ax.set_xscale("log")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        labels = []  # (x, y, text, colour): placed last, clear of each other
        for fam, (color, marker) in styles.items():
            mine = [p for p in pts if p.get("family", "dctnet") == fam]
            ax.errorbar([p["latency_ms"] for p in mine], [p["value"] for p in mine],
                        xerr=[[p["latency_ms"] - p["lat_lo"] for p in mine], [p["lat_hi"] - p["latency_ms"] for p in mine]],
                        yerr=[[p["value"] - p["lo"] for p in mine], [p["hi"] - p["value"] for p in mine]],
                        fmt=marker, color=color, ms=8, capsize=3, elinewidth=1, zorder=3,
                        label=f"{fam} family")
            for p in mine:
                if p["on_front"]:
                    ax.plot(p["latency_ms"], p["value"], marker=marker, ms=12, mfc="none", mec="black",
                            mew=1.2, ls="", zorder=4)
                labels.append((p["latency_ms"], p["value"],
                               p["label"] + (" (reference)" if p["is_reference"] else ""), "black"))
        front = sorted((p for p in pts if p["on_front"]), key=lambda p: p["latency_ms"])
        if front:
            ax.step([p["latency_ms"] for p in front], [p["value"] for p in front], where="post",
                    color="black", lw=1, ls="--", alpha=0.6, zorder=2,
                    label="Pareto front (circled)")
        a = pareto.get("anchor")
        if a:
            color, marker = ANCHOR_STYLE
            ax.axvline(a["latency_ms"], color=color, ls=":", lw=1.5, zorder=1,
                       label=f"{a['label']}: {a['latency_ms']:.0f} ms")
            ax.axvspan(a["lat_lo"], a["lat_hi"], color=color, alpha=0.08, zorder=0)
            if a.get("value") is not None:
                ax.errorbar([a["latency_ms"]], [a["value"]], yerr=[[a["value"] - a["lo"]], [a["hi"] - a["value"]]],
                            fmt=marker, color=color, ms=13, capsize=3, zorder=3,
                            label=f"{a['label']}, quality of {a['quality_from']} (same weights)")
                labels.append((a["latency_ms"], a["value"], a["label"], color))
        xt, xl = nice_ticks(x0, x1, log=True)
        yt, yl = nice_ticks(y0, y1)
        ax.xaxis.set_major_locator(ticker.FixedLocator(xt))
        ax.xaxis.set_major_formatter(ticker.FixedFormatter(xl))
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.yaxis.set_major_locator(ticker.FixedLocator(yt))
        ax.yaxis.set_major_formatter(ticker.FixedFormatter(yl))
        ax.set_xlabel(xlabel, fontsize=8.5)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.set_title(f"{title} at strength {pareto['strength']:g}, {pareto['size']} px vs latency", fontsize=11)
        ax.grid(True, alpha=0.3)
        legend = ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        _place_labels(fig, ax, labels, avoid=[legend])
        buf = _png_bytes(fig)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf)
    return "matplotlib"


#: Where a point's label may go (offset in points, alignment), tried in order.
_LABEL_SPOTS = ((7, 5, "left"), (7, -13, "left"), (-7, 5, "right"), (-7, -13, "right"),
                (7, 15, "left"), (7, -23, "left"), (-7, 15, "right"), (-7, -23, "right"))


def _place_labels(fig, ax, labels, avoid=()) -> None:
    """Annotate each point at the first spot that stays inside the axes and clear of the labels
    placed before it and of ``avoid`` (artists: the legend); the first spot when none is."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    placed = [a.get_window_extent(renderer) for a in avoid if a is not None]
    for x, y, text, color in sorted(labels, key=lambda t: (t[0], t[1])):
        chosen = None
        for dx, dy, ha in _LABEL_SPOTS:
            t = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha,
                            fontsize=8, color=color)
            bb = t.get_window_extent(renderer).expanded(1.04, 1.15)
            inside = bb.x0 >= box.x0 and bb.x1 <= box.x1 and bb.y0 >= box.y0 and bb.y1 <= box.y1
            if inside and not any(bb.overlaps(o) for o in placed):
                chosen = (t, bb)
                break
            t.remove()
        if chosen is None:
            t = ax.annotate(text, (x, y), textcoords="offset points", xytext=(7, 5), fontsize=8, color=color)
            chosen = (t, t.get_window_extent(renderer))
        placed.append(chosen[1])


def _png_bytes(fig) -> bytes:
    b = io.BytesIO()
    fig.savefig(b, format="png")
    return b.getvalue()


def _plot_pillow(pareto: dict, path: Path) -> None:
    """The fallback without matplotlib: the same points, linear axes with :func:`nice_ticks`."""
    W, H, L, R, T, B = 900, 600, 90, 30, 40, 70
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    pts = pareto["points"]
    x0, x1, y0, y1 = _extent(pareto)
    px = lambda x: L + (x - x0) / (x1 - x0) * (W - L - R)  # noqa: E731
    py = lambda y: H - B - (y - y0) / (y1 - y0) * (H - T - B)  # noqa: E731
    d.rectangle([L, T, W - R, H - B], outline="black")
    for xv, label in zip(*nice_ticks(x0, x1)):
        d.line([px(xv), H - B, px(xv), H - B + 5], fill="black")
        d.text((px(xv) - 3 * len(label), H - B + 8), label, fill="black")
    for yv, label in zip(*nice_ticks(y0, y1)):
        d.line([L - 5, py(yv), L, py(yv)], fill="black")
        d.text((L - 8 - 6 * len(label), py(yv) - 6), label, fill="black")
    title, xlabel, ylabel = _axis_labels(pareto)
    d.text((L, 8), f"{title} (strength {pareto['strength']:g}, {pareto['size']} px) vs latency "
                   f"(matplotlib not installed: plain fallback)", fill="black")
    d.text((L, 22), f"y: {ylabel}", fill="black")
    d.text((L, H - 30), xlabel.replace(", log scale", ""), fill="black")
    front = sorted((p for p in pts if p["on_front"]), key=lambda p: p["latency_ms"])
    for a, b in zip(front, front[1:]):
        d.line([px(a["latency_ms"]), py(a["value"]), px(b["latency_ms"]), py(a["value"]),
                px(b["latency_ms"]), py(b["value"])], fill=(60, 60, 60), width=1)
    rgb = {"tab:blue": (31, 119, 180), "tab:orange": (255, 127, 14), "tab:green": (44, 160, 44),
           "tab:brown": (140, 86, 75), "tab:pink": (227, 119, 194), "tab:gray": (127, 127, 127),
           "tab:purple": (148, 103, 189)}
    a = pareto.get("anchor")
    if a:
        xa = px(a["latency_ms"])
        for yy in range(T, H - B, 8):
            d.line([xa, yy, xa, min(yy + 4, H - B)], fill=rgb["tab:purple"])
        d.text((min(xa + 4, W - R - d.textlength(a["label"]) - 2), T + 4), a["label"], fill=rgb["tab:purple"])
    styles = _family_styles(pts)
    for p in pts:
        c = rgb.get(styles[p.get("family", "dctnet")][0], (120, 120, 120))
        x, y = px(p["latency_ms"]), py(p["value"])
        d.line([x, py(p["lo"]), x, py(p["hi"])], fill=c)
        d.line([px(p.get("lat_lo", p["latency_ms"])), y, px(p.get("lat_hi", p["latency_ms"])), y], fill=c)
        d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=c, outline="black" if p["on_front"] else c)
        label = p["label"] + (" (reference)" if p["is_reference"] else "")
        lx = x + 8 if x + 8 + d.textlength(label) <= W - 5 else x - 8 - d.textlength(label)
        d.text((lx, y - 14), label, fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# Checkpoints and their own teachers
# ---------------------------------------------------------------------------------------------
def expand_checkpoints(specs: Sequence[str], base: Path) -> List[str]:
    """Recipe checkpoints -> names/paths: ``shipped`` (or an empty list) is every row of the
    weights table in table order, so new rows join without editing a recipe; paths are resolved
    against ``base``; duplicates are dropped."""
    from ..registry import WEIGHTS

    out: List[str] = []
    for spec in list(specs or []) or [SHIPPED]:
        items = [w.name for w in WEIGHTS] if spec == SHIPPED else [_resolve_spec(spec, base)]
        out += [i for i in items if i not in out]
    return out


def _weights_of(path) -> Optional[object]:
    """The weights table's row a checkpoint file is (by file sha256), or None."""
    from ..checkpoint import file_sha256
    from ..registry import weights_by_sha256

    try:
        return weights_by_sha256(file_sha256(path))
    except OSError:
        return None


def _file_of(spec) -> Optional[str]:
    try:
        return str(resolve(spec).resolve())
    except CheckpointError:
        return None


def own_teachers(checkpoints: Sequence[str], how, base: Path) -> Optional[Dict[str, Optional[str]]]:
    """Each checkpoint's own teacher (``{spec: teacher name/path or None}``) for the teacher column.

    ``how``: ``"registry"`` (the weights table's ``teacher`` of the row the file is, matched by
    file sha256 or name; a row with no teacher, or a file not in the table, gets ``None``), a
    mapping ``{checkpoint: teacher or None}`` (names or paths relative to ``base``; entries win,
    the table answers for the rest), or ``None``/``"off"`` (no teacher column: returns ``None``).
    """
    from ..registry import find_weights

    if how in (None, False, "off", "none"):
        return None
    if isinstance(how, str) and how != "registry":
        raise ValueError(f"quality.teachers must be 'registry', a mapping or null, got {how!r}")
    given: Dict[str, Optional[str]] = {}
    if isinstance(how, Mapping):
        for k, v in how.items():
            key = _file_of(_resolve_spec(k, base)) or str(_resolve_spec(k, base))
            given[key] = _resolve_spec(v, base) if v else None
    out: Dict[str, Optional[str]] = {}
    for spec in checkpoints:
        f = _file_of(spec)
        key = next((k for k in (f, str(_resolve_spec(spec, base)), spec) if k in given), None)
        if key is not None:
            out[spec] = given[key]
            continue
        w = _weights_of(f) if f is not None else None
        if w is None:
            w = find_weights(str(spec), warn=False)
        out[spec] = w.teacher if w is not None else None
    return out


# ---------------------------------------------------------------------------------------------
# The TensorFlow anchor
# ---------------------------------------------------------------------------------------------
class TFAnchorUnavailable(RuntimeError):
    """The TensorFlow anchor cannot run here (no TF python, no repository checkout, ...)."""


#: The repository's eval/ folder (the TF anchor drives eval/official_vs_tf.py's TFServer).
EVAL_DIR = Path(__file__).resolve().parents[2] / "eval"


def tensorflow_runner(*, tf_python: Optional[str], sizes: Sequence[int], threads: int, warmup: int,
                      weights: Optional[Path], workdir: Path, log=None):
    """The real TF side: ``eval/official_vs_tf.py``'s ``TFServer`` (``eval/official_tf_bench.py
    --serve`` under ``tf_python``), ModelScope's own c32 n4 generator frozen as its exporter does,
    with ``weights`` (npz) or seeded random weights. Returns an object with ``info``
    (``tensorflow``, ``model``), ``io`` (an npz: one 512 px input and TF's uint8 output on it),
    ``__call__(size) -> ms`` (one timed ``sess.run``) and ``close()``. Raises
    :class:`TFAnchorUnavailable` (one line) when it cannot start."""
    import argparse
    import importlib.util
    import subprocess

    if not tf_python:
        raise TFAnchorUnavailable("no TensorFlow python: set bench.tf_python or $TF_PYTHON to a "
                                  "TensorFlow venv's python, see eval/README.md")
    if not Path(tf_python).is_file():
        raise TFAnchorUnavailable(f"the TensorFlow python .../{Path(*Path(tf_python).parts[-2:])} does not exist")
    script = EVAL_DIR / "official_vs_tf.py"
    if not script.is_file() or not (EVAL_DIR / "official_tf_bench.py").is_file():
        raise TFAnchorUnavailable("eval/official_vs_tf.py is not here (the anchor runs from a repository checkout)")
    probe = subprocess.run([str(tf_python), "-c", "import tensorflow, tf_slim; print(tensorflow.__version__)"],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if probe.returncode != 0:
        tail = (probe.stderr or probe.stdout).strip().splitlines()[-1:] or ["?"]
        raise TFAnchorUnavailable(f"TensorFlow is not importable by {Path(tf_python).name}: {tail[0]}")
    spec = importlib.util.spec_from_file_location("_dctnet_official_vs_tf", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = argparse.Namespace(tf_python=str(tf_python), threads=int(threads), sizes=[int(s) for s in sizes],
                              warmup=int(warmup), graph=workdir / "official_c32_n4.pb", weights=weights)
    try:
        return mod.TFServer(args, workdir, log=log or (lambda line: None))
    except SystemExit as e:  # TFServer's one-line failures
        raise TFAnchorUnavailable(str(e)) from None


def _tf_weights_npz(spec: Optional[str], workdir: Path) -> Tuple[Optional[Path], Optional[str], Optional[str], str]:
    """(npz for the graph, checkpoint path, its name, why-not) for ``bench.tf_weights``."""
    if not spec:
        return None, None, None, "bench.tf_weights is null"
    path = _file_of(spec)
    if path is None:
        return None, None, None, f"{spec} not found"
    from ..checkpoint import load

    model = load(path, device="cpu")
    cfg = model.config
    if getattr(cfg, "channels", None) != 32 or getattr(cfg, "table", None) is not None or cfg.num_blocks != 4:
        return None, None, None, f"{spec} is not an official c32 n4 generator"
    import importlib.util

    spec_ = importlib.util.spec_from_file_location("_dctnet_official_vs_tf", EVAL_DIR / "official_vs_tf.py")
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    npz = mod.export_tf_weights(model, workdir / "weights.npz")
    return npz, path, model.checkpoint_info.name, ""


def _stats(ms: Sequence[float]) -> dict:
    from .bench import _percentile

    return {"median_ms": _percentile(ms, 0.5), "p25_ms": _percentile(ms, 0.25),
            "p75_ms": _percentile(ms, 0.75), "min_ms": min(ms), "max_ms": max(ms), "repeats": len(ms)}


def tf_anchor(b: Mapping, bench_result: Optional[dict], *, runner=None, progress: bool = False) -> dict:
    """The official graph under TensorFlow, timed in this run at the bench's resolutions and
    threads (``bench.tf_anchor: auto``): ``{"label", "tensorflow", "weights", "quality_from",
    "latency": {res: stats}, ...}``, or ``{"skipped": why}`` (``off``, no TensorFlow, a non-CPU
    bench, ...). The graph is ModelScope's own c32 n4 generator frozen as its exporter does, with
    ``bench.tf_weights``' weights (``official_c32n4.toon``: then the row's quality is that
    checkpoint's, and ``parity`` says how far TF's uint8 output is from ours at fp32 on one
    512 px input) or seeded random ones (quality "-"). ``runner``: a factory with
    :func:`tensorflow_runner`'s signature (tests inject a fake one)."""
    import tempfile

    mode = str(b.get("tf_anchor") or "off")
    if mode not in ("auto", "off"):
        raise ValueError(f"bench.tf_anchor must be 'auto' or 'off', got {mode!r}")
    if mode == "off":
        return {"skipped": "bench.tf_anchor is off"}
    if not bench_result:
        return {"skipped": "nothing was benchmarked"}
    settings = bench_result["settings"]
    if not str(settings["device"]).startswith("cpu"):
        return {"skipped": f"the bench ran on {settings['device']}; the anchor is TensorFlow on the CPU"}
    threads = int(settings.get("threads") or bench_result["machine"].get("torch_threads") or 1)
    sizes = [int(r) for r in settings["resolutions"]]
    warmup, repeats = int(settings["warmup"]), int(settings["repeats"])
    tf_python = b.get("tf_python") or os.environ.get("TF_PYTHON")
    log = (lambda line: print("[tf anchor] " + line, file=sys.stderr, flush=True)) if progress else None
    factory = runner or tensorflow_runner
    with tempfile.TemporaryDirectory(prefix="dctnet-tf-anchor-") as tmp:
        tmp = Path(tmp)
        npz, wpath, wname, why = _tf_weights_npz(b.get("tf_weights"), tmp)
        try:
            server = factory(tf_python=tf_python, sizes=sizes, threads=threads, warmup=warmup,
                             weights=npz, workdir=tmp, log=log)
        except TFAnchorUnavailable as e:
            return {"skipped": str(e)}
        try:
            latency = {}
            for size in sizes:
                latency[str(size)] = _stats([float(server(size)) for _ in range(repeats)])
                if log:
                    log(f"{size} px: median {latency[str(size)]['median_ms']:.1f} ms")
            info = dict(getattr(server, "info", None) or {})
            parity = None
            io_path = getattr(server, "io", None)
            if wpath and io_path and Path(io_path).is_file():
                parity = _parity(wpath, Path(io_path))
        finally:
            server.close()
    version = str(info.get("tensorflow") or "?")
    short = ".".join(version.split(".")[:2])
    return {"label": f"official graph, TensorFlow {short}", "tensorflow": version,
            "model": info.get("model"), "weights": wname or f"random ({why})",
            "quality_from": wname, "quality_path": wpath, "latency": latency, "threads": threads,
            "warmup": warmup, "repeats": repeats, "parity": parity, "precision": "fp32",
            "method": "eval/official_tf_bench.py --serve: one tf.Session (intra = inter = the "
                      "bench's threads), BGR float32 feed -> uint8 fetch, warm-up calls per size, then "
                      "the bench's repeats per size; timed after the bench rows in the same run"}


def _parity(checkpoint: str, io_path: Path) -> dict:
    """Ours (fp32, the exact path) against TF's uint8 output on TF's saved input."""
    import numpy as np

    from ..checkpoint import load
    from ..official import official_uint8

    with np.load(io_path) as io_:
        x, y = io_["input"], io_["output"]
    ours = official_uint8(load(checkpoint, device="cpu"), x, precision="fp32")
    d = np.abs(ours.astype(np.int16) - y.astype(np.int16))
    return {"size": list(x.shape[:2]), "max_levels": int(d.max()), "mean_levels": float(d.mean()),
            "share_off": float((d > 0).mean())}


# ---------------------------------------------------------------------------------------------
# One table across families, and the default rule
# ---------------------------------------------------------------------------------------------
def summary_rows(quality: Optional[dict], bench_result: Optional[dict]) -> List[dict]:
    """One row per evaluated checkpoint: family, own teacher, shipped (a row of the weights
    table), GMACs at 1024 px, the main metric to the common reference and the teacher metrics
    to its own teacher per strength (at the first size), and the latency per requested
    precision and resolution (batch 1, fastest backend): ``{precision: {res: stats}}``."""
    from ..checkpoint import read_info
    from ..profile import count_macs

    if not quality:
        return []
    size = quality["sizes"][0]
    rows: List[dict] = []
    brows = [r for r in (bench_result or {}).get("rows", []) if "error" not in r and r["batch"] == 1
             and r.get("checkpoint")]
    for q in _unique_by(quality["results"], "path"):
        info = read_info(q["path"])
        mine = [r for r in quality["results"] if r["path"] == q["path"] and r["size"] == size]
        latency: Dict[str, dict] = {}
        qp = Path(q["path"]).resolve()
        for r in brows:
            if Path(r["checkpoint"]).resolve() != qp:
                continue
            req = r.get("requested_precision") or r["precision"]
            cell = latency.setdefault(req, {})
            key = str(r["resolution"])
            if key not in cell or r["median_ms"] < cell[key]["median_ms"]:
                cell[key] = {k: r.get(k, r["median_ms"]) for k in ("median_ms", "p25_ms", "p75_ms", "min_ms", "max_ms")}
                cell[key].update(precision=r["precision"], backend=r["backend"])
        rows.append({
            "name": q["checkpoint"], "path": q["path"], "family": q.get("family") or info.family,
            "arch": q["arch"], "teacher": q.get("teacher"), "shipped": _weights_of(q["path"]) is not None,
            "teacher_missing": q.get("teacher_missing"),
            "gmacs_1024": count_macs(info.arch, 1024, 1024, 1) / 1e9,
            "to_reference": {f"{r['strength']:g}": {m: _plain(v) for m, v in r["metrics"].items()} for r in mine},
            "to_teacher": {f"{r['strength']:g}": {m: _plain(v) for m, v in (r.get("teacher_metrics") or {}).items()}
                           for r in mine if r.get("teacher_metrics") is not None},
            "latency": latency})
    return rows


def _plain(summary: Mapping) -> dict:
    return {k: summary[k] for k in ("mean", "lo", "hi", "n") if k in summary}


def pick_default(rows: Sequence[Mapping], tolerance: float = 0.01, *, resolution: Union[int, str, None] = None,
                 among: str = "shipped", lower_is_better: bool = True) -> dict:
    """The default rule: among the shipped rows, the fastest whose quality is within
    ``tolerance`` of the best shipped *teacher*'s (teachers are the rows with no teacher).

    Each row: ``name``, ``teacher`` (``None`` for a teacher), ``shipped`` (default True),
    ``quality`` (lower is better: LPIPS (alex) to the renderer at s=1 in the report) and
    ``latency_ms`` (a number, or ``{resolution: ms}`` with ``resolution`` picking one). Rows
    without a quality or a latency take no part. Ties: equal latency -> the better quality,
    then the name. ``among="all"`` drops the shipped condition; ``lower_is_better=False`` for
    a metric such as PSNR (within ``tolerance`` below the best). Returns ``{"name"}`` (``None``
    when nothing qualifies) with ``why``, ``best_teacher``, ``teacher_quality``, ``bound``,
    ``latency_ms``, ``quality`` and ``candidates`` (qualifying names, fastest first).
    """
    if among not in ("shipped", "all"):
        raise ValueError(f"among must be 'shipped' or 'all', got {among!r}")
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")

    def latency(r):
        v = r.get("latency_ms")
        if isinstance(v, Mapping):
            v = v.get(str(resolution), v.get(resolution)) if resolution is not None else None
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    sign = 1.0 if lower_is_better else -1.0

    def quality(r):  # lower is better from here on
        v = r.get("quality")
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else sign * float(v)

    pool = [r for r in rows if among == "all" or r.get("shipped", True)]
    what = "shipped " if among == "shipped" else ""
    out = {"name": None, "tolerance": float(tolerance), "resolution": resolution, "among": among,
           "best_teacher": None, "teacher_quality": None, "bound": None, "candidates": []}
    teachers = [r for r in pool if not r.get("teacher") and quality(r) is not None]
    if not teachers:
        return {**out, "why": f"no {what}teacher (a row with no teacher) has a quality figure"}
    best = min(teachers, key=lambda r: (quality(r), str(r["name"])))
    bound = quality(best) + tolerance
    out.update(best_teacher=best["name"], teacher_quality=sign * quality(best), bound=sign * bound)
    cands = [r for r in pool if quality(r) is not None and quality(r) <= bound + 1e-12 and latency(r) is not None]
    cands.sort(key=lambda r: (latency(r), quality(r), str(r["name"])))
    out["candidates"] = [r["name"] for r in cands]
    if not cands:
        return {**out, "why": f"no {what}row within {tolerance:g} of {best['name']} has a latency"
                              + (f" at {resolution} px" if resolution is not None else "")}
    pick = cands[0]
    return {**out, "name": pick["name"], "latency_ms": latency(pick), "quality": sign * quality(pick),
            "why": f"the fastest {what}row within {tolerance:g} of the best {what}teacher "
                   f"{best['name']} ({sign * quality(best):.4f}, bound {sign * bound:.4f})"}


def rule_rows(summary: Sequence[Mapping], rule: Mapping, pareto: Mapping, bench_result: Optional[dict]) -> Tuple[List[dict], dict]:
    """:func:`pick_default` rows from the summary, and the settings used."""
    strength = f"{float(rule.get('strength', 1.0)):g}"
    metric = rule.get("metric") or "lpips_alex"
    settings = (bench_result or {}).get("settings", {})
    res = int(rule.get("resolution") or max(settings.get("resolutions") or [0]) or 0) or None
    precision = rule.get("precision") or (pareto or {}).get("precision") or \
        (settings.get("precisions") or ["auto"])[0]
    rows = []
    for r in summary:
        q = r["to_reference"].get(strength, {}).get(metric)
        lat = r["latency"].get(precision, {}).get(str(res)) if res else None
        rows.append({"name": r["name"], "teacher": r["teacher"], "shipped": r["shipped"],
                     "quality": q["mean"] if q else None,
                     "latency_ms": {str(res): lat["median_ms"]} if lat else {}})
    return rows, {"metric": metric, "strength": float(strength), "resolution": res, "precision": precision}


def _lat_cell(stats: Optional[Mapping]) -> str:
    return f"{stats['median_ms']:.0f}" if stats else "–"


def summary_markdown(report: dict) -> List[str]:
    """The one table across families, the anchor row and the default rule's line."""
    rows = report.get("summary") or []
    q = report.get("quality") or {}
    if not rows:
        return []
    wanted = ((report.get("recipe") or {}).get("rule") or {}).get("metric")
    metric = wanted if wanted in q["metrics"] else q["metrics"][0]
    title = METRIC_TITLES.get(metric, metric)
    tmetric = (q.get("teacher_metrics") or [None])[0]
    ttitle = METRIC_TITLES.get(tmetric, tmetric) if tmetric else None
    strengths = [f"{s:g}" for s in q["strengths"]]
    b = report.get("bench") or {}
    settings = b.get("settings", {})
    resolutions = [str(r) for r in settings.get("resolutions", [])]
    requested = list(dict.fromkeys(settings.get("precisions", [])))
    ran = {}
    for r in rows:
        for req, cells in r["latency"].items():
            for c in cells.values():
                ran.setdefault(req, set()).add(c["precision"])
    groups = [req for req in requested if req in ran]
    dev = settings.get("device", "?")

    def group_title(req):
        what = "/".join(sorted(ran[req]))
        if req == "auto":
            return f"default {'CPU ' if str(dev).startswith('cpu') else ''}path ({what})"
        return what
    header = ["checkpoint", "family", "own teacher", "GMACs @1024"]
    header += [f"{title} to {q['reference']}, s={s}" for s in strengths]
    if ttitle:
        header += [f"{ttitle} to own teacher, s={s}" for s in strengths]
    header += [f"{group_title(g)} ms @{res}" for g in groups for res in resolutions]
    body = []
    for r in rows:
        cells = [f"`{r['name']}`" + ("" if r["shipped"] else " (not shipped)"), r["family"],
                 (f"`{r['teacher']}`" if r["teacher"] else "–") + (" (missing)" if r.get("teacher_missing") else "")]
        cells.append(f"{r['gmacs_1024']:.1f}")
        cells += [_cell(r["to_reference"].get(s, {}).get(metric), metric) for s in strengths]
        if ttitle:
            cells += [_cell(r["to_teacher"].get(s, {}).get(tmetric), tmetric) if r["teacher"] else "–"
                      for s in strengths]
        cells += [_lat_cell(r["latency"].get(g, {}).get(res)) for g in groups for res in resolutions]
        body.append(cells)
    anchor = report.get("tf_anchor") or {}
    if anchor.get("latency"):
        src = next((r for r in rows if anchor.get("quality_path") and
                    Path(r["path"]).name == Path(anchor["quality_path"]).name), None)
        cells = [f"**{anchor['label']}** (anchor; weights: {anchor['weights']})", "official (TensorFlow)", "–",
                 f"{src['gmacs_1024']:.1f}" if src else "–"]
        cells += [(_cell(src["to_reference"].get(s, {}).get(metric), metric) + f" (= `{src['name']}`)") if src else "–"
                  for s in strengths]
        if ttitle:
            cells += ["–" for _ in strengths]
        first = groups[0] if groups else None
        cells += [_lat_cell(anchor["latency"].get(res)) + " (TF, fp32)" if g == first else "–"
                  for g in groups for res in resolutions]
        body.append(cells)
    lines = ["## Both families", "",
             f"Every row against one common reference, `{q['reference']}` (the classical toon renderer "
             f"blended with the strength), at {q['sizes'][0]} px on {q['n_images']} photos"
             + (f" (split `{q['split']}`)" if q.get("split") else "")
             + f", quality at {q.get('precision', '?')}; the own-teacher columns score each student against "
               f"its registry teacher's output (teachers: –). Cells: mean [95 % interval]. Latency: "
               f"median ms of {settings.get('repeats')} calls, batch 1, {settings.get('threads') or 'default'} "
               f"threads, backend {', '.join(settings.get('backends', []))}, on {dev}"
               + ("; the rows interleaved (each round calls every checkpoint once)" if settings.get("interleave")
                  else "; the rows timed one after another") + ".", ""]
    lines += _md_table(header, body)
    lines.append("")
    if anchor.get("skipped"):
        lines += [f"TensorFlow anchor: skipped ({anchor['skipped']}).", ""]
    elif anchor.get("latency"):
        par = anchor.get("parity")
        qual = (f"its quality is `{anchor['quality_from']}`'s: the graph carries those weights"
                + (f" (TF's uint8 output vs ours at fp32 on a {par['size'][0]} px input: max {par['max_levels']}, "
                   f"mean {par['mean_levels']:.2g} levels)" if par else "")
                if anchor.get("quality_from") else f"quality –: the graph has {anchor['weights']} weights")
        lines += [f"TensorFlow anchor: ModelScope's own c32 n4 generator frozen as its exporter does, "
                  f"under TensorFlow {anchor['tensorflow']} (fp32, {anchor['threads']} intra/inter-op threads), "
                  f"timed in this run after the rows above, {anchor['repeats']} calls per size; {qual}.", ""]
    rule = report.get("default_rule")
    if rule:
        s = rule.get("settings", {})
        lines.append(f"**Default by the rule: {rule['name'] or 'none'}** — {rule['why']}; quality: "
                     f"{METRIC_TITLES.get(s.get('metric'), s.get('metric'))} to {q['reference']} at s={s.get('strength', 1):g}, "
                     f"latency: {s.get('precision')} at {s.get('resolution')} px"
                     + (f"; qualifying, fastest first: {', '.join(rule['candidates'])}" if rule.get("candidates") else "")
                     + ".")
        lines.append("")
    return lines


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------
def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def _cell(m: Optional[dict], metric: str) -> str:
    if not m:
        return "–"
    d = 2 if metric == "psnr" else 4
    return f"{m['mean']:.{d}f} [{m['lo']:.{d}f}, {m['hi']:.{d}f}]"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def machine_line(machine: Mapping) -> str:
    gpu = machine.get("gpu")
    parts = [f"CPU **{machine.get('cpu')}** ({machine.get('cpu_cores_usable')} usable of "
             f"{machine.get('cpu_cores_logical')} logical cores, {machine.get('torch_threads')} torch threads)"]
    if gpu:
        parts.append(f"GPU **{gpu}** (CUDA {machine.get('cuda')})")
    parts.append(f"torch {machine.get('torch')}, Python {machine.get('python')}, {machine.get('platform')}")
    return "; ".join(parts)


def quality_markdown(quality: dict) -> List[str]:
    metrics = quality["metrics"]
    iv = quality["interval"]
    how = (f"percentile bootstrap, {iv.get('n_boot')} resamples, seed {iv.get('seed')}"
           if iv["method"] == "bootstrap" else "Student t")
    lines = [f"Photos: {quality['n_images']} from `{quality['images']}`"
             + (f" (split `{quality['split']}`)" if quality.get("split") else "")
             + (f", first {quality['limit']}" if quality.get("limit") else "")
             + f"; device {quality['device']}. Cells: mean [95 % interval of the mean, {how}]. "
             f"PSNR is capped at {quality['psnr_cap_db']:g} dB. LPIPS: lower is better; PSNR/SSIM: higher.", ""]
    tmetrics = quality.get("teacher_metrics") or []
    header = ["checkpoint", "architecture", "reference", "size", "strength", "n"] + \
        [METRIC_TITLES.get(m, m) for m in metrics] + \
        (["own teacher"] + [f"{METRIC_TITLES.get(m, m)} to own teacher" for m in tmetrics] if tmetrics else [])
    rows = []
    for r in quality["results"]:
        cells = [r["checkpoint"], r["arch"], r["reference"], r["size"], f"{r['strength']:g}", r["n"]] + \
            [_cell(r["metrics"].get(m), m) for m in metrics]
        if tmetrics:
            cells += [r.get("teacher") or "–"] + [_cell((r.get("teacher_metrics") or {}).get(m), m) for m in tmetrics]
        rows.append(cells)
    lines += _md_table(header, rows)
    if quality.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"`{s['checkpoint']}` ({s['why']})" for s in quality["skipped"])]
    if quality.get("missing_targets"):
        lines += ["", f"{len(quality['missing_targets'])} photo(s) had no target image and were left out."]
    return lines


def bench_markdown(result: dict) -> List[str]:
    lines = [f"Machine: {machine_line(result['machine'])}.", ""]
    s = result.get("settings", {})
    if s:
        lines += [f"Input: {s.get('input', 'square inputs')}; {s.get('warmup')} warm-up + "
                  f"{s.get('repeats')} timed calls per row"
                  + (", interleaved: the rows of each configuration warmed up one after another, then "
                     "timed round-robin, one call of each per round" if s.get("interleave") else "")
                  + "; latency is per batch.", ""]
    header = ["target", "architecture", "device", "precision", "backend", "px", "batch", "median ms",
              "p90 ms", "img/s", "peak MB", "GMACs", "TFLOP/s"]
    rows = []
    for r in result["rows"]:
        if "error" in r:
            rows.append([r["target"], r.get("arch", ""), r.get("device", ""), r["precision"], r["backend"],
                         r["resolution"], r["batch"], f"error: {r['error']}", "", "", "", "", ""])
            continue
        rows.append([r["target"], r["arch"], r["device"], r["precision"], r["backend"], r["resolution"],
                     r["batch"], f"{r['median_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['throughput_img_s']:.2f}",
                     f"{r['peak_mem_mb']:.0f}", f"{r['gmacs']:.1f}", f"{r['tflops']:.3f}"])
    lines += _md_table(header, rows)
    colds = result.get("cold_start") or []
    if colds:
        lines += ["", "Cold start (fresh `python -c` process: import, load, one image file read, "
                      "cartoonized and written; seconds):", ""]
        crow = []
        for c in colds:
            if "error" in c:
                crow.append([c["target"], c["resolution"], f"error: {c['error']}", "", "", "", "", ""])
            else:
                crow.append([c["target"], c["resolution"], f"{c['python_start_s']:.2f}", f"{c['import_s']:.2f}",
                             f"{c['load_s']:.2f}", f"{c['first_image_s']:.2f}", f"{c['total_s']:.2f}",
                             f"{c['load_seconds_in_process']:.3f}"])
        lines += _md_table(["target", "px", "python start", "import", "model load", "first image",
                            "total", "load (warm process)"], crow)
    return lines


def anchor_markdown(anchor: Mapping) -> List[str]:
    lines = [f"> **{anchor['label']}.** Figures quoted from the {anchor['source']}. They were not "
             f"measured here, on other hardware and with another implementation: use them only as a "
             f"reference point at the same resolution and batch.", ">"]
    for f in anchor["figures"]:
        res = f"{f['resolution']} px" if f.get("resolution") else "resolution not stated"
        val = f"{f['seconds']} s" if "seconds" in f else f"{f['img_per_s']} img/s"
        lines.append(f"> - {f['what']}, {res}, batch {f['batch']}: {val}")
    return lines


def report_markdown(report: dict) -> str:
    lines = [f"# Quality vs latency: {report['name']}", "",
             f"Generated {report['created']} by dctnet_lite {report.get('dctnet_lite', '')} from "
             f"{_recipe_words(report)}.", ""]
    if report.get("bench"):
        lines += [f"Measured on: {machine_line(report['bench']['machine'])}.", ""]
    lines += summary_markdown(report)
    if report.get("quality"):
        q = report["quality"]
        ref_words = (f" (a checkpoint that is the reference is scored against `{q['self_reference']}`)"
                     if q.get("reference_kind") == "checkpoint" else "")
        lines += ["## Quality", "", f"Reference: `{q['reference']}`{ref_words}; precision "
                  f"{q.get('precision', '?')}.", ""]
        lines += quality_markdown(q) + [""]
    if report.get("pareto"):
        p = report["pareto"]
        lines += ["## Pareto front", "", "![Pareto plot](pareto.png)", "",
                  f"{METRIC_TITLES.get(p['metric'], p['metric'])} at strength {p['strength']:g}, "
                  f"{p['size']} px vs median latency at {p['resolution']} px, batch {p['batch']}, "
                  f"{p['precision']}" + (f" (ran {p['ran_precision']})" if p.get("ran_precision") not in (None, p["precision"]) else "")
                  + f", backend {p['backend']} on {p['device']}; drawn with {p.get('plot', '?')}. On the front (fastest "
                  f"first): " + (", ".join(f"**{x['label']}**" for x in sorted(p["points"], key=lambda x: x["latency_ms"])
                                           if x["on_front"]) or "none") + ".", ""]
    if report.get("bench"):
        lines += ["## Latency", ""] + bench_markdown(report["bench"]) + [""]
    for extra in report.get("extra_bench") or []:
        lines += [f"## Latency (imported from `{extra['path']}`)", ""] + bench_markdown(extra["bench"]) + [""]
    lines += ["## Anchor (quoted, not measured)", ""] + anchor_markdown(_anchor(report)) + [""]
    return "\n".join(lines)


def _anchor(report: dict) -> dict:
    return (report.get("bench") or {}).get("anchor") or ANCHOR


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
def _load_bench_json(path: Path) -> dict:
    data = json.loads(Path(path).read_text())
    if "rows" not in data and isinstance(data.get("bench"), Mapping):
        data = data["bench"]  # a report.json
    if "rows" not in data or "machine" not in data:
        raise ValueError(f"{path} is not a dctnet-lite bench JSON (no 'rows'/'machine')")
    return data


def _recipe_words(report: Mapping) -> str:
    files = report.get("config_files") or ([report["recipe_path"]] if report.get("recipe_path") else [])
    if not files:
        return "a recipe given as a dict"
    return "`" + " ".join(f"--config {f}" for f in files) + "`"


def make_report(recipe: Union[Mapping, str, os.PathLike, Sequence], out_dir: Union[str, os.PathLike, None] = None,
                *, name: Optional[str] = None, checkpoints: Optional[Sequence[str]] = None,
                images: Optional[str] = None, limit: Optional[int] = None,
                progress: bool = False, tf_runner=None) -> Path:
    """Run a recipe's evaluation and benchmark; write the report folder and return its path.

    ``recipe``: a mapping, a YAML path, or a list of them (later ones overlay earlier ones), read
    by the same parser as ``dctnet-lite eval --config FILE``. The folder is ``out_dir`` when given,
    else the recipe's ``out``, else ``<first recipe file's folder>/reports/<name>`` (for a dict
    recipe: ``eval/reports/<name>`` under the current directory). It holds ``report.json`` (the
    recipe as run, the full evaluate and bench results, the Pareto points, imported benches),
    ``report.md`` and ``pareto.png`` (when there are both quality and latency figures).
    ``name``, ``checkpoints``, ``images`` and ``limit`` override the recipe; ``tf_runner``
    replaces :func:`tensorflow_runner` for the TensorFlow anchor (tests).
    """
    cfg, files = parse_recipe(as_argv(recipe))
    if name:
        cfg["name"] = name
    if checkpoints:
        cfg["checkpoints"] = list(checkpoints)
    if images and cfg["quality"]:
        cfg["quality"]["images"] = str(images)
    if limit is not None and cfg["quality"]:
        cfg["quality"]["limit"] = limit
    return run_report(cfg, files, out_dir, progress=progress, tf_runner=tf_runner)


def run_report(cfg: dict, files: Sequence[str] = (), out_dir: Union[str, os.PathLike, None] = None,
               progress: bool = False, tf_runner=None) -> Path:
    """Run a parsed recipe (:func:`parse_recipe`) and write the report folder.

    Nothing machine-specific is written: every path in ``report.json`` and ``report.md`` is
    relative to the recipe's ``base_dir`` (the repository root for the shipped recipes) or, for a
    file outside it, its last two components (:func:`dctnet_lite.tools.recipes.portable_path`).
    """
    cfg = dict(cfg)
    base = Path(cfg.pop("base_dir_resolved", None) or Path.cwd())
    out_opt = cfg.pop("out", None)
    if out_dir is None:
        out_dir = out_opt or ((Path(files[0]).parent / "reports" / cfg["name"]) if files
                              else Path("eval") / "reports" / cfg["name"])
    out_dir = Path(out_dir)
    ckpts = expand_checkpoints(cfg["checkpoints"], base)

    report = {"name": cfg["name"], "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "dctnet_lite": __version__, "recipe_path": files[0] if files else None,
              "config_files": list(files), "recipe": cfg,
              "checkpoints": list(ckpts), "quality": None, "bench": None, "tf_anchor": None,
              "pareto": None, "summary": [], "default_rule": None, "extra_bench": []}
    q = cfg["quality"]
    if q:
        if not ckpts:
            raise ValueError("the recipe names no checkpoints to evaluate")
        if not q.get("images"):
            raise ValueError("the recipe's quality section needs 'images' (a folder of photos: "
                             "quality.images, --images DIR)")
        report["quality"] = evaluate(
            ckpts, _resolve_spec(q["reference"], base), _resolve_path(q["images"], base),
            strengths=q["strengths"], sizes=q["sizes"], metrics=q["metrics"], device=q["device"],
            limit=q["limit"], split=q["split"], self_reference=_resolve_spec(q["self_reference"], base),
            interval_method=q["interval"], progress=progress, precision=q["precision"],
            teachers=own_teachers(ckpts, q.get("teachers"), base), teacher_metrics=q["teacher_metrics"])
        report["quality"]["images"] = q["images"]  # as the recipe spells it (relative to base_dir)
    b = cfg["bench"]
    if b:
        if b.get("targets"):
            targets = [_resolve_spec(t, base) for t in b["targets"]]
        elif report["quality"]:
            targets = [r["path"] for r in _unique_by(report["quality"]["results"], "path")]
        else:
            targets = _existing(ckpts)
        targets += [int(w) for w in b.get("widths") or []]
        if targets:
            report["bench"] = bench(targets, resolutions=b["resolutions"], batches=b["batches"],
                                    precisions=_distinct_precisions(b["precisions"], b["device"]),
                                    backends=b["backends"], device=b["device"],
                                    threads=b["threads"], warmup=b["warmup"], repeats=b["repeats"],
                                    cold_start=b["cold_start"], cold_start_size=b["cold_start_size"],
                                    interleave=bool(b.get("interleave")), progress=progress)
        else:
            warnings.warn("nothing to benchmark: no checkpoint exists and no widths are given", stacklevel=2)
        report["tf_anchor"] = tf_anchor({**b, "tf_weights": _resolve_spec(b.get("tf_weights"), base),
                                         "tf_python": _resolve_path(b.get("tf_python"), base)},
                                        report["bench"], runner=tf_runner, progress=progress)
    for extra in cfg["extra_bench"]:
        p = Path(_resolve_path(extra, base))
        report["extra_bench"].append({"path": str(p), "bench": _load_bench_json(p)})
    if report["quality"] and report["bench"] and cfg["pareto"]:
        pareto = pareto_points(report["quality"], report["bench"], cfg["pareto"],
                               anchor=report["tf_anchor"])
        if pareto["points"]:
            report["pareto"] = pareto
        else:
            warnings.warn(f"no Pareto plot: no checkpoint has both {pareto['metric']} at strength "
                          f"{pareto['strength']:g}, {pareto['size']} px (quality.sizes "
                          f"{report['quality']['sizes']}) and a latency at {pareto['resolution']} px, "
                          f"{pareto['precision']}", stacklevel=2)
    if report["quality"]:
        report["summary"] = summary_rows(report["quality"], report["bench"])
    if report["summary"] and report["bench"] and cfg["rule"]:
        rows, used = rule_rows(report["summary"], cfg["rule"], cfg["pareto"] or {}, report["bench"])
        report["default_rule"] = {**pick_default(rows, cfg["rule"]["tolerance"], resolution=used["resolution"],
                                                 among=cfg["rule"]["among"],
                                                 lower_is_better=LOWER_IS_BETTER.get(used["metric"], True)), "settings": used}
    out_dir.mkdir(parents=True, exist_ok=True)
    if report["pareto"]:
        report["pareto"]["plot"] = plot_pareto(report["pareto"], out_dir / "pareto.png")
    report = portable_tree(_json_safe(report), root=base)
    atomic_write_bytes(out_dir / "report.json",
                       (json.dumps(report, indent=2, default=str, allow_nan=False) + "\n").encode())
    atomic_write_bytes(out_dir / "report.md", report_markdown(report).encode())
    return out_dir


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    """``dctnet-lite eval``: exit 0 on success, 1 when the run fails, 2 on a usage error."""
    argv = sys.argv[1:] if argv is None else list(argv)
    named = any(str(a).split("=")[0] in ("--config", "--recipe") for a in argv)
    if not named and Path(DEFAULT_CONFIG).is_file():
        argv = ["--config", DEFAULT_CONFIG] + argv
    rc, out = run_verb("eval", argv, parse_recipe, lambda parsed: run_report(*parsed, progress=True))
    if out is None:
        return rc
    print(f"wrote {out / 'report.md'}, {out / 'report.json'}"
          + (f", {out / 'pareto.png'}" if (out / "pareto.png").exists() else ""))
    return 0


def _distinct_precisions(precisions: Sequence[str], device: str) -> List[str]:
    """Requested precisions, dropping one that resolves to a precision already listed (``auto``
    on a CPU without native bf16 is fp32: fp32 is not timed twice)."""
    from ..fastpath import resolve_precision

    from ..inference import resolve_device

    dev = resolve_device(device)
    seen, out = set(), []
    for p in precisions:
        ran = resolve_precision(p, dev)
        if ran not in seen:
            seen.add(ran)
            out.append(p)
    return out


def _json_safe(obj):
    """NaN and infinities (not valid JSON) become ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _unique_by(rows, key):
    seen, out = set(), []
    for r in rows:
        if r[key] not in seen:
            seen.add(r[key])
            out.append(r)
    return out


def _existing(specs):
    out = []
    for s in specs:
        try:
            out.append(str(resolve(s)))
        except CheckpointError as e:
            warnings.warn(f"skipping checkpoint {s!r}: {e}", stacklevel=3)
    return out
