"""The official DCT-Net generator, ours against TensorFlow, side by side in one run.

    python3 eval/official_vs_tf.py --threads 2 --sizes 512 1024

1. Runs eval/official_tf_bench.py under the TensorFlow venv's python (``--tf-python``, default
   ``$TF_PYTHON``, e.g. ``"$TFVENV"/bin/python``: see eval/official_tf_bench.py) as a subprocess: it builds ModelScope's own generator at c=32, n=4
   with seeded random weights, freezes it as CartoonTranslationExporter does, saves the graph
   (``--graph``) and one 512 px input/output pair, and times ``sess.run`` (BGR float feed ->
   uint8 fetch) with ``--threads`` intra- and inter-op threads.
2. Imports that very graph with :func:`dctnet_lite.tools.import_modelscope.import_modelscope`
   and times it through ``dctnet_lite.Cartoonizer(checkpoint, device="cpu", precision=P)`` for
   each of ``--precisions`` (default ``auto``, the library's default CPU path: bf16 on a CPU with
   native bf16, else fp32; and ``fp32``, the exact path), pre- and post-processing included,
   uint8 HxWx3 in and out, on the same images with ``torch.set_num_threads(--threads)``:
   warm-up, then the median of N.
3. Checks the imported model's uint8 output against TF's on the saved input (official_uint8 at
   each precision timed).

Without the TF python it says so and times ours only (on the saved graph when ``--graph``
exists, else on a randomly initialised c=32 n=4 generator). Writes ``official_vs_tf.json`` and
``official_vs_tf.md`` under ``--out-dir`` (default eval/reports/official_tf/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import dctnet_lite  # noqa: E402
from dctnet_lite.official import OfficialGenerator, official_uint8  # noqa: E402
from dctnet_lite.tools.import_modelscope import import_modelscope  # noqa: E402

sys.path.insert(0, str(REPO / "eval"))
from official_common import bench_image, cpu_model  # noqa: E402


def run_tf(args, tmp: Path):
    tf_json, io = tmp / "tf.json", tmp / "io.npz"
    cmd = [args.tf_python, str(REPO / "eval" / "official_tf_bench.py"), "--threads", str(args.threads),
           "--sizes", *map(str, args.sizes), "--warmup", str(args.warmup), "--runs", str(args.runs),
           "--save-graph", str(args.graph), "--save-io", str(io), "--out", str(tf_json)]
    print("TF:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(tf_json.read_text()), np.load(io)


def time_ours(model, sizes, threads, warmup, runs, precision="auto"):
    torch.set_num_threads(threads)
    cz = dctnet_lite.Cartoonizer(model, device="cpu", precision=precision)
    out = {"precision": cz.precision}
    for size in sizes:
        rgb = np.ascontiguousarray(bench_image(size)[:, :, ::-1]).astype(np.uint8)
        for _ in range(warmup):
            cz(rgb)
        ms = []
        for _ in range(runs):
            t0 = time.perf_counter()
            y = cz(rgb)
            ms.append((time.perf_counter() - t0) * 1000.0)
        assert y.shape == rgb.shape and y.dtype == np.uint8
        out[str(size)] = {"median_ms": round(float(np.median(ms)), 2),
                          "p90_ms": round(float(np.percentile(ms, 90)), 2),
                          "min_ms": round(float(np.min(ms)), 2), "runs": runs, "warmup": warmup}
        print("ours %s %4d px: median %.1f ms (min %.1f, %d runs, %d threads)" % (
            cz.precision, size, out[str(size)]["median_ms"], out[str(size)]["min_ms"], runs, threads), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tf-python", default=os.environ.get("TF_PYTHON"),
                    help="the TensorFlow venv's python (default $TF_PYTHON; without it, ours only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--graph", type=Path, default=None,
                    help="where the TF side saves the frozen c32 n4 graph (not committed; default: a "
                         "temporary folder); without TF, an existing graph to time ours on")
    ap.add_argument("--precisions", nargs="+", default=["auto", "fp32"],
                    help="Cartoonizer precisions to time (auto: the default CPU path, bf16 on CPUs "
                         "with native bf16; fp32: the exact path)")
    ap.add_argument("--also", nargs="*", default=[dctnet_lite.registry.DEFAULT_WEIGHTS],
                    help="other checkpoints to time in the same run on the default CPU path "
                         "(default: the shipped default checkpoint)")
    ap.add_argument("--out-dir", type=Path, default=REPO / "eval" / "reports" / "official_tf")
    args = ap.parse_args(argv)

    load_before = [round(v, 2) for v in os.getloadavg()]
    tf_report, io, parity = None, None, None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.graph is None:
            args.graph = tmp / "official_c32_n4.pb"
        if args.tf_python and Path(args.tf_python).is_file():
            tf_report, io = run_tf(args, tmp)
        else:
            print(f"no TensorFlow python at {args.tf_python}: timing ours only", flush=True)
        if args.graph.is_file():
            ckpt = tmp / "official_c32_n4.safetensors"
            written = import_modelscope(args.graph, ckpt)
            model = dctnet_lite.checkpoint.load(written[0].path)
            weights = f"imported from {args.graph.name}"
        else:
            torch.manual_seed(0)
            model = OfficialGenerator().eval()
            weights = "random (no graph to import)"
    timed = {}
    for prec in args.precisions:
        t = time_ours(model, args.sizes, args.threads, args.warmup, args.runs, prec)
        timed[t.pop("precision") + (" (auto)" if prec == "auto" else "")] = t
    also = {}
    for name in args.also:
        t = time_ours(name, args.sizes, args.threads, args.warmup, args.runs, "auto")
        also[f"{name} ({t.pop('precision')}, auto)"] = t
    if io is not None:
        torch.set_num_threads(args.threads)
        parity = {"size": list(io["input"].shape[:2])}
        for name in timed:
            prec = name.split()[0]
            ours = official_uint8(model, io["input"], precision=prec)
            d = np.abs(ours.astype(np.int16) - io["output"].astype(np.int16))
            parity[prec] = {"max_levels": int(d.max()), "mean_levels": float(d.mean()),
                            "share_off": float((d > 0).mean())}
            print("parity %s vs TF (uint8, 512 px): max %d, mean %.2g" % (
                prec, parity[prec]["max_levels"], parity[prec]["mean_levels"]))

    rows = []
    for s in map(str, args.sizes):
        tf_ms = tf_report["sizes"][s]["median_ms"] if tf_report else None
        for name, ours_t in timed.items():
            o = ours_t[s]["median_ms"]
            rows.append({"size": int(s), "precision": name, "tf_median_ms": tf_ms, "ours_median_ms": o,
                         "tf_over_ours": round(tf_ms / o, 3) if tf_ms else None})
        for name, t in also.items():
            o = t[s]["median_ms"]
            rows.append({"size": int(s), "precision": name, "tf_median_ms": tf_ms, "ours_median_ms": o,
                         "tf_over_ours": round(tf_ms / o, 3) if tf_ms else None})
    report = {
        "what": "official DCT-Net generator c32 n4, the same frozen graph under TensorFlow "
                "(sess.run, BGR float feed -> uint8 fetch) and imported into dctnet_lite "
                "(Cartoonizer(model, device='cpu'), uint8 RGB in -> uint8 out)",
        "command": "python3 eval/official_vs_tf.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "loadavg_before": load_before,
                    "platform": platform.platform(), "python": platform.python_version()},
        "threads": args.threads, "torch": torch.__version__,
        "tensorflow": tf_report["tensorflow"] if tf_report else None,
        "weights": weights, "parity_512": parity, "rows": rows,
        "tf": tf_report["sizes"] if tf_report else None, "ours": timed, "also": also,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "official_vs_tf.json").write_text(json.dumps(report, indent=1) + "\n")
    md = ["# Official DCT-Net c32 n4: dctnet_lite vs TensorFlow (CPU)", "",
          f"Machine: {report['machine']['cpu']}, {os.cpu_count()} cores, load before {load_before}; "
          f"{args.threads} threads each (TF: intra = inter = {args.threads}; torch.set_num_threads). "
          f"torch {torch.__version__}, TensorFlow {report['tensorflow'] or 'not run'}. "
          f"Median of {args.runs} after {args.warmup} warm-up runs.", "",
          "| size | ours: model, precision | TF median (ms) | ours median (ms) | TF / ours |",
          "|---:|---|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['size']} px | {r['precision']} | {r['tf_median_ms'] if r['tf_median_ms'] else '-'} | "
                  f"{r['ours_median_ms']} | {r['tf_over_ours'] if r['tf_over_ours'] else '-'} |")
    if parity:
        md += ["", "Parity on TF's saved 512 px input (official_uint8 at that precision vs TF's uint8 "
                   "output, levels): " + "; ".join(
                       f"{k}: max {v['max_levels']}, mean {v['mean_levels']:.2g}, "
                       f"{100 * v['share_off']:.2f}% of values off" for k, v in parity.items() if k != "size") + "."]
    md += ["", f"Command: `{report['command']}`", ""]
    (args.out_dir / "official_vs_tf.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
