"""What the recipe-driven verbs share: jsonargparse parsing, overlays, portable paths.

``dctnet-lite prune`` and ``dctnet-lite eval`` are driven by jsonargparse as LightningCLI drives
``dctnet-lite train``: ``--config FILE`` is repeatable (later files overlay earlier ones), every
key can be set on the command line after them (``--width 48``, ``--quality.images DIR``), and
``--print_config`` prints the merged recipe. ``--recipe FILE`` is a deprecated alias of
``--config FILE``. The Python entry points (:func:`dctnet_lite.tools.prune.prune_main`,
:func:`dctnet_lite.tools.report.make_report`) pass dicts and paths through the same parsers.

Reports and provenance never hold a machine's absolute path: :func:`portable_path` keeps
relative paths as given and turns absolute ones into paths relative to a root (the repository
root for the shipped recipes) or, outside it, into their last two components.

jsonargparse and pyyaml are imported lazily (both come with ``pip install 'dctnet-lite[train]'``).
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..checkpoint import CheckpointError
from ..fileutil import portable_path as _portable_path

PathLike = Union[str, os.PathLike]


# ---------------------------------------------------------------------------------------------
# Portable paths
# ---------------------------------------------------------------------------------------------
def portable_path(path: Optional[PathLike], root: Optional[PathLike] = None) -> Optional[str]:
    """A path fit to store in a report or a checkpoint's provenance (``None`` stays ``None``).

    The package's one rule (:func:`dctnet_lite.fileutil.portable_path`, which train's provenance
    uses too): a relative path is kept as given; an absolute one becomes relative to ``root``
    (default: the current directory) when it lies inside it, else its last two components. So
    ``../shared/data/portraits/train`` stays, ``<repo>/checkpoints/a.safetensors`` becomes
    ``checkpoints/a.safetensors`` from ``<repo>``, never one machine's absolute path.
    """
    if path is None:
        return None
    s = os.path.expanduser(os.fspath(path))
    if root is None or not os.path.isabs(s):
        return _portable_path(s)
    base = os.path.realpath(os.fspath(root))
    real = os.path.realpath(s)
    if real == base:
        return "."
    if real.startswith(base.rstrip(os.sep) + os.sep):
        return Path(os.path.relpath(real, base)).as_posix()
    parts = Path(s).parts
    return Path(*parts[-2:]).as_posix() if len(parts) > 2 else Path(s).name


def portable_tree(obj: Any, root: Optional[PathLike] = None) -> Any:
    """``obj`` (JSON-like) with every string that is an absolute path made portable
    (:func:`portable_path`) and ``root``'s prefix removed from paths inside longer strings."""
    base = os.path.realpath(os.fspath(root) if root is not None else os.getcwd()).rstrip(os.sep) + os.sep
    home = os.path.expanduser("~").rstrip(os.sep) + os.sep

    def walk(v):
        if isinstance(v, str):
            if os.path.isabs(v) and "\n" not in v and " " not in v.strip():
                return portable_path(v, root)
            if os.sep in v:
                v = v.replace(base, "")
                if home != os.sep:
                    v = v.replace(home, "~" + os.sep)
            return v
        if isinstance(v, Mapping):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        return v

    return walk(obj)


# ---------------------------------------------------------------------------------------------
# Command lines and config files
# ---------------------------------------------------------------------------------------------
def rewrite_argv(argv: Sequence[str], verb: str, aliases: Mapping[str, str]) -> List[str]:
    """Replace alias flags (``--flag`` and ``--flag=value``) by the recipe's own spelling;
    ``--recipe`` prints a one-line deprecation warning."""
    out = []
    for a in argv:
        flag, eq, value = str(a).partition("=")
        if flag in aliases:
            if flag == "--recipe":
                print(f"dctnet-lite {verb}: warning: --recipe is deprecated, use --config FILE",
                      file=sys.stderr)
            a = aliases[flag] + eq + value
        out.append(a)
    return out


def config_mapping(value: str) -> Optional[dict]:
    """The mapping a ``--config`` value holds: a YAML file, or YAML/JSON text (else ``None``)."""
    import yaml

    p = Path(value).expanduser()
    try:
        data = yaml.safe_load(p.read_text()) if p.is_file() else yaml.safe_load(value)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def sources(argv: Sequence[str]) -> List[Tuple[str, Optional[dict]]]:
    """``(source, mapping)`` in command-line order: each ``--config`` value with the mapping it
    holds, each other ``--key`` flag as ``("--key", None)``."""
    out: List[Tuple[str, Optional[dict]]] = []
    args = [str(a) for a in argv]
    i = 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        if flag.startswith("--"):
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            if flag in ("--config", "--recipe"):
                out.append((value, config_mapping(value) or {}))
            else:
                out.append((flag, None))
        i += 1
    return out


def check_keys(mapping: Mapping, known: Mapping[str, Optional[Sequence[str]]], what: str,
               source: str) -> None:
    """ValueError (one line) naming unknown keys of a recipe mapping (``what``: "recipe field").
    ``known`` maps each key to the keys of its section (``None``: not a section)."""
    unknown = sorted(k for k in mapping if k not in known and k != "config")
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown} in {_short(source)}; known: {', '.join(known)}")
    for key, sub in known.items():
        value = mapping.get(key)
        if sub is not None and isinstance(value, Mapping):
            bad = sorted(k for k in value if k not in sub)
            if bad:
                raise ValueError(f"unknown {key} field(s) {bad} in {_short(source)}; known: {', '.join(sub)}")


def _short(source: str) -> str:
    """A config file as given; YAML/JSON text shortened to one line of at most 60 characters."""
    if "\n" not in source and Path(source).expanduser().is_file():
        return source
    source = " ".join(source.split())
    return source if len(source) <= 60 else source[:57] + "..."


def one_line(err: BaseException) -> str:
    """A jsonargparse error in one line: the key, the value given, or the first line."""
    msg = str(err).strip()
    key = re.search(r'Parser key "([^"]+)"', msg)
    given = re.search(r"^\s*Given value: (.*)$", msg, re.M)
    if key and given:
        value, name = given.group(1).strip(), key.group(1)
        nested = re.match(r"NestedArg\(key='([^']*)', val=(.*)\)$", value)
        if nested:  # --section.key VALUE of a section that may also be false
            name, value = f"{name}.{nested.group(1)}", nested.group(2).strip("'\"")
        return f"invalid value {value} for {name}"
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def parse(parser, argv: Sequence[str]):
    """``parser.parse_args(argv)`` with any parse error as ValueError (one line); --help and
    --print_config exit (SystemExit) as usual."""
    from jsonargparse import ArgumentError

    try:
        return parser.parse_args(list(argv))
    except ArgumentError as e:
        raise ValueError(one_line(e)) from None


def config_files(cfg) -> List[str]:
    """The ``--config`` files of a parsed namespace, as given (YAML text configs left out)."""
    return [str(getattr(p, "relative", p)) for p in (cfg.get("config") or []) if p]


def as_argv(recipes: Union[PathLike, Mapping, Sequence, None], what: str = "recipe") -> List[str]:
    """``--config`` arguments for recipes given from Python: paths (must exist) and mappings
    (passed as JSON text), in order."""
    import json

    items = [] if recipes is None else list(recipes) if isinstance(recipes, (list, tuple)) else [recipes]
    argv: List[str] = []
    for r in items:
        if isinstance(r, Mapping):
            argv += ["--config", json.dumps(dict(r), default=str)]
        else:
            p = Path(r)
            if not p.is_file():
                raise FileNotFoundError(f"{what} not found: {p}")
            argv += ["--config", str(p)]
    return argv


def exit_code(e: SystemExit) -> int:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


def dump(parser, cfg) -> Dict[str, Any]:
    """The parsed recipe as plain data (what ``--print_config`` prints, ``config`` left out)."""
    import yaml

    data = yaml.safe_load(parser.dump(cfg, skip_unset=False, skip_validation=True)) or {}
    data.pop("config", None)
    return data


OVERLAY_DIRECTIVE = re.compile(r"^#\s*overlay-of:\s*(.+?)\s*$", re.MULTILINE)


def overlay_bases(path: PathLike) -> List[str]:
    """The recipes a config file overlays, from its ``# overlay-of: base.yaml [more.yaml]`` line."""
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    m = OVERLAY_DIRECTIVE.search(text)
    return m.group(1).split() if m else []


def check_config_files(argv: Sequence[str]) -> None:
    """FileNotFoundError for a ``--config`` value that names a file (``*.yaml``, ``*.yml``,
    ``*.json``) that does not exist (anything else is read as YAML text); ValueError for an
    overlay (a file with an ``# overlay-of:`` line) given without its base recipes before it,
    which would otherwise run silently on code defaults for every key it does not set."""
    given: List[str] = []
    for source, _ in sources(argv):
        if source.startswith("--"):
            continue
        s = source.strip()
        is_file = "\n" not in s and not s.startswith("{") and s.lower().endswith((".yaml", ".yml", ".json"))
        if is_file and not Path(s).expanduser().is_file():
            old = re.fullmatch(r"w(\d+)\.ya?ml", Path(s).name)
            hint = (f" (the per-width prune recipes became one file in dctnet_lite 0.2: --config "
                    f"{(Path(s).parent / 'uniform.yaml').as_posix()} --width {old.group(1)})"
                    if old and Path(s).parent.name == "prune" else "")
            raise FileNotFoundError(f"recipe not found: {s}{hint}")
        if is_file:
            missing = [b for b in overlay_bases(s) if b not in given]
            if missing:
                folder = Path(s).parent
                need = " ".join(f"--config {(folder / b).as_posix()}" for b in missing)
                raise ValueError(f"{s} is an overlay of {', '.join(missing)}: give {need} before it")
            given.append(Path(s).name)


def run_verb(verb: str, argv: Sequence[str], parse_fn, run_fn) -> Tuple[int, Any]:
    """The shape every recipe verb shares: check the ``--config`` files and parse (``--help`` and
    ``--print_config`` exit 0, a missing recipe 1, a usage error 2), then run (a failure exits 1);
    each error is one line on stderr. Returns ``(exit code, run_fn's result or None)``."""
    try:
        check_config_files(argv)
        parsed = parse_fn(argv)
    except SystemExit as e:  # --help, --print_config
        return exit_code(e), None
    except (FileNotFoundError, ValueError) as e:
        print(f"dctnet-lite {verb}: error: {e}", file=sys.stderr)
        return (1 if isinstance(e, FileNotFoundError) else 2), None
    try:
        return 0, run_fn(parsed)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"dctnet-lite {verb}: error: {e}", file=sys.stderr)
        return 1, None
