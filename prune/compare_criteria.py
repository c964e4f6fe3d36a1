"""Compare pruning criteria: prune one parent with each criterion and tabulate the output drift.

Pruning only (no fine-tuning): for each criterion the parent is pruned to the same target and the
pruned network's outputs at s=1 are compared with the parent's on the calibration images
(LPIPS alex and L1, both in [0, 1] RGB units; lower is better). Writes a Markdown table to stdout,
to ``--out`` and/or between the ``criteria-table`` markers of ``--readme``.

Run from the repository root, e.g. (the README's table)::

    python prune/compare_criteria.py --checkpoint dctnet_w64.toon --width 48 \\
        --calib-images 8 --calib-size 256 --readme prune/README.md

The photos default to ``../shared/data/portraits/train`` (the shared data folder next to the
checkout); ``--calibration DIR`` (or ``--data DIR``) picks another folder. The JSON and the table
hold no absolute path: the parent is named relative to the current directory (or by its last
two path components when it lies outside it). ``--marker NAME`` picks another table of the same
README (``<!-- criteria-table:NAME:begin -->`` ... ``:end -->``), e.g. the official family's.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from dctnet_lite.checkpoint import load, resolve
from dctnet_lite.fileutil import atomic_write_bytes
from dctnet_lite.tools.prune import CRITERIA, prune
from dctnet_lite.tools.recipes import portable_path

DEFAULT_PHOTOS = "../shared/data/portraits/train"
BEGIN, END = "<!-- criteria-table:begin -->", "<!-- criteria-table:end -->"


def run(checkpoint, criteria, target, calibration, calib_images, calib_size, seed):
    path = resolve(checkpoint)
    parent = load(path)
    rows = []
    for c in criteria:
        t0 = time.perf_counter()
        try:
            r = prune(parent, criterion=c, calibration=calibration, calib_images=calib_images,
                      calib_size=calib_size, seed=seed, drift=True, **target)
        except Exception as e:  # keep going: one failing criterion should not hide the others
            rows.append({"criterion": c, "error": f"{type(e).__name__}: {e}"})
            print(f"{c}: FAILED {type(e).__name__}: {e}", file=sys.stderr)
            continue
        m = r.metrics
        rows.append({"criterion": c, "arch": r.config.describe(), "lpips_alex": m.get("drift_lpips_alex"),
                     "l1": m["drift_l1"], "params": m["params_after"], "gmacs_512": m["macs_512_after"] / 1e9,
                     "macs_ratio": m["macs_ratio"], "images": m["drift_images"],
                     "seconds": round(time.perf_counter() - t0, 1), "provenance": r.provenance})
        print(f"{c}: LPIPS {m.get('drift_lpips_alex')} L1 {m['drift_l1']:.5f} ({rows[-1]['seconds']} s)",
              file=sys.stderr)
    return portable_path(path), rows


def markdown(path, rows, target, calibration, calib_size, seed, command) -> str:
    ok = [r for r in rows if "error" not in r]
    prov = ok[0]["provenance"] if ok else {}
    lines = [
        f"Parent `{path}` (sha256 `{str(prov.get('parent_sha256'))[:16]}…`), target "
        + ", ".join(f"{k}={v}" for k, v in target.items())
        + f", seed {seed}, torch-pruning {prov.get('torch_pruning', '?')}; drift at s=1 on "
        f"{ok[0]['images'] if ok else '?'} image(s) of `{calibration}` at {calib_size} px, "
        "pruned only (before fine-tuning).",
        "",
        "| criterion | architecture | LPIPS alex (drift) ↓ | L1 (drift) ↓ | params | GMACs @512 | time (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['criterion']} | failed: {r['error']} | | | | | |")
            continue
        lp = "n/a" if r["lpips_alex"] is None else f"{r['lpips_alex']:.4f}"
        lines.append(f"| {r['criterion']} | {r['arch']} | {lp} | {r['l1']:.4f} | {r['params']:,} | "
                     f"{r['gmacs_512']:.2f} | {r['seconds']} |")
    lines += ["", f"Made with: `{command}`"]
    return "\n".join(lines) + "\n"


def markers(name=None):
    """The table's markers: ``criteria-table:begin/end``, or ``criteria-table:NAME:begin/end``."""
    if not name:
        return BEGIN, END
    return f"<!-- criteria-table:{name}:begin -->", f"<!-- criteria-table:{name}:end -->"


def update_readme(readme: Path, table: str, name=None) -> None:
    begin, end = markers(name)
    text = readme.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{readme} has no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    atomic_write_bytes(readme, (head + begin + "\n" + table + end + tail).encode())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="parent checkpoint name or path")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--width", type=int, default=None, help="uniform target width (default 48)")
    g.add_argument("--ratio", type=float, default=None)
    g.add_argument("--macs-budget", default=None)
    p.add_argument("--criteria", default=",".join(CRITERIA), help="comma-separated (default: all)")
    p.add_argument("--calibration", "--data", default=DEFAULT_PHOTOS,
                   help=f"folder of images (default {DEFAULT_PHOTOS})")
    p.add_argument("--calib-images", type=int, default=8)
    p.add_argument("--calib-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the Markdown table here")
    p.add_argument("--readme", default=None, help="replace the table between the markers of this file")
    p.add_argument("--json", default=None, help="write the raw rows as JSON here")
    p.add_argument("--marker", default=None,
                   help="with --readme: the table between <!-- criteria-table:MARKER:begin/end --> "
                        "(default: the unnamed criteria-table markers)")
    a = p.parse_args(argv)
    target = ({"width": a.width} if a.width is not None else {"ratio": a.ratio} if a.ratio is not None
              else {"macs_budget": a.macs_budget} if a.macs_budget is not None else {"width": 48})
    criteria = [c.strip() for c in a.criteria.split(",") if c.strip()]
    command = "python prune/compare_criteria.py " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    path, rows = run(a.checkpoint, criteria, target, a.calibration, a.calib_images, a.calib_size, a.seed)
    table = markdown(path, rows, target, a.calibration, a.calib_size, a.seed, command)
    sys.stdout.write(table)
    if a.out:
        Path(a.out).write_text(table)
    if a.readme:
        update_readme(Path(a.readme), table, a.marker)
    if a.json:
        Path(a.json).write_text(json.dumps({"parent": path, "target": target, "rows": rows}, indent=2,
                                           default=str))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
