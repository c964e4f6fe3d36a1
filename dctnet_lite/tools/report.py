"""One recipe -> a quality-vs-latency report: ``report.json``, ``report.md`` and ``pareto.png``.

``make_report(recipe)`` runs :func:`dctnet_lite.tools.evaluate.evaluate` and
:func:`dctnet_lite.tools.bench.bench` as a recipe says, and writes them to
``<recipe folder>/reports/<name>/`` (``eval/reports/<name>/`` for the shipped recipes). A recipe
is parsed by jsonargparse (:func:`build_parser`; the sections are the dataclasses
:class:`Quality`, :class:`Bench` and :class:`Pareto`, each of which may be ``false``), the same
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

``jsonargparse``, ``pyyaml`` and ``matplotlib`` are imported lazily; without matplotlib the plot is drawn with
Pillow (plainer, same content).
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


SECTIONS = {"quality": Quality, "bench": Bench, "pareto": Pareto}
TOP_KEYS = ("name", "base_dir", "checkpoints", "quality", "bench", "pareto", "extra_bench")
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
    parser.add_argument("--checkpoints", type=str, nargs="+", default=[],
                        help="checkpoint names or paths to evaluate and benchmark")
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
    parser = build_parser()
    cfg = parse(parser, argv)
    files = config_files(cfg)
    recipe = dump(parser, cfg)
    for key, cls in SECTIONS.items():
        recipe[key] = _section(recipe.get(key), cls)
    recipe["extra_bench"] = list(recipe.get("extra_bench") or [])
    recipe["checkpoints"] = list(recipe.get("checkpoints") or [])
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


def pareto_points(quality: dict, bench_result: dict, cfg: Mapping) -> dict:
    """Join quality rows and bench rows per checkpoint and mark the front (see module doc)."""
    metric = cfg["metric"]
    strength = float(cfg["strength"])
    size = int(cfg["size"] or quality["sizes"][0])
    resolution = int(cfg["resolution"] or min(bench_result["settings"]["resolutions"]))
    batch = int(cfg["batch"] or 1)
    precision = cfg["precision"] or bench_result["settings"]["precisions"][0]
    backend = cfg["backend"] or "best"
    rows = [r for r in bench_result["rows"] if "error" not in r and r["resolution"] == resolution
            and r["batch"] == batch and r["precision"] == precision
            and (backend == "best" or r["backend"] == backend)]
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
                       "width": q["width"], "latency_ms": fastest["median_ms"],
                       "backend": fastest["backend"], "value": value, "lo": lo, "hi": hi,
                       "is_reference": ref})
    flags = pareto_front([(p["latency_ms"], p["value"]) for p in points],
                         minimize=(True, LOWER_IS_BETTER[metric]))
    for p, f in zip(points, flags):
        p["on_front"] = f
    return {"metric": metric, "strength": strength, "size": size, "resolution": resolution,
            "batch": batch, "precision": precision, "backend": backend,
            "reference": quality.get("reference"), "device": bench_result["settings"]["device"],
            "lower_is_better": LOWER_IS_BETTER[metric], "points": points}


def plot_pareto(pareto: dict, path: Union[str, os.PathLike]) -> str:
    """Write the Pareto plot as PNG; returns the backend used (``matplotlib`` or ``pillow``)."""
    try:
        import matplotlib
    except ImportError:
        _plot_pillow(pareto, Path(path))
        return "pillow"
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    pts = pareto["points"]
    title = METRIC_TITLES.get(pareto["metric"], pareto["metric"])
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    try:
        for p in pts:
            color = "tab:red" if p["on_front"] else "tab:gray"
            ax.errorbar(p["latency_ms"], p["value"], yerr=[[p["value"] - p["lo"]], [p["hi"] - p["value"]]],
                        fmt="o", color=color, ms=7, capsize=3, zorder=3)
            label = p["label"] + (" (reference)" if p["is_reference"] else "")
            ax.annotate(label, (p["latency_ms"], p["value"]), textcoords="offset points",
                        xytext=(6, 6), fontsize=8)
        front = sorted((p for p in pts if p["on_front"]), key=lambda p: p["latency_ms"])
        if len(front) > 1:
            ax.step([p["latency_ms"] for p in front], [p["value"] for p in front], where="post",
                    color="tab:red", lw=1.2, alpha=0.7, label="Pareto front")
        elif front:
            ax.plot([], [], color="tab:red", marker="o", ls="", label="Pareto front")
        lat = [p["latency_ms"] for p in pts]
        if lat and min(lat) > 0 and max(lat) / min(lat) > 10:
            ax.set_xscale("log")
        ax.set_xlabel(f"latency per image, ms ({pareto['device']}, {pareto['resolution']} px, "
                      f"batch {pareto['batch']}, {pareto['precision']}, backend {pareto['backend']})")
        better = "lower is better" if pareto["lower_is_better"] else "higher is better"
        ax.set_ylabel(f"{title} vs {pareto['reference']} ({better})")
        ax.set_title(f"{title} at strength {pareto['strength']:g}, {pareto['size']} px vs latency")
        ax.grid(True, alpha=0.3)
        if front:
            ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        buf = _png_bytes(fig)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf)
    return "matplotlib"


def _png_bytes(fig) -> bytes:
    b = io.BytesIO()
    fig.savefig(b, format="png")
    return b.getvalue()


def _plot_pillow(pareto: dict, path: Path) -> None:
    W, H, L, R, T, B = 900, 600, 90, 30, 40, 70
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    pts = pareto["points"]
    xs = [p["latency_ms"] for p in pts] or [0.0, 1.0]
    ys = [v for p in pts for v in (p["lo"], p["hi"], p["value"])] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    padx, pady = (x1 - x0) * 0.1 or max(abs(x0) * 0.1, 1e-3), (y1 - y0) * 0.1 or max(abs(y0) * 0.1, 1e-3)
    x0, x1, y0, y1 = x0 - padx, x1 + padx, y0 - pady, y1 + pady
    px = lambda x: L + (x - x0) / (x1 - x0) * (W - L - R)  # noqa: E731
    py = lambda y: H - B - (y - y0) / (y1 - y0) * (H - T - B)  # noqa: E731
    d.rectangle([L, T, W - R, H - B], outline="black")
    for k in range(6):
        xv, yv = x0 + (x1 - x0) * k / 5, y0 + (y1 - y0) * k / 5
        d.line([px(xv), H - B, px(xv), H - B + 5], fill="black")
        d.text((px(xv) - 15, H - B + 8), f"{xv:.4g}", fill="black")
        d.line([L - 5, py(yv), L, py(yv)], fill="black")
        d.text((5, py(yv) - 6), f"{yv:.4g}", fill="black")
    title = METRIC_TITLES.get(pareto["metric"], pareto["metric"])
    d.text((L, 10), f"{title} (strength {pareto['strength']:g}, {pareto['size']} px) vs latency "
                    f"({pareto['device']}, {pareto['resolution']} px); red = Pareto front", fill="black")
    d.text((L, H - 30), "latency per image (ms)", fill="black")
    front = sorted((p for p in pts if p["on_front"]), key=lambda p: p["latency_ms"])
    for a, b in zip(front, front[1:]):
        d.line([px(a["latency_ms"]), py(a["value"]), px(b["latency_ms"]), py(a["value"]),
                px(b["latency_ms"]), py(b["value"])], fill=(220, 60, 60), width=2)
    for p in pts:
        c = (220, 30, 30) if p["on_front"] else (120, 120, 120)
        x, y = px(p["latency_ms"]), py(p["value"])
        d.line([x, py(p["lo"]), x, py(p["hi"])], fill=c)
        d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=c)
        label = p["label"] + (" (reference)" if p["is_reference"] else "")
        lx = x + 8 if x + 8 + d.textlength(label) <= W - 5 else x - 8 - d.textlength(label)
        d.text((lx, y - 14), label, fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


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
    header = ["checkpoint", "architecture", "reference", "size", "strength", "n"] + \
        [METRIC_TITLES.get(m, m) for m in metrics]
    rows = [[r["checkpoint"], r["arch"], r["reference"], r["size"], f"{r['strength']:g}", r["n"]]
            + [_cell(r["metrics"].get(m), m) for m in metrics] for r in quality["results"]]
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
                  f"{s.get('repeats')} timed calls per row; latency is per batch.", ""]
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
    if report.get("quality"):
        q = report["quality"]
        lines += ["## Quality", "", f"Reference: `{q['reference']}` (a checkpoint that is the reference "
                  f"is scored against `{q['self_reference']}`).", ""]
        lines += quality_markdown(q) + [""]
    if report.get("pareto"):
        p = report["pareto"]
        lines += ["## Pareto front", "", "![Pareto plot](pareto.png)", "",
                  f"{METRIC_TITLES.get(p['metric'], p['metric'])} at strength {p['strength']:g}, "
                  f"{p['size']} px vs median latency at {p['resolution']} px, batch {p['batch']}, "
                  f"{p['precision']}, backend {p['backend']} on {p['device']}. On the front (fastest "
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
                progress: bool = False) -> Path:
    """Run a recipe's evaluation and benchmark; write the report folder and return its path.

    ``recipe``: a mapping, a YAML path, or a list of them (later ones overlay earlier ones), read
    by the same parser as ``dctnet-lite eval --config FILE``. The folder is ``out_dir`` when given,
    else the recipe's ``out``, else ``<first recipe file's folder>/reports/<name>`` (for a dict
    recipe: ``eval/reports/<name>`` under the current directory). It holds ``report.json`` (the
    recipe as run, the full evaluate and bench results, the Pareto points, imported benches),
    ``report.md`` and ``pareto.png`` (when there are both quality and latency figures).
    ``name``, ``checkpoints``, ``images`` and ``limit`` override the recipe.
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
    return run_report(cfg, files, out_dir, progress=progress)


def run_report(cfg: dict, files: Sequence[str] = (), out_dir: Union[str, os.PathLike, None] = None,
               progress: bool = False) -> Path:
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
    ckpts = [_resolve_spec(c, base) for c in cfg["checkpoints"] or []]

    report = {"name": cfg["name"], "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "dctnet_lite": __version__, "recipe_path": files[0] if files else None,
              "config_files": list(files), "recipe": cfg,
              "quality": None, "bench": None, "pareto": None, "extra_bench": []}
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
            interval_method=q["interval"], progress=progress)
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
                                    precisions=b["precisions"], backends=b["backends"], device=b["device"],
                                    threads=b["threads"], warmup=b["warmup"], repeats=b["repeats"],
                                    cold_start=b["cold_start"], cold_start_size=b["cold_start_size"],
                                    progress=progress)
        else:
            warnings.warn("nothing to benchmark: no checkpoint exists and no widths are given", stacklevel=2)
    for extra in cfg["extra_bench"]:
        p = Path(_resolve_path(extra, base))
        report["extra_bench"].append({"path": str(p), "bench": _load_bench_json(p)})
    if report["quality"] and report["bench"] and cfg["pareto"]:
        pareto = pareto_points(report["quality"], report["bench"], cfg["pareto"])
        if pareto["points"]:
            report["pareto"] = pareto
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
