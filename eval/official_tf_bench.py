"""Time the official DCT-Net generator graph under TensorFlow (CPU), the reference the
imported PyTorch model is compared against.

Runs in a TensorFlow virtual environment of its own (TensorFlow is never a dependency
of dctnet_lite or of its test environment)::

    python3 -m venv "$TFVENV"      # any folder outside the checkout, e.g. TFVENV=~/tfvenv
    "$TFVENV"/bin/pip install tensorflow-cpu==2.21.0 tf-slim==1.1.0 numpy==2.4.6
    "$TFVENV"/bin/python eval/official_tf_bench.py --threads 2 \
        --out eval/reports/official_tf/tf_cpu.json \
        --save-graph official_c32_n4.pb --save-io official_c32_n4_io.npz

(measured with tensorflow-cpu 2.21.0, tf-slim 1.1.0, numpy 2.4.6, protobuf 7.36.2,
Python 3.11.7).

It builds the generator from ModelScope's own code (``unet_generator`` and
``guided_filter``, read as text from ModelScope's source folder and executed under
TF1-compat shims, see tests/fixtures/official/make_fixtures.py) at the released
configuration, channel=32 num_blocks=4 (random weights, seeded), frozen exactly as
ModelScope's CartoonTranslationExporter does (``input_image`` float32 [H, W, 3] BGR
0..255 -> ... -> ``output_image`` uint8). The frozen graph is imported into a fresh
graph (as ImageCartoonPipeline loads it) and timed in a Session with the given
intra/inter-op thread counts on square BGR inputs (default 512 and 1024 px): warm-up
runs, then the median and p90 of N timed ``sess.run`` calls (feed to uint8 fetch).

``--weights FILE.npz`` puts given weights into the frozen graph instead of the random ones: one
array per conv constant, named as in the graph (``generator/Conv/weights`` HWIO,
``generator/Conv/biases``, BGR order as ModelScope's graphs; written from a checkpoint by
``eval/official_vs_tf.py``'s ``export_tf_weights``, e.g. ``official_c32n4.toon``): every weights
and biases constant must be given, with its shape.

``--save-graph FILE.pb`` writes that c=32, n=4 frozen graph (about 6 MB; do not commit
it) for the PyTorch side to import and time on the same weights; ``--save-io FILE.npz``
saves one 512 px input (``input``, float32 HxWx3 BGR) and TF's output (``output``,
uint8) on it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures", "official"))
import make_fixtures as mf  # noqa: E402  (builder shared with the fixtures)
from official_common import bench_image, cpu_model  # noqa: E402


def set_weights(tf, graph_def, arrays):
    """Replace the frozen graph's conv constants (``*/weights``, ``*/biases``) by ``arrays``
    (name -> array); every one must be given with the same shape. Returns the graph def."""
    given = dict(arrays)
    consts = [n for n in graph_def.node if n.op == "Const" and n.name.endswith(("/weights", "/biases"))]
    missing = [n.name for n in consts if n.name not in given]
    extra = sorted(set(given) - {n.name for n in consts})
    if missing or extra:
        raise SystemExit("--weights does not match the graph: missing %s, unknown %s" % (missing[:3], extra[:3]))
    for n in consts:
        old = tf.make_ndarray(n.attr["value"].tensor)
        new = np.asarray(given[n.name], dtype=np.float32)
        if old.shape != new.shape:
            raise SystemExit("--weights: %s has shape %s, the graph %s" % (n.name, new.shape, old.shape))
        n.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(new))
    return graph_def


def time_graph(tf, graph_def, sizes, threads, inter, warmup, runs):
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    config = tf.ConfigProto(intra_op_parallelism_threads=threads,
                            inter_op_parallelism_threads=inter)
    results = {}
    with tf.Session(graph=graph, config=config) as sess:
        t_in = graph.get_tensor_by_name("input_image:0")
        t_out = graph.get_tensor_by_name("output_image:0")
        for size in sizes:
            x = bench_image(size)
            for _ in range(warmup):
                sess.run(t_out, feed_dict={t_in: x})
            ms = []
            for _ in range(runs):
                t0 = time.perf_counter()
                sess.run(t_out, feed_dict={t_in: x})
                ms.append((time.perf_counter() - t0) * 1000.0)
            results[str(size)] = {
                "median_ms": round(float(np.median(ms)), 2),
                "p90_ms": round(float(np.percentile(ms, 90)), 2),
                "min_ms": round(float(np.min(ms)), 2),
                "runs": runs, "warmup": warmup, "input": [size, size, 3]}
            print("%4d px: median %.1f ms, p90 %.1f ms (%d runs, %d/%d threads)" % (
                size, results[str(size)]["median_ms"], results[str(size)]["p90_ms"], runs,
                threads, inter))
    return results


def serve(tf, graph_def, sizes, threads, inter, warmup):
    """Interleaved timing for eval/official_vs_tf.py: warm up on every size, print ``READY``,
    then answer each line ``SIZE`` on stdin with one timed ``sess.run`` (ms) until ``quit``."""
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    config = tf.ConfigProto(intra_op_parallelism_threads=threads,
                            inter_op_parallelism_threads=inter)
    with tf.Session(graph=graph, config=config) as sess:
        t_in = graph.get_tensor_by_name("input_image:0")
        t_out = graph.get_tensor_by_name("output_image:0")
        inputs = {size: bench_image(size) for size in sizes}
        for size in sizes:
            for _ in range(warmup):
                sess.run(t_out, feed_dict={t_in: inputs[size]})
        print("READY", flush=True)
        for line in sys.stdin:
            cmd = line.strip()
            if cmd in ("", "quit"):
                break
            x = inputs[int(cmd)]
            t0 = time.perf_counter()
            sess.run(t_out, feed_dict={t_in: x})
            print("MS %.3f" % ((time.perf_counter() - t0) * 1000.0), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modelscope", metavar="DIR", default=None,
                    help="ModelScope's package folder (default: $MODELSCOPE_SRC or located "
                         "with the python3 on PATH)")
    ap.add_argument("--threads", type=int, default=2, help="intra- and inter-op threads")
    ap.add_argument("--inter-threads", type=int, default=None,
                    help="inter-op threads if different from --threads")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--channel", type=int, default=32)
    ap.add_argument("--num-blocks", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", metavar="FILE.npz", default=None,
                    help="conv weights to freeze into the graph instead of random ones (see above)")
    ap.add_argument("--out", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--save-graph", metavar="FILE.pb", help="write the frozen graph")
    ap.add_argument("--save-io", metavar="FILE.npz",
                    help="save one 512 px input and TF's uint8 output on it")
    ap.add_argument("--serve", action="store_true",
                    help="after warm-up, time one run per SIZE line on stdin (interleaved timing "
                         "driven by eval/official_vs_tf.py)")
    args = ap.parse_args(argv)

    load_before = [round(v, 2) for v in os.getloadavg()]
    tf, slim, tf2 = mf.load_tf()
    ms, _ = mf.load_modelscope_code(mf.find_modelscope(args.modelscope), tf, slim)
    gd, _ = mf.build_frozen(tf, ms, args.channel, args.num_blocks, args.seed)
    if args.weights:
        with np.load(args.weights) as arrays:
            gd = set_weights(tf, gd, {k: arrays[k] for k in arrays.files})
    weights = os.path.basename(args.weights) if args.weights else "random (seed %d)" % args.seed
    raw = gd.SerializeToString(deterministic=True)
    n_params = 0
    for n in gd.node:
        if n.op == "Const" and n.name.endswith(("/weights", "/biases")):
            n_params += int(np.prod([d.size for d in n.attr["value"].tensor.tensor_shape.dim]))
    if args.save_graph:
        with open(args.save_graph, "wb") as f:
            f.write(raw)
        print("wrote %s (%d bytes)" % (args.save_graph, len(raw)))
    if args.save_io:
        x = bench_image(512, seed=1)
        y = mf.run_graph(tf, gd, [x], threads=args.threads)[0]
        np.savez_compressed(args.save_io, input=x, output=y)
        print("wrote %s" % args.save_io)

    inter = args.inter_threads if args.inter_threads is not None else args.threads
    if args.serve:
        import importlib.metadata as md
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"tensorflow": tf2.__version__, "tf_slim": md.version("tf-slim"),
                           "threads": {"intra_op": args.threads, "inter_op": inter},
                           "model": {"channel": args.channel, "num_blocks": args.num_blocks,
                                     "seed": args.seed, "weights": weights, "graph_bytes": len(raw),
                                     "graph_sha256": hashlib.sha256(raw).hexdigest()}}, f, indent=1)
        serve(tf, gd, args.sizes, args.threads, inter, args.warmup)
        return 0
    results = time_graph(tf, gd, args.sizes, args.threads, inter, args.warmup, args.runs)

    import importlib.metadata as md
    report = {
        "what": "official DCT-Net generator graph (ModelScope unet_generator + guided_filter, "
                "frozen as CartoonTranslationExporter), random weights, under TensorFlow",
        "command": "python eval/official_tf_bench.py " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:])),
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(),
                    "loadavg_before": load_before,
                    "platform": platform.platform(), "python": platform.python_version()},
        "tensorflow": tf2.__version__, "tf_slim": md.version("tf-slim"),
        "numpy": np.__version__,
        "threads": {"intra_op": args.threads, "inter_op": inter},
        "model": {"channel": args.channel, "num_blocks": args.num_blocks, "seed": args.seed,
                  "weights": weights, "parameters": n_params, "graph_bytes": len(raw),
                  "graph_sha256": hashlib.sha256(raw).hexdigest(), "nodes": len(gd.node)},
        "input": "square BGR float32 HxWx3 0..255 fed to input_image:0, fetch output_image:0 "
                 "(uint8); one Session, warm-up then timed sess.run calls",
        "sizes": results,
    }
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
        print("wrote %s" % args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
