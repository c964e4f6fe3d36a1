"""The CPU backends table (issue 15): both families at 512 px, one process, one JSON.

    python3 eval/reports/cpu_backends/run_bench.py --int8 runs/cpu_backends/official_c24n4.toon.int8.onnx \
        runs/cpu_backends/dctnet_w48.toon.int8.onnx --threads 2 -o eval/reports/cpu_backends/bench.json

Three groups of dctnet_lite.tools.bench.bench in one process (so the ratios come from one run of
the machine): fp32 on eager / channels_last / compile / onnxruntime plus the INT8 artefacts
(their own row: int8 on onnxruntime); bf16 on eager / channels_last (channels_last + bf16 is the
library's CPU default); fp32 compile-max-autotune (warm-up 1: its first call is the compile).
"""
import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
from dctnet_lite.fileutil import atomic_write_bytes  # noqa: E402
from dctnet_lite.tools.bench import bench, format_table  # noqa: E402
from dctnet_lite.tools.recipes import portable_tree  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", nargs="+", default=["official_c24n4.toon", "dctnet_w48.toon"])
    ap.add_argument("--int8", nargs="*", default=[], help="INT8 artefacts of `dctnet-lite quantize`")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-max-autotune", action="store_true")
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    groups = [dict(targets=a.checkpoints + a.int8, precisions=["fp32"],
                   backends=["eager", "channels_last", "compile", "onnxruntime"], warmup=2, repeats=a.repeats),
              dict(targets=a.checkpoints, precisions=["bf16"], backends=["eager", "channels_last"],
                   warmup=2, repeats=a.repeats)]
    if not a.no_max_autotune:
        groups.append(dict(targets=a.checkpoints, precisions=["fp32"], backends=["compile-max-autotune"],
                           warmup=1, repeats=3))
    results, t0 = [], time.time()
    for g in groups:  # the JSON is rewritten after each group (a long compile group may be cut)
        results.append(bench(g["targets"], resolutions=[a.resolution], precisions=g["precisions"],
                             backends=g["backends"], threads=a.threads, warmup=g["warmup"],
                             repeats=g["repeats"], cold_start=False, progress=True))
        print(format_table(results[-1]), flush=True)
        out = {**results[0], "rows": [r for res in results for r in res["rows"]],
               "groups": [{**g, "settings": res["settings"]} for g, res in zip(groups, results)],
               "command": "python3 eval/reports/cpu_backends/run_bench.py " + " ".join(sys.argv[1:]),
               "complete": len(results) == len(groups), "seconds": round(time.time() - t0, 1)}
        atomic_write_bytes(a.output, (json.dumps(portable_tree(out), indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
