"""dctnet-lite: portrait cartoonization with two-branch DCT-Net at any width.

Each verb is a thin layer over a public Python function.

The light core is imported at the top; the tools of ``dctnet_lite.tools`` and ``dctnet_lite.train``
(and through them lightning, torch_pruning, lpips, modelscope, onnx) only inside the verbs that
need them, so ``dctnet-lite cartoonize`` stays light.

Errors: :func:`main` is the one place where an error becomes one line on stderr
(``dctnet-lite VERB: error: ...``, exit 1), for every verb including the ones handed to another
CLI (train, prune, eval); ``dctnet-lite --debug VERB ...`` or ``DCTNET_LITE_DEBUG=1`` prints the
full traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

from . import __version__
from .cards import update_cards, weights_markdown
from .checkpoint import CheckpointError, checkpoint_rows, resolve, verify_checkpoint
from .fileutil import atomic_write_bytes
from .machine import machine_info
from .model import ArchConfig
from .profile import model_info
from .render import ToonStyle, render_files
from .images import DEFAULT_MAX_PIXELS, ENV_MAX_PIXELS, max_pixels_limit
from .inference import RESIZE_MODES, DeviceUnavailable, resolve_device
from .memory import MemoryLimitError
from .pipeline import cartoonize_files
from .precision import ONNX_PRECISIONS, PRECISION_CHOICES, PRECISIONS

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CLIError(Exception):
    """An error to print as one clear line, without a traceback."""


#: Environment variable: ``1`` prints the full traceback of an error (as ``--debug`` does).
ENV_DEBUG = "DCTNET_LITE_DEBUG"
#: Errors of a known kind: their message is the line (anything else is named by its type too).
KNOWN_ERRORS = (CLIError, CheckpointError, DeviceUnavailable, MemoryLimitError, ValueError, OSError,
                MemoryError)
#: Known errors of packages imported lazily (by class name: Lightning's configuration errors).
KNOWN_ERROR_NAMES = {"MisconfigurationException"}


def _check_device(device: str) -> None:
    """``--device``: one line when it does not exist here (before any model is loaded)."""
    if device is not None and str(device) != "auto":
        resolve_device(device)


def check_torch_checkpoint(path, what: str = "checkpoint") -> Path:
    """A training checkpoint (``torch.save``'s zip archive, as Lightning writes) that exists and
    whose archive is whole (every entry's CRC checked): else :class:`CLIError` naming the file.
    Nothing is unpickled here."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CLIError(f"{what} {p}: no such file")
    if not p.is_file():
        raise CLIError(f"{what} {p}: not a file")
    try:
        if not zipfile.is_zipfile(p):
            raise CLIError(f"{what} {p}: not a PyTorch/Lightning checkpoint (no zip archive: truncated, "
                           f"damaged or another format)")
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
            if not any(n.endswith("data.pkl") for n in names):
                raise CLIError(f"{what} {p}: not a PyTorch/Lightning checkpoint (a zip archive without data.pkl)")
            bad = zf.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise CLIError(f"{what} {p}: a damaged checkpoint archive ({e})") from None
    except OSError as e:
        raise CLIError(f"{what} {p}: cannot be read ({e.strerror or e})") from None
    if bad is not None:
        raise CLIError(f"{what} {p}: damaged: the archive entry {bad} fails its CRC check")
    return p


def _first_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def error_line(e: BaseException) -> str:
    """The one line an error is printed as (without the ``dctnet-lite VERB: error:`` prefix):
    its message for a known kind of error, else its type and message and how to see the
    traceback."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, KNOWN_ERRORS + (KeyError,)) or type(e).__name__ in KNOWN_ERROR_NAMES:
        return _first_line(e)
    return f"{type(e).__name__}: {_first_line(e)} (run with --debug or {ENV_DEBUG}=1 for the traceback)"


def _add_cartoonize(sub) -> None:
    p = sub.add_parser("cartoonize", help="cartoonize image files, folders or globs",
                       description="Cartoonize portraits with a trained dctnet_lite checkpoint.")
    p.add_argument("inputs", nargs="+", help="image files, folders (recursive) or glob patterns")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--checkpoint", default=None, help="checkpoint name or path (default: the shipped one)")
    p.add_argument("--strength", type=float, default=1.0, help="style strength in [0, 1] (default 1)")
    p.add_argument("--size", type=int, default=None, help="longer side of the output in pixels")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=list(PRECISION_CHOICES),
                   help="auto (default): bf16 on a CUDA GPU with native bf16, else fp32")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tile", type=int, default=None, help="tile size for very large images")
    p.add_argument("--format", default="png", choices=["png", "jpg", "webp"], help="output format")
    p.add_argument("--png-level", type=int, default=6, choices=range(10), metavar="0-9",
                   help="PNG zlib level (default 6, Pillow's; 1 is about 3x faster, files ~20%% larger)")
    p.add_argument("--workers", type=int, default=None,
                   help="threads that read the next images and write the finished ones while the "
                        "model runs (default: up to 8 on CUDA, 1 on CPU; 0: none)")
    p.add_argument("--resize", default="auto", choices=list(RESIZE_MODES),
                   help="where --size scaling runs: host (Pillow Lanczos), device (bicubic, "
                        "antialiased, on the model's device); auto (default): device on CUDA")
    p.add_argument("--overwrite-inputs", action="store_true", help="allow an output to replace an input")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help=f"refuse images above N pixels (width x height), from the file's header "
                        f"(default ${ENV_MAX_PIXELS}, else {DEFAULT_MAX_PIXELS:,}; 0: no limit)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--cache", nargs="?", const="disk", default=None, metavar="DIR",
                   help="reuse the results of repeated requests from a result cache in DIR "
                        "(default: results/ under $DCTNET_LITE_CACHE, else ~/.cache/dctnet_lite); "
                        "off unless given. Write --cache=DIR, or put --cache after the inputs")
    p.add_argument("--no-cache", dest="cache", action="store_const", const=None,
                   help="no result cache (the default)")
    c = p.add_argument_group("compound system: a head model on every aligned face over a background "
                             "model, as ModelScope's DCT-Net pipeline (docs/compound.md)")
    c.add_argument("--head", default=None, metavar="CKPT", help="head model (turns the compound system on)")
    c.add_argument("--background", default=None, metavar="CKPT",
                   help="background model (default: --checkpoint, else the shipped one)")
    c.add_argument("--compound", action="store_true",
                   help="the shipped pair (no head model ships yet: the default checkpoint for both)")
    c.add_argument("--max-side", type=int, default=None, metavar="PX",
                   help="run the networks with the shorter side at most PX (720: ModelScope's), "
                        "the result scaled back; default: the input's resolution")
    c.add_argument("--min-face", type=int, default=None, metavar="PX",
                   help="faces smaller than PX are left to the background model (default 40)")
    d = p.add_argument_group("distributed prediction (Lightning Trainer.predict; used when "
                             "--devices > 1, --num-nodes > 1 or --strategy is given)")
    d.add_argument("--devices", type=int, default=None, help="processes / GPUs per node")
    d.add_argument("--strategy", default=None, help="ddp (default for several devices), ddp_spawn, ...")
    d.add_argument("--accelerator", default="auto", help="auto, cpu or gpu")
    d.add_argument("--num-nodes", type=int, default=1, help="machines (with ddp)")
    p.set_defaults(func=_cmd_cartoonize)


def _pillow_limit(max_pixels):
    """Let Pillow open what our own limit allows (its bomb check refuses above about 179 MP)."""
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    limit = max_pixels_limit(max_pixels)
    if limit is None:
        Image.MAX_IMAGE_PIXELS = None
    elif previous is not None and limit > previous:
        Image.MAX_IMAGE_PIXELS = limit
    return previous


def _cmd_cartoonize(a) -> int:
    from PIL import Image

    if not 0.0 <= a.strength <= 1.0:
        raise CLIError(f"--strength must lie in [0, 1], got {a.strength}")
    if a.max_pixels is not None and a.max_pixels < 0:
        raise CLIError(f"--max-pixels must be >= 0 (0: no limit), got {a.max_pixels}")
    previous = _pillow_limit(a.max_pixels)
    try:
        with warnings.catch_warnings():  # our pixel limit decides; Pillow's bomb warning is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _run_cartoonize(a)
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _run_compound(a):
    from .compound import cartoonize_files_compound
    from .face import DEFAULT_MIN_FACE, FaceDetectorUnavailable

    if (a.devices or 1) > 1 or a.num_nodes > 1 or a.strategy:
        raise CLIError("the compound system runs in one process: drop --devices/--num-nodes/--strategy")
    if a.cache or a.resize == "device":
        raise CLIError("--cache and --resize device do not work with --compound/--head/--background")
    _check_device(a.device)
    try:
        return cartoonize_files_compound(
            a.inputs, a.output, head=a.head, background=a.background or a.checkpoint,
            min_face=DEFAULT_MIN_FACE if a.min_face is None else a.min_face, max_side=a.max_side,
            strength=a.strength, size=a.size, device=a.device, precision=a.precision,
            batch_size=a.batch_size, tile=a.tile, ext="." + a.format, overwrite_inputs=a.overwrite_inputs,
            workers=a.workers, png_level=a.png_level, max_pixels=a.max_pixels)
    except FaceDetectorUnavailable as e:
        raise CLIError(str(e)) from None


def _run_cartoonize(a) -> int:
    if a.compound or a.head is not None or a.background is not None:
        report = _run_compound(a)
    elif a.max_side is not None or a.min_face is not None:
        raise CLIError("--max-side and --min-face belong to the compound system: add --compound or --head")
    elif (a.devices or 1) > 1 or a.num_nodes > 1 or a.strategy:
        from .tools.predict import predict_files

        if a.cache:
            raise CLIError("--cache works in single-process runs only, not with --devices/--strategy")
        if a.resize == "device":
            raise CLIError("--resize device works in single-process runs only: with --devices/--strategy "
                           "the data loader workers resize on the host")
        report = predict_files(a.inputs, a.output, a.checkpoint, devices=a.devices or 1,
                               strategy=a.strategy or "auto", accelerator=a.accelerator,
                               num_nodes=a.num_nodes, strength=a.strength, size=a.size,
                               batch_size=a.batch_size, precision=a.precision, tile=a.tile,
                               ext="." + a.format, overwrite_inputs=a.overwrite_inputs,
                               num_workers=a.workers or 0, png_level=a.png_level)
        if report.global_rank != 0:  # every rank has the whole report; rank 0 prints it
            return EXIT_FAILED if report.failed else EXIT_OK
    else:
        _check_device(a.device)
        report = cartoonize_files(a.inputs, a.output, checkpoint=a.checkpoint, strength=a.strength,
                                  size=a.size, device=a.device, precision=a.precision,
                                  batch_size=a.batch_size, tile=a.tile, ext="." + a.format,
                                  overwrite_inputs=a.overwrite_inputs, cache=a.cache,
                                  workers=a.workers, png_level=a.png_level, resize=a.resize,
                                  max_pixels=a.max_pixels)
    if a.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"wrote {len(report.ok)} image(s) to {a.output} in {report.seconds:.2f} s")
    for path, note in getattr(report, "warnings", []):
        print(f"WARNING {path}: {note}", file=sys.stderr)
    for path, why in report.failed:
        print(f"FAILED {path}: {why}", file=sys.stderr)
    if report.failed:
        print(f"{len(report.failed)} input(s) failed", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="parameters and MACs of an architecture, a width or a checkpoint")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--width", type=int, default=None, help="base width of the two-branch family (default 64)")
    g.add_argument("--arch", default=None, help="a registered architecture name, e.g. dctnet_w48")
    g.add_argument("--checkpoint", default=None, help="checkpoint name or path")
    p.add_argument("--resolution", type=int, default=1024, help="square input size in pixels")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)


def _cmd_info(a) -> int:

    ckpt = None
    if a.checkpoint:
        # the sha256 of its tensors and that they fit the declared architecture: a broken file
        # is an error (exit 1), never printed as if valid
        ckpt = verify_checkpoint(resolve(a.checkpoint))
        arch = ckpt.arch
    elif a.arch:
        arch = a.arch
    else:
        arch = ArchConfig.from_width(a.width or 64)
    info = model_info(arch, a.resolution)
    if ckpt is not None:
        info.update(checkpoint=str(ckpt.path), name=ckpt.name, dtype=ckpt.dtype, provenance=ckpt.provenance,
                    metrics=ckpt.metrics, weights=ckpt.weights.to_dict() if ckpt.weights else None)
    if a.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return EXIT_OK
    print(f"architecture : {info['family']}, {info['description']}")
    if ckpt is not None:
        print(f"checkpoint   : {ckpt.name}: {ckpt.path} ({ckpt.dtype})")
    print(f"parameters   : {info['params']:,} ({info['fp16_megabytes']} MB in fp16)")
    print(f"MACs @ {a.resolution}px: {info['gmacs']:.2f} G")
    return EXIT_OK


def _add_checkpoints(sub) -> None:
    p = sub.add_parser("checkpoints", help="the shipped weights (the registry's table) and other checkpoints found",
                       description="List the shipped weights of the registry's one table (name, architecture, "
                                   "where each was found or that it is missing) and any other checkpoint in the "
                                   "$DCTNET_LITE_CHECKPOINTS folders.")
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", action="store_true", help="print the weights table as Markdown (the cards' table)")
    p.add_argument("--update-cards", nargs="+", metavar="FILE", default=None,
                   help="rewrite the generated weights table inside these Markdown files")
    p.set_defaults(func=_cmd_checkpoints)


def _cmd_checkpoints(a) -> int:

    if a.update_cards:
        for f in a.update_cards:
            print(f"{f}: {'updated' if update_cards(f) else 'already up to date'}")
        return EXIT_OK
    if a.markdown:
        print(weights_markdown())
        return EXIT_OK
    rows = checkpoint_rows()
    broken = [r for r in rows if r.get("status") == "broken"]
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            if r.get("status") == "broken":
                where = f"BROKEN {r['path'] or ''}".rstrip()
            else:
                where = r["path"] or "MISSING (" + r["how_to_get"] + ")"
            default = " (default)" if r.get("default") else ""
            print(f"{r['name'] + default:<26} {r['family'] or '-':<8} {r['arch_description'] or '-':<34} {where}")
    for r in broken:
        print(f"dctnet-lite checkpoints: BROKEN {r['name']}: {r['problem']}", file=sys.stderr)
    return EXIT_FAILED if broken else EXIT_OK


#: dctnet_lite.tools.bench.BACKENDS (not imported here: the CLI stays light)
BENCH_BACKENDS = ("eager", "channels_last", "compile", "compile-max-autotune", "onnxruntime", "cudagraphs")


def _add_variant_args(p, default_precisions: List[str]) -> None:
    """Targets and fast-path variants shared by ``bench`` and ``accuracy``."""
    p.add_argument("--checkpoint", nargs="+", default=[],
                   help="checkpoint names or paths; an INT8 artefact (.onnx of `dctnet-lite quantize`) "
                        "runs at int8 on onnxruntime whatever --precision/--backend say")
    p.add_argument("--width", nargs="+", type=int, default=[], help="base widths (random init)")
    p.add_argument("--precision", nargs="+", default=default_precisions, choices=list(PRECISIONS))
    p.add_argument("--backend", nargs="+", default=["eager"], choices=list(BENCH_BACKENDS),
                   help="compile-max-autotune: torch.compile(mode='max-autotune') (minutes on a small "
                        "CPU); onnxruntime: the fp32 ONNX export, cached (needs the [onnx] extra)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")


def _variant_targets(a) -> list:
    targets = list(a.checkpoint) + list(a.width)
    if not targets:
        raise CLIError("give --checkpoint NAME/PATH ... and/or --width N ...")
    return targets


def _emit_json(a, result: dict, table: str) -> None:
    """Write ``result`` to ``--output`` (atomically) if given; print it (``--json``) or ``table``.
    Absolute paths (checkpoints, photo folders) are stored portably, as in eval's reports."""
    from .tools.recipes import portable_tree  # bench/accuracy verbs only: the tools are loaded already

    text = json.dumps(portable_tree(result), indent=2)
    if a.output:
        atomic_write_bytes(a.output, (text + "\n").encode())
    print(text if a.json else table)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="latency, throughput, memory and cold start on this machine",
                       description="Benchmark checkpoints or random-init widths (see eval/README.md).")
    _add_variant_args(p, ["fp32"])
    p.add_argument("--resolutions", nargs="+", type=int, default=[256, 512, 1024])
    p.add_argument("--batch", nargs="+", type=int, default=[1])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-cold-start", action="store_true", help="skip the subprocess cold-start run")
    p.add_argument("--no-peak", action="store_true",
                   help="skip the matmul peak measurement (peak_fraction then n/a)")
    p.add_argument("--interleave", action="store_true",
                   help="time the targets of each configuration round-robin (one call of each per "
                        "round) instead of one after another: steadier ratios between targets")
    p.add_argument("--files", default=None, metavar="DIR",
                   help="also time file-to-file (decode, model, encode) on these photos, per target, "
                        "with the first precision and backend")
    p.add_argument("--files-size", type=int, default=1024, help="longer side for --files (default 1024)")
    p.add_argument("--files-limit", type=int, default=8, help="photos for --files (default 8)")
    p.add_argument("--files-resize", default="auto", choices=list(RESIZE_MODES),
                   help="where --files scaling runs (see cartoonize --resize)")
    p.add_argument("--files-workers", type=int, default=None,
                   help="reader/writer threads of the overlapped --files run (default as cartoonize)")
    p.add_argument("--files-png-level", type=int, default=6, choices=range(10), metavar="0-9",
                   help="PNG zlib level of --files outputs (default 6)")
    p.add_argument("--output", default=None, help="also write the JSON here (for a report's extra_bench)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(a) -> int:
    from .tools.bench import bench, file_to_file, format_file_to_file, format_table

    targets = _variant_targets(a)
    _check_device(a.device)
    result = bench(targets, resolutions=a.resolutions, batches=a.batch, precisions=a.precision,
                   backends=a.backend, device=a.device, threads=a.threads, warmup=a.warmup,
                   repeats=a.repeats, cold_start=not a.no_cold_start, progress=sys.stderr.isatty(),
                   peak=not a.no_peak, interleave=a.interleave)
    if a.files:
        result["file_to_file"] = [file_to_file(t, a.files, size=a.files_size, device=a.device,
                                               precision=a.precision[0], backend=a.backend[0],
                                               limit=a.files_limit, threads=a.threads,
                                               resize=a.files_resize, workers=a.files_workers,
                                               png_level=a.files_png_level) for t in targets]
    _emit_json(a, result, "\n".join([format_table(result)] +
                                     [format_file_to_file(r) for r in result.get("file_to_file", [])]))
    return EXIT_FAILED if any("error" in r for r in result["rows"]) else EXIT_OK


def _add_accuracy(sub) -> None:
    p = sub.add_parser("accuracy", help="fast-path variants (precision x backend) against fp32 on photos",
                       description="Compare each precision x backend with the fp32 eager output (TF32 off) "
                                   "on real photos: max/mean abs error, relative L2, LPIPS; exit 1 when a "
                                   "variant is outside dctnet_lite.tools.accuracy.BOUNDS or fails.")
    _add_variant_args(p, list(PRECISIONS))
    p.add_argument("--images", required=True, help="folder (recursive) or file of photos")
    p.add_argument("--split", default=None, help="keep one split of the photos (e.g. val)")
    p.add_argument("--limit", type=int, default=8, help="first N photos (default 8)")
    p.add_argument("--size", type=int, default=512, help="longer side in px (default 512)")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (no lpips package needed)")
    p.add_argument("--parent", default=None, metavar="CKPT",
                   help="an INT8 artefact's parent checkpoint (default: found by the name and sha256 "
                        "in its metadata)")
    p.add_argument("--max-lpips", type=float, default=None, metavar="X",
                   help="LPIPS (alex) bound for every variant instead of the per-precision BOUNDS")
    p.add_argument("--output", default=None, help="also write the JSON here")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_accuracy)


def _cmd_accuracy(a) -> int:
    from .tools.accuracy import format_accuracy, variant_accuracy

    _check_device(a.device)
    results = [variant_accuracy(t, a.images, precisions=a.precision, backends=a.backend, device=a.device,
                                size=a.size, limit=a.limit, strength=a.strength, lpips=not a.no_lpips,
                                split=a.split, parent=a.parent, max_lpips=a.max_lpips)
               for t in _variant_targets(a)]
    out = {"schema": "dctnet-lite-accuracy/1", "machine": machine_info(results[0]["device"]),
           "results": results}
    _emit_json(a, out, "\n".join(format_accuracy(r) for r in results))
    rows = [r for res in results for r in res["rows"]]
    return EXIT_FAILED if any("error" in r or r.get("within_bounds", False) is False for r in rows) else EXIT_OK


def _add_export_modelscope(sub) -> None:
    p = sub.add_parser("export-modelscope", help="write a ModelScope model folder for a checkpoint",
                       description="Write configuration.json + model.safetensors so that modelscope's "
                                   "pipeline('image-portrait-stylization', model=DIR) runs the checkpoint "
                                   "after `import dctnet_lite.tools.modelscope_pipeline` (docs/serving.md).")
    p.add_argument("checkpoint", help="checkpoint name or path")
    p.add_argument("dir", help="output folder")
    p.add_argument("--remote-code", action="store_true",
                   help='set "allow_remote": true: pipeline(..., trust_remote_code=True) then imports '
                        "the registration itself")
    p.add_argument("--head", default=None, metavar="CKPT",
                   help="a compound folder: this head model over CHECKPOINT as the background "
                        "(dctnet_lite.tools.modelscope_compound; docs/compound.md)")
    p.set_defaults(func=_cmd_export_modelscope)


def _cmd_export_modelscope(a) -> int:
    from .tools.modelscope_pipeline import export_modelscope

    if a.head is not None:
        from .tools.modelscope_compound import export_modelscope_compound

        print(f"wrote {export_modelscope_compound(a.head, a.checkpoint, a.dir, remote_code=a.remote_code)}")
        return EXIT_OK
    out = export_modelscope(a.checkpoint, a.dir, remote_code=a.remote_code)
    print(f"wrote {out}")
    return EXIT_OK


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="turn a Lightning training checkpoint into a shipped checkpoint")
    p.add_argument("ckpt", help="Lightning .ckpt written by `dctnet-lite train`")
    p.add_argument("-o", "--output", required=True, help="output .safetensors path")
    p.add_argument("--dtype", default="fp16", choices=list(PRECISIONS))
    p.add_argument("--no-ema", action="store_true", help="export the raw student instead of its EMA")
    p.add_argument("--metrics", default=None, help="JSON file of extra metrics to store")
    p.set_defaults(func=_cmd_export)


def _cmd_export(a) -> int:
    import pickle

    from .train.export import export_checkpoint

    check_torch_checkpoint(a.ckpt, "training checkpoint")
    try:
        metrics = json.loads(Path(a.metrics).read_text()) if a.metrics else None
    except (OSError, ValueError) as e:
        raise CLIError(f"--metrics {a.metrics}: not a readable JSON file ({_first_line(e)})") from None
    try:
        info = export_checkpoint(a.ckpt, a.output, dtype=a.dtype, use_ema=not a.no_ema, metrics=metrics)
    except CheckpointError:
        raise
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, AttributeError, TypeError,
            IndexError) as e:  # torch.load(weights_only=True) refusing or failing on the file
        raise CLIError(f"training checkpoint {a.ckpt}: cannot be exported ({type(e).__name__}: "
                       f"{_first_line(e)})") from None
    print(f"wrote {info.path} ({info.arch.describe()}, {info.dtype}, "
          f"{info.provenance.get('steps')} steps, weights: {info.provenance.get('weights')})")
    return EXIT_OK


def _add_render(sub) -> None:
    p = sub.add_parser("render", help="classical toon renderer (the teacher's teacher and a baseline)")
    p.add_argument("inputs", nargs="+", help="image files, folders (recursive) or glob patterns")
    p.add_argument("-o", "--output", required=True, help="output folder (PNG files)")
    p.add_argument("--strength", type=float, default=1.0, help="(1 - s) * photo + s * toon")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every radius (about 2 for 1024 px faces)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_render)


def _cmd_render(a) -> int:

    report = render_files(a.inputs, a.output, style=ToonStyle(scale=a.scale), strength=a.strength,
                          overwrite=a.overwrite)
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"rendered {len(report['ok'])} image(s) to {a.output} in {report['seconds']:.2f} s"
              + (f"; {len(report['skipped'])} existing output(s) kept" if report["skipped"] else ""))
    for path, why in report["failed"]:
        print(f"FAILED {path}: {why}", file=sys.stderr)
    return EXIT_FAILED if report["failed"] else EXIT_OK


VERBS: List[Callable] = [_add_cartoonize, _add_render, _add_info, _add_checkpoints, _add_export, _add_bench, _add_accuracy,
                         _add_export_modelscope]

def _add_export_onnx(sub) -> None:
    p = sub.add_parser("export-onnx", help="export a checkpoint to ONNX (any batch/height/width)",
                       description="Write an ONNX graph: image (B,3,H,W) RGB in [0,1] and strength (B,) "
                                   "-> cartoon (B,3,H,W) in [0,1]; needs pip install 'dctnet-lite[onnx]'.")
    p.add_argument("--checkpoint", required=True, help="checkpoint name or path")
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--precision", default="fp32", choices=list(ONNX_PRECISIONS), help="network precision")
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"],
                   help="torch.onnx exporter (default dynamo; torchscript is the deprecated legacy one)")
    p.add_argument("--static", nargs=3, type=int, default=None, metavar=("B", "H", "W"),
                   help="fixed input shape instead of dynamic batch/height/width")
    p.add_argument("--check", action="store_true",
                   help="run the file with ONNX Runtime (CPU) and compare with PyTorch")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_export_onnx)


def _cmd_export_onnx(a) -> int:
    import time

    import importlib.util

    needed = ["onnx"] + (["onnxscript"] if a.exporter == "dynamo" else []) + (["onnxruntime"] if a.check else [])
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:  # optional dependencies: one line instead of a traceback
        raise CLIError(f"missing {', '.join(missing)}: pip install 'dctnet-lite[onnx]'")
    from .tools.onnx_export import check_onnx, export_onnx

    t0 = time.perf_counter()
    out = export_onnx(a.checkpoint, a.output, opset=a.opset, precision=a.precision, exporter=a.exporter,
                      dynamic=a.static is None, **({"static_shape": tuple(a.static)} if a.static else {}))
    result = {"output": str(out), "seconds": round(time.perf_counter() - t0, 2)}
    if a.check:
        sizes = [tuple(a.static[1:])] if a.static else [(64, 64), (48, 80)]
        strength = [1.0] * a.static[0] if a.static else (1.0, 0.5)
        result["check"] = check_onnx(out, a.checkpoint, sizes=sizes, strength=strength)
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"wrote {out} in {result['seconds']:.1f} s")
        c = result.get("check")
        if c:
            print(f"check (onnxruntime {c['onnxruntime']}, CPU): max abs error {c['max_abs_error']:.2e}, "
                  f"mean {c['mean_abs_error']:.2e} (tolerance {c['tolerance']:.0e}): "
                  + ("ok" if c["ok"] else "FAILED"))
    return EXIT_FAILED if "check" in result and not result["check"]["ok"] else EXIT_OK


VERBS.append(_add_export_onnx)


def _add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="INT8 post-training static quantization from calibration photos",
                       description="Write an INT8 artefact (an ONNX file; ONNX Runtime's quantize_static, "
                                   "calibrated on the training split of DIR) that Cartoonizer, cartoonize, "
                                   "bench and accuracy load; its metadata names the parent, the calibration "
                                   "photos and the accuracy measured on the val split (docs/cpu.md). Needs "
                                   "pip install 'dctnet-lite[onnx]'.")
    p.add_argument("--checkpoint", required=True, help="checkpoint name or path (the parent)")
    p.add_argument("--calibration", required=True, metavar="DIR",
                   help="photo folder: its training split calibrates, its val split measures")
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    p.add_argument("--calib-images", type=int, default=16, metavar="N", help="calibration photos (default 16)")
    p.add_argument("--calib-size", type=int, default=512, metavar="S",
                   help="side of the square calibration crops in px (default 512)")
    p.add_argument("--method", default="minmax", choices=["minmax", "percentile", "entropy"],
                   help="calibration method (default minmax)")
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weights (default: per channel)")
    p.add_argument("--int8-output-conv", action="store_true",
                   help="quantize the last conv (to RGB) too (default: it stays float, for accuracy)")
    p.add_argument("--val-images", default=None, metavar="DIR",
                   help="photos whose val split measures the accuracy (default: --calibration)")
    p.add_argument("--val-limit", type=int, default=None, metavar="N", help="at most N val photos")
    p.add_argument("--no-measure", action="store_true", help="do not measure the accuracy")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    p.set_defaults(func=_cmd_quantize)


def _cmd_quantize(a) -> int:
    try:
        from .tools.quantize import format_quantize, quantize

        res = quantize(a.checkpoint, a.calibration, a.output, calib_images=a.calib_images,
                       calib_size=a.calib_size, method=a.method, per_channel=not a.per_tensor,
                       float_output_conv=not a.int8_output_conv,
                       measure=not a.no_measure, val_images=a.val_images, val_limit=a.val_limit,
                       threads=a.threads)
    except ImportError as e:
        raise CLIError(str(e)) from None
    print(json.dumps(res, indent=2) if a.json else format_quantize(res))
    acc = res["metadata"].get("accuracy", {})
    return EXIT_FAILED if acc.get("measured") and acc.get("within_bounds") is False else EXIT_OK


VERBS.append(_add_quantize)


def _add_import_modelscope(sub) -> None:
    p = sub.add_parser("import-modelscope", help="import ModelScope's DCT-Net graphs (.pb) as checkpoints",
                       description="Turn ModelScope's DCT-Net TF graphs into 'official' family checkpoints "
                                   "(no TensorFlow needed). SOURCE: a ModelScope model folder (one "
                                   "checkpoint per graph into the folder OUT: head, background), one "
                                   ".pb file (OUT: the .safetensors path) or a model id (downloaded; "
                                   "online only).")
    p.add_argument("source", help="model folder, .pb file or ModelScope model id")
    p.add_argument("-o", "--output", required=True, help="output folder (model folder/id) or .safetensors path (.pb)")
    p.add_argument("--model-id", default=None, help="model id to record in the provenance (for a local folder)")
    p.add_argument("--style", default=None, help="style to record (default: from configuration.json)")
    p.set_defaults(func=_cmd_import_modelscope)


def _cmd_import_modelscope(a) -> int:
    from .tools.import_modelscope import import_modelscope

    for item in import_modelscope(a.source, a.output, model_id=a.model_id, style=a.style):
        print(f"wrote {item.path} ({item.config.describe()}, from {item.source_file}"
              + (f", {item.role}" if item.role else "") + ")")
    return EXIT_OK


VERBS.append(_add_import_modelscope)

def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="the resident web service: a page, an HTTP API, metrics (docs/serving.md)",
                       description="Serve cartoonization over HTTP (FastAPI + uvicorn; needs the [serve] "
                                   "extra): the page at /, POST /v1/cartoonize, /v1/cartoonize/batch, "
                                   "/v1/checkpoints, /healthz, /metrics, /docs. SIGTERM finishes the "
                                   "requests in flight, then exits 0.")
    p.add_argument("--checkpoint", action="append", default=None, metavar="NAME|PATH",
                   help="a checkpoint to load (repeat for several; the first is the default of a request; "
                        "default: the shipped one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=list(PRECISION_CHOICES))
    p.add_argument("--cache", default=None, metavar="disk[:DIR]|memory|redis://HOST:PORT/DB",
                   help="result cache (default: none)")
    p.add_argument("--cache-ttl", type=int, default=7 * 86400, metavar="S", help="Redis entry lifetime (default 1 week)")
    p.add_argument("--cache-max-mb", type=int, default=1024, metavar="MB", help="disk/memory cache bound (default 1024)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N", help="images per forward (1: no batching; default 8)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, metavar="T",
                   help="how long an image waits for companions of its size (default 5)")
    p.add_argument("--max-upload-mb", type=float, default=32.0, metavar="MB", help="request body limit (default 32)")
    p.add_argument("--max-pixels", type=int, default=16_000_000, metavar="N",
                   help="pixel limit of an upload (from its header) and of an output (default 16000000; 0: none)")
    p.add_argument("--max-concurrency", type=int, default=16, metavar="N", help="images in processing at once (default 16)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N", help="images waiting beyond that; more get 429 (default 64)")
    p.add_argument("--max-files", type=int, default=16, metavar="N", help="images per batch request (default 16)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="per-request limit; beyond it 503 (default 60)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="decode/encode threads (default min(4, CPUs))")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch intra-op threads (default torch's)")
    p.add_argument("--head", default=None, metavar="CKPT", help="also serve the compound system, this head model")
    p.add_argument("--background", default=None, metavar="CKPT",
                   help="background model of the compound system (default: the first --checkpoint)")
    p.add_argument("--compound", action="store_true", help="also serve the compound system (model name: compound)")
    p.add_argument("--min-face", type=int, default=None, metavar="PX", help="compound: smallest face (default 40)")
    p.add_argument("--max-side", type=int, default=None, metavar="PX", help="compound: working size (720: ModelScope's)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(a) -> int:
    try:
        from .serve import ServeConfig, serve
    except ImportError as e:
        raise CLIError(f"dctnet-lite serve needs the [serve] extra: pip install 'dctnet-lite[serve]' ({e})") from None
    _check_device(a.device)
    config = ServeConfig(
        checkpoints=a.checkpoint or (), device=a.device, precision=a.precision, cache=a.cache,
        cache_ttl=a.cache_ttl, cache_max_bytes=a.cache_max_mb << 20, max_batch=a.max_batch,
        max_wait_ms=a.max_wait_ms, max_upload_bytes=int(a.max_upload_mb * (1 << 20)), max_pixels=a.max_pixels,
        max_concurrency=a.max_concurrency, max_queue=a.max_queue, max_files=a.max_files, timeout_s=a.timeout,
        workers=a.workers, threads=a.threads, compound=a.compound, head=a.head, background=a.background,
        min_face=a.min_face, max_side=a.max_side)
    return serve(config.check(), host=a.host, port=a.port, log_level=a.log_level)


VERBS.append(_add_serve)

#: Verbs whose arguments go unparsed to another CLI (LightningCLI): verb -> (module, function, help).
PASSTHROUGH: Dict[str, tuple] = {
    "train": ("dctnet_lite.train.cli", "train_main",
              "train or distil with a LightningCLI recipe (--config finetune/*.yaml)"),
    "prune": ("dctnet_lite.tools.prune", "cli_main",
              "structured channel pruning to a smaller plain checkpoint (--config prune/*.yaml)"),
    "eval": ("dctnet_lite.tools.report", "cli_main",
             "quality-vs-latency report from a recipe (--config eval/*.yaml)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dctnet-lite", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dctnet-lite {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for add in VERBS:
        add(sub)
    for verb, (_, _, help_text) in PASSTHROUGH.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    return parser


#: Lightning's own values of ``--ckpt_path`` (not files)
_CKPT_PATH_WORDS = {"last", "best", "hpc", "registry", "null", "none"}


def _check_passthrough(verb: str, argv: List[str]) -> None:
    """What the CLI layer checks before handing a verb to another CLI: a ``train --ckpt_path``
    that names a file must be a whole PyTorch checkpoint (one line now, not a traceback after
    the model and data are built)."""
    if verb != "train":
        return
    for i, arg in enumerate(argv):
        value = None
        if arg == "--ckpt_path" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--ckpt_path="):
            value = arg.split("=", 1)[1]
        if value and value.lower() not in _CKPT_PATH_WORDS and not value.startswith("registry:"):
            check_torch_checkpoint(value, "--ckpt_path")


def _debug_requested(argv: List[str]) -> bool:
    """``--debug`` before the verb (removed from ``argv``) or ``$DCTNET_LITE_DEBUG`` set."""
    debug = os.environ.get(ENV_DEBUG, "").strip().lower() not in ("", "0", "false", "no")
    while argv and argv[0] == "--debug":
        argv.pop(0)
        debug = True
    return debug


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = _debug_requested(argv)
    verb = argv[0] if argv else ""
    # deprecation notes (old checkpoint names) as one line each, not a source excerpt; restored
    # afterwards, so a caller of main() (a test, a script) keeps its own warning format
    previous = warnings.formatwarning
    warnings.formatwarning = lambda msg, cat, *_a, **_k: f"dctnet-lite: {cat.__name__}: {msg}\n"
    try:
        if verb in PASSTHROUGH:
            import importlib

            _check_passthrough(verb, argv[1:])
            module, func, _ = PASSTHROUGH[verb]
            return getattr(importlib.import_module(module), func)(argv[1:])
        args = build_parser().parse_args(argv)
        verb = args.verb
        return args.func(args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # the one place an error becomes one line
        if debug:
            traceback.print_exc()
        print(f"dctnet-lite {verb}: error: {error_line(e)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        warnings.formatwarning = previous


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
