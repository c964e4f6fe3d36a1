"""Measure the compound system: the face detector's rate on the shared portraits, and the time
split (detect, background, heads, blend) of a compound call at a given size.

Usage (from the repository root)::

    python eval/compound_bench.py detection [PORTRAITS] [--min-face 20 40] [--out FILE.json]
    python eval/compound_bench.py timing [PORTRAITS] [--size 1024] [--repeats 3] [--names FILE...] [--out FILE.json]

``PORTRAITS`` is the folder with the photos and their ``manifest.csv`` (default
``../shared/data/portraits/train``, the shared data folder next to the checkout); only the rows
of the manifest are read (the photos are never copied anywhere). ``detection`` runs
:class:`dctnet_lite.face.MTCNNDetector` on every photo at its own size, once per ``--min-face``,
and counts the photos where at least one face of that size was found (every photo there shows
at least one face), the faces found and the seconds per photo. ``timing`` runs a
:class:`dctnet_lite.compound.CompoundCartoonizer` (default checkpoint for both models) on the
photos that have a face, scaled to ``--size`` on the longer side, and reports the median of
each stage over the calls after a warm-up. The JSON names the machine and the load average when
it finished (on a shared machine other work slows every stage).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dctnet_lite.compound import STAGES, CompoundCartoonizer  # noqa: E402
from dctnet_lite.face import MTCNNDetector  # noqa: E402
from dctnet_lite.machine import machine_info  # noqa: E402

DEFAULT_PORTRAITS = Path("../shared/data/portraits/train")


def manifest(folder: Path) -> list:
    with open(folder / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


def detection(folder: Path, min_faces) -> dict:
    rows = manifest(folder)
    out = {"photos": len(rows), "runs": []}
    for mf in min_faces:
        det = MTCNNDetector(min_face=mf)
        found, faces, secs, missed = 0, 0, [], []
        for row in rows:
            rgb = read_rgb(folder / row["file"])
            t0 = time.perf_counter()
            got = [f for f in det(rgb) if f.size >= mf]
            secs.append(time.perf_counter() - t0)
            faces += len(got)
            if got:
                found += 1
            else:
                missed.append(row["file"])
        run = {"detector": "mtcnn (facenet-pytorch)", "min_face": mf, "photos_with_a_face": found,
               "rate": round(found / len(rows), 4), "faces": faces,
               "seconds_per_photo_median": round(statistics.median(secs), 3),
               "seconds_per_photo_mean": round(statistics.mean(secs), 3), "missed": missed}
        print(f"min_face {mf}: {found}/{len(rows)} photos ({100 * found / len(rows):.1f} %), {faces} faces, "
              f"median {run['seconds_per_photo_median']} s/photo", file=sys.stderr)
        out["runs"].append(run)
    return out


def timing(folder: Path, size: int, repeats: int, limit: int, names=None) -> dict:
    cz = CompoundCartoonizer(device="cpu", precision="fp32")
    rows = manifest(folder)
    if names:
        rows = [r for r in rows if r["file"] in set(names)]
    picked = []
    for row in rows:
        img = Image.fromarray(read_rgb(folder / row["file"]))
        scale = size / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
        p = cz.prepare(img)
        if p.faces:
            picked.append((row["file"], img, len(p.faces)))
        if len(picked) >= limit:
            break
    cz(picked[0][1])  # warm-up
    per = {s: [] for s in STAGES}
    total = []
    for _ in range(repeats):
        for _, img, _ in picked:
            cz.reset_timings()
            t0 = time.perf_counter()
            cz(img)
            total.append(time.perf_counter() - t0)
            for s in STAGES:
                per[s].append(cz.timings[s])
    return {"size": size, "photos": [{"file": f, "size": list(img.size), "faces": n} for f, img, n in picked],
            "calls": len(total), "median_seconds": {s: round(statistics.median(v), 3) for s, v in per.items()},
            "median_total_seconds": round(statistics.median(total), 3),
            "checkpoints": {"head": cz.head.checkpoint_info.name, "background": cz.background.checkpoint_info.name}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["detection", "timing"])
    parser.add_argument("portraits", type=Path, nargs="?", default=DEFAULT_PORTRAITS)
    parser.add_argument("--min-face", type=int, nargs="+", default=[20, 40])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=4, help="photos for timing (default 4)")
    parser.add_argument("--names", nargs="+", default=None, help="timing: these photos (file names)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    a = parser.parse_args(argv)
    torch.set_num_threads(a.threads)
    result = detection(a.portraits, a.min_face) if a.what == "detection" else \
        timing(a.portraits, a.size, a.repeats, a.limit, a.names)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None  # others' work on a shared machine
    result = {"schema": f"dctnet-lite-compound-{a.what}/1", "machine": machine_info("cpu"),
              "load_average_1_5_15_min_at_end": [round(x, 2) for x in load] if load else None,
              "torch_threads": a.threads, **result}
    text = json.dumps(result, indent=2) + "\n"
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
