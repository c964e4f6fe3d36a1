"""The official DCT-Net generator, ours against TensorFlow, side by side in one run.

    python3 eval/official_vs_tf.py --threads 2 --sizes 512 1024

1. Starts eval/official_tf_bench.py --serve under the TensorFlow venv's python
   (``--tf-python``, default ``$TF_PYTHON``, e.g. ``"$TFVENV"/bin/python``: see
   eval/official_tf_bench.py): it builds ModelScope's own generator at c=32, n=4 with seeded
   random weights, freezes it as CartoonTranslationExporter does, saves the graph (``--graph``)
   and one 512 px input/output pair, opens a session with ``--threads`` intra- and inter-op
   threads and then times one ``sess.run`` (BGR float feed -> uint8 fetch) per request.
2. Imports that very graph with :func:`dctnet_lite.tools.import_modelscope.import_modelscope`
   and runs it through ``dctnet_lite.Cartoonizer(checkpoint, device="cpu", precision=P)`` for
   each of ``--precisions`` (default ``auto``, the library's default CPU path: bf16 on a CPU with
   native bf16, else fp32; and ``fp32``, the exact path), plus the checkpoints of ``--also``
   (default: the shipped default) on their default path; pre- and post-processing included,
   uint8 HxWx3 in and out, ``torch.set_num_threads(--threads)``.
3. Times them interleaved: per size, warm-up calls of each, then ``--runs`` rounds in which TF and
   each of ours run once in turn, so a busy moment of the machine falls on all of them alike;
   medians of the rounds.
4. Checks the imported model's uint8 output against TF's on the saved input (official_uint8 at
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


def export_tf_weights(model, path) -> Path:
    """An :class:`OfficialGenerator` of the released shape's kind (uniform channels) -> the npz
    that ``eval/official_tf_bench.py --weights`` freezes into ModelScope's graph: one array per
    conv constant, named as the graph names them (``generator/Conv/weights``, HWIO, BGR in and
    out), the inverse of :func:`dctnet_lite.tools.import_modelscope.build_model`."""
    from dctnet_lite.tools.import_modelscope import _expected_scopes

    cfg = model.config
    if cfg.table is not None or cfg.channels is None:
        raise ValueError("only a uniform official generator (channels=C, no channel table) has a "
                         "ModelScope graph to put its weights in")
    convs = model.convs()
    scopes = _expected_scopes(cfg.num_blocks)
    arrays = {}
    for i, (mod, scope) in enumerate(zip(convs, scopes)):
        w = mod.weight.detach().float().cpu().numpy()  # OIHW
        b = mod.bias.detach().float().cpu().numpy()
        if i == 0:
            w = w[:, ::-1]                        # the graph's input is BGR
        if i == len(convs) - 1:
            w, b = w[::-1], b[::-1]               # and so is its output
        arrays[scope + "/weights"] = np.ascontiguousarray(w.transpose(2, 3, 1, 0))  # OIHW -> HWIO
        arrays[scope + "/biases"] = np.ascontiguousarray(b)
    np.savez(path, **arrays)
    return Path(path)


class TFServer:
    """eval/official_tf_bench.py --serve under the TensorFlow venv's python: it builds and freezes
    the graph (saved to ``args.graph``; with ``args.weights``, an npz of :func:`export_tf_weights`,
    those weights instead of random ones), saves one input/output pair, warms up and then times
    one ``sess.run`` per request, so TF's runs interleave with ours (same machine state for both).
    ``log`` prints its progress (default: stdout)."""

    def __init__(self, args, tmp: Path, log=print):
        self.json, self.io = tmp / "tf.json", tmp / "io.npz"
        cmd = [args.tf_python, str(REPO / "eval" / "official_tf_bench.py"), "--threads", str(args.threads),
               "--sizes", *map(str, args.sizes), "--warmup", str(args.warmup), "--serve",
               "--save-graph", str(args.graph), "--save-io", str(self.io), "--out", str(self.json)]
        if getattr(args, "weights", None):
            cmd += ["--weights", str(args.weights)]
        log("TF: " + " ".join(cmd))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for line in self.proc.stdout:
            log("TF| " + line.rstrip())
            if line.startswith("READY"):
                break
        else:
            raise SystemExit(f"the TensorFlow side ended before it was ready (exit {self.proc.wait()})")
        self.info = json.loads(self.json.read_text())

    def __call__(self, size: int) -> float:
        self.proc.stdin.write(f"{size}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line.startswith("MS "):
            raise SystemExit(f"the TensorFlow side answered {line!r}")
        return float(line.split()[1])

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def ours_runner(model, precision="auto"):
    """(resolved precision, size -> one timed call in ms) through the default Cartoonizer path."""
    cz = dctnet_lite.Cartoonizer(model, device="cpu", precision=precision)
    images = {}

    def run(size: int) -> float:
        rgb = images.get(size)
        if rgb is None:
            rgb = images[size] = np.ascontiguousarray(bench_image(size)[:, :, ::-1]).astype(np.uint8)
        t0 = time.perf_counter()
        y = cz(rgb)
        ms = (time.perf_counter() - t0) * 1000.0
        assert y.shape == rgb.shape and y.dtype == np.uint8
        return ms

    return cz.precision, run


def interleaved(contenders, sizes, warmup, runs, pause_s=0.05):
    """Per size: ``warmup`` untimed calls of each contender, then ``runs`` rounds in which each
    contender runs once, in turn (a short pause between, so one side's idle threads do not spin
    into the other's run). Returns name -> size -> {median_ms, p90_ms, min_ms, runs, warmup}."""
    out = {name: {} for name in contenders}
    for size in sizes:
        for fn in contenders.values():
            for _ in range(warmup):
                fn(size)
        ms = {name: [] for name in contenders}
        for _ in range(runs):
            for name, fn in contenders.items():
                time.sleep(pause_s)
                ms[name].append(fn(size))
        for name, v in ms.items():
            out[name][str(size)] = {"median_ms": round(float(np.median(v)), 2),
                                    "p90_ms": round(float(np.percentile(v, 90)), 2),
                                    "min_ms": round(float(np.min(v)), 2), "runs": runs, "warmup": warmup}
            print("%-40s %4d px: median %.1f ms (min %.1f)" % (name, size, np.median(v), np.min(v)), flush=True)
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
    torch.set_num_threads(args.threads)
    tf, io, parity = None, None, None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.graph is None:
            args.graph = tmp / "official_c32_n4.pb"
        try:
            if args.tf_python and Path(args.tf_python).is_file():
                tf = TFServer(args, tmp)
                io = np.load(tf.io)
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
            contenders = {}
            if tf is not None:
                contenders["TensorFlow"] = tf
            for prec in args.precisions:
                resolved, fn = ours_runner(model, prec)
                contenders[resolved + (" (auto)" if prec == "auto" else "")] = fn
            for name in args.also:
                resolved, fn = ours_runner(name, "auto")
                contenders[f"{name} ({resolved}, auto)"] = fn
            timed = interleaved(contenders, args.sizes, args.warmup, args.runs)
        finally:
            if tf is not None:
                tf.close()
    tf_times = timed.pop("TensorFlow", None)
    if io is not None:
        parity = {"size": list(io["input"].shape[:2])}
        for name in timed:
            prec = name.split()[0]
            if prec not in ("fp32", "bf16", "fp16"):
                continue
            ours = official_uint8(model, io["input"], precision=prec)
            d = np.abs(ours.astype(np.int16) - io["output"].astype(np.int16))
            parity[prec] = {"max_levels": int(d.max()), "mean_levels": float(d.mean()),
                            "share_off": float((d > 0).mean())}
            print("parity %s vs TF (uint8, 512 px): max %d, mean %.2g" % (
                prec, parity[prec]["max_levels"], parity[prec]["mean_levels"]))

    rows = []
    for s in map(str, args.sizes):
        tf_ms = tf_times[s]["median_ms"] if tf_times else None
        for name, t in timed.items():
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
        "tensorflow": tf.info["tensorflow"] if tf is not None else None,
        "tf_model": tf.info["model"] if tf is not None else None,
        "weights": weights, "parity_512": parity, "rows": rows,
        "tf": tf_times, "ours": timed,
        "method": "interleaved: per size, warm-up calls of each side, then rounds in which TF and "
                  "each of ours run once in turn (50 ms pause between), medians of the rounds",
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "official_vs_tf.json").write_text(json.dumps(report, indent=1) + "\n")
    md = ["# Official DCT-Net c32 n4: dctnet_lite vs TensorFlow (CPU)", "",
          f"Machine: {report['machine']['cpu']}, {os.cpu_count()} cores, load before {load_before}; "
          f"{args.threads} threads each (TF: intra = inter = {args.threads}; torch.set_num_threads). "
          f"torch {torch.__version__}, TensorFlow {report['tensorflow'] or 'not run'}. "
          f"Median of {args.runs} interleaved rounds (TF and each of ours once per round) after "
          f"{args.warmup} warm-up runs each.", "",
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
