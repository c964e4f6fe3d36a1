"""dctnet-lite: portrait cartoonization with two-branch DCT-Net at any width.

Each verb is a thin layer over a public Python function.

Heavy dependencies (lightning, torch_pruning, lpips, modelscope) are imported inside the verbs
that need them, so ``dctnet-lite cartoonize`` stays light.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Dict, List, Optional

from . import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CLIError(Exception):
    """An error to print as one clear line, without a traceback."""


def _add_cartoonize(sub) -> None:
    p = sub.add_parser("cartoonize", help="cartoonize image files, folders or globs",
                       description="Cartoonize portraits with a trained dctnet_lite checkpoint.")
    p.add_argument("inputs", nargs="+", help="image files, folders (recursive) or glob patterns")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--checkpoint", default=None, help="checkpoint name or path (default: the shipped one)")
    p.add_argument("--strength", type=float, default=1.0, help="style strength in [0, 1] (default 1)")
    p.add_argument("--size", type=int, default=None, help="longer side of the output in pixels")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tile", type=int, default=None, help="tile size for very large images")
    p.add_argument("--format", default="png", choices=["png", "jpg", "webp"], help="output format")
    p.add_argument("--overwrite-inputs", action="store_true", help="allow an output to replace an input")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_cartoonize)


def _cmd_cartoonize(a) -> int:
    from .inference import cartoonize_files

    if not 0.0 <= a.strength <= 1.0:
        raise CLIError(f"--strength must lie in [0, 1], got {a.strength}")
    report = cartoonize_files(a.inputs, a.output, checkpoint=a.checkpoint, strength=a.strength,
                              size=a.size, device=a.device, precision=a.precision,
                              batch_size=a.batch_size, tile=a.tile, ext="." + a.format,
                              overwrite_inputs=a.overwrite_inputs)
    if a.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"wrote {len(report.ok)} image(s) to {a.output} in {report.seconds:.2f} s")
    for path, why in report.failed:
        print(f"FAILED {path}: {why}", file=sys.stderr)
    if report.failed:
        print(f"{len(report.failed)} input(s) failed", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="parameters and MACs of a width or a checkpoint")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--width", type=int, default=None, help="base width (default 64)")
    g.add_argument("--checkpoint", default=None, help="checkpoint name or path")
    p.add_argument("--resolution", type=int, default=1024, help="square input size in pixels")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)


def _cmd_info(a) -> int:
    from .checkpoint import read_info, resolve
    from .model import ArchConfig
    from .profile import model_info

    ckpt = None
    if a.checkpoint:
        ckpt = read_info(resolve(a.checkpoint))
        arch = ckpt.arch
    else:
        arch = ArchConfig.from_width(a.width or 64)
    info = model_info(arch, a.resolution)
    if ckpt is not None:
        info.update(checkpoint=str(ckpt.path), dtype=ckpt.dtype, provenance=ckpt.provenance,
                    metrics=ckpt.metrics)
    if a.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return EXIT_OK
    print(f"architecture : {info['description']}")
    if ckpt is not None:
        print(f"checkpoint   : {ckpt.path} ({ckpt.dtype})")
    print(f"parameters   : {info['params']:,} ({info['fp16_megabytes']} MB in fp16)")
    print(f"MACs @ {a.resolution}px: {info['gmacs']:.2f} G")
    return EXIT_OK


def _add_checkpoints(sub) -> None:
    p = sub.add_parser("checkpoints", help="list the named checkpoints")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_checkpoints)


def _cmd_checkpoints(a) -> int:
    from .checkpoint import checkpoint_dirs, list_checkpoints

    rows = [{"name": c.name, "path": str(c.path), "arch": c.arch.describe(), "dtype": c.dtype,
             "metrics": c.metrics} for c in list_checkpoints()]
    if a.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no checkpoints found in " + ", ".join(str(d) for d in checkpoint_dirs()))
    else:
        for r in rows:
            print(f"{r['name']:<16} {r['arch']:<40} {r['dtype']:<5} {r['path']}")
    return EXIT_OK


VERBS: List[Callable] = [_add_cartoonize, _add_info, _add_checkpoints]

#: Verbs whose arguments go unparsed to another CLI (LightningCLI): verb -> (module, function, help).
PASSTHROUGH: Dict[str, tuple] = {
    "train": ("dctnet_lite.train.cli", "train_main",
              "train or distil with a LightningCLI recipe (--config finetune/*.yaml)"),
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


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASSTHROUGH:
        import importlib

        module, func, _ = PASSTHROUGH[argv[0]]
        return getattr(importlib.import_module(module), func)(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    from .checkpoint import CheckpointError

    try:
        return args.func(args)
    except (CLIError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"dctnet-lite {args.verb}: error: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
