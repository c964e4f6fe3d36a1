"""Latency ratios of checkpoints measured interleaved: one call of each per round, medians.

`dctnet-lite bench` times its rows one after another, so on a shared or throttled machine the load
moves between rows and ratios between checkpoints move with it. Here every round calls each
checkpoint once (same input, same Cartoonizer options), so each sees the same machine state; the
ratio of medians is the figure to quote. From the repository root:

    python3 eval/interleaved.py official_c32n4.toon official_c24n4.toon --sizes 1024 --rounds 21
    python3 eval/interleaved.py official_c32n4.toon official_c24n4.toon --precisions auto fp32 --json out.json

Ratios are of the first checkpoint's median over each other's (> 1: faster than the first).
Cartoonizer(checkpoint, device="cpu", precision=P).forward on a float (1, 3, S, S) input in
[0, 1] after ``--warmup`` calls each; ``auto`` is the default CPU path (bf16 where the CPU has it).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from dctnet_lite import Cartoonizer
from dctnet_lite.fileutil import atomic_write_bytes
from dctnet_lite.machine import machine_info


def measure(checkpoints, sizes=(512, 1024), precisions=("auto",), rounds=21, warmup=3, threads=2, seed=0):
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for prec in precisions:
        czs = [Cartoonizer(c, device="cpu", precision=prec) for c in checkpoints]
        for size in sizes:
            x = torch.rand(1, 3, size, size, generator=g)
            times = [[] for _ in czs]
            with torch.inference_mode():
                for cz in czs:
                    for _ in range(warmup):
                        cz.forward(x)
                for _ in range(rounds):
                    for i, cz in enumerate(czs):
                        t = time.perf_counter()
                        cz.forward(x)
                        times[i].append(time.perf_counter() - t)
            first = statistics.median(times[0])
            for c, cz, ts in zip(checkpoints, czs, times):
                med = statistics.median(ts)
                rows.append({"checkpoint": c, "precision": cz.precision, "requested_precision": prec, "size": size,
                             "median_ms": round(med * 1000, 2), "min_ms": round(min(ts) * 1000, 2),
                             "ratio_to_first": round(first / med, 3), "rounds": rounds})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="names or paths; ratios are to the first")
    p.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    p.add_argument("--precisions", nargs="+", default=["auto"])
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the rows (and the machine) here")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.warmup < 0 or a.threads < 1:
        p.error("--rounds and --threads must be >= 1, --warmup >= 0")
    rows = measure(a.checkpoints, a.sizes, a.precisions, a.rounds, a.warmup, a.threads)
    for r in rows:
        print(f"{r['precision']:5s} {r['size']:5d} px  {r['checkpoint']:28s} median {r['median_ms']:8.1f} ms"
              f"  (min {r['min_ms']:.1f})  {r['ratio_to_first']:.2f}x of {a.checkpoints[0]}")
    if a.json:
        doc = {"command": "python3 eval/interleaved.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "machine": machine_info(), "rows": rows}
        atomic_write_bytes(a.json, (json.dumps(doc, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
