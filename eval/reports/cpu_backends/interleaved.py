"""The default CPU path against the INT8 artefacts, interleaved (a busy moment falls on all).

    python3 eval/reports/cpu_backends/interleaved.py --pair official_c24n4.toon runs/cpu_backends/official_c24n4.toon.int8.onnx \
        --pair dctnet_w48.toon runs/cpu_backends/dctnet_w48.toon.int8.onnx --threads 2 --rounds 9

Per pair: Cartoonizer(checkpoint) on its default path (precision "auto": bf16 on a CPU with native
bf16; channels_last), the same at fp32, and Cartoonizer(artefact) (int8, ONNX Runtime); each
forward on the same 512 x 512 random input, strength 1, after 2 warm-up calls; then --rounds
rounds in which each runs once in turn. Prints the medians (ms) and writes JSON with -o.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
from dctnet_lite import Cartoonizer  # noqa: E402
from dctnet_lite.fileutil import atomic_write_bytes  # noqa: E402
from dctnet_lite.machine import machine_info  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", nargs=2, action="append", required=True, metavar=("CHECKPOINT", "ARTEFACT"))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("-o", "--output", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x = torch.rand(1, 3, a.size, a.size, generator=torch.Generator().manual_seed(0))
    runs = {}
    for ck, art in a.pair:
        runs[f"{ck} default"] = Cartoonizer(ck, device="cpu")
        runs[f"{ck} fp32"] = Cartoonizer(ck, device="cpu", precision="fp32")
        runs[f"{Path(art).name}"] = Cartoonizer(art, device="cpu")
    times = {k: [] for k in runs}
    for cz in runs.values():
        for _ in range(2):
            cz.forward(x)
    for _ in range(a.rounds):
        for k, cz in runs.items():
            t = time.perf_counter()
            cz.forward(x)
            times[k].append(time.perf_counter() - t)
    res = {"size": a.size, "threads": a.threads, "rounds": a.rounds, "machine": machine_info("cpu"),
           "rows": [{"run": k, "precision": runs[k].precision, "median_ms": 1e3 * statistics.median(v),
                     "min_ms": 1e3 * min(v), "max_ms": 1e3 * max(v)} for k, v in times.items()]}
    for r in res["rows"]:
        print(f"{r['run']:<40} {r['precision']:<5} median {r['median_ms']:8.1f} ms  (min {r['min_ms']:.1f}, max {r['max_ms']:.1f})")
    if a.output:
        atomic_write_bytes(a.output, (json.dumps(res, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
