"""Count first: FLOPs, bytes and arithmetic intensity of DCTNet per image (see eval/PERF.md).

    python eval/perf_floor.py                        # the counted table (no device needed)
    python eval/perf_floor.py --spec h100-sxm        # + floors implied by published peak figures
    python eval/perf_floor.py --measure --device cuda --precision bf16
                                                     # + floors from this device's measured rates

Everything is counted on the ``meta`` device (no memory, no compute), for batch 1:

- ``GFLOP``: 2 x MACs of one forward (:func:`dctnet_lite.profile.count_macs`);
- ``min MB``: the fewest bytes an image can cost: uint8 input + uint8 output (3 x H x W each)
  + every weight read once in bf16 (2 bytes per parameter);
- ``act MB``: a more realistic activation traffic: for every convolution, its input and output
  activations in bf16 (2 bytes per element), each read/written once per conv. It ignores the
  elementwise ops between convs (activation, fusion gate, concat, upsampling), i.e. it assumes
  they are fused into the convs' prologues/epilogues;
- ``FLOP/B``: arithmetic intensity, GFLOP / MB for both byte counts.

The floor of one image is ``max(FLOPs / matmul rate, bytes / copy rate)``. ``--spec`` uses
published peak figures (not measured); ``--measure`` times a large bf16/fp16/fp32 matmul and a
large device-to-device copy on ``--device`` and uses those rates.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from dctnet_lite.model import ArchConfig, DCTNet
from dctnet_lite.precision import PRECISIONS
from dctnet_lite.profile import count_macs, count_params

#: Published peak figures (vendor data sheets), NOT measured here.
SPECS = {
    "h100-sxm": {"label": "NVIDIA H100 SXM5 (published: dense BF16 989 TFLOP/s, HBM3 3.35 TB/s)",
                 "flops": 989e12, "bytes_per_s": 3.35e12},
}
BF16 = 2


def conv_activation_bytes(arch: ArchConfig, height: int, width: int, batch: int = 1,
                          bytes_per_element: int = BF16) -> int:
    """Sum over every conv call of (input + output elements) x ``bytes_per_element``, counted
    with forward hooks on the meta device."""
    with torch.device("meta"):
        model = DCTNet(arch).eval()
        x = torch.empty(batch, 3, height, width)
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += (inputs[0].numel() + output.numel()) * bytes_per_element

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(x, 1.0)
    finally:
        for h in handles:
            h.remove()
    return total


def count_row(width: int, resolution: int) -> dict:
    arch = ArchConfig.from_width(width)
    with torch.device("meta"):
        params = count_params(DCTNet(arch))
    flops = 2 * count_macs(arch, resolution, resolution, 1)
    io = 2 * 3 * resolution * resolution  # uint8 in + uint8 out
    min_bytes = io + params * BF16
    act = conv_activation_bytes(arch, resolution, resolution)
    return {"width": width, "resolution": resolution, "params": params, "flops": flops,
            "min_bytes": min_bytes, "act_bytes": act, "ai_min": flops / min_bytes, "ai_act": flops / act}


def measure_rates(device: str, precision: str = "bf16", n: int = 8192, copy_mb: int = 1024,
                  repeats: int = 20) -> dict:
    """Measured matmul FLOP/s (``n x n`` @ ``n x n``) and copy bytes/s (read + write counted)."""
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    def best(fn):
        fn()
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return min(times)

    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    t_mm = best(lambda: a @ b)
    src = torch.empty(copy_mb * 2 ** 20, device=dev, dtype=torch.uint8)
    dst = torch.empty_like(src)
    t_cp = best(lambda: dst.copy_(src))
    return {"label": f"measured on {device} ({precision} {n}x{n} matmul, {copy_mb} MiB copy)",
            "flops": 2 * n ** 3 / t_mm, "bytes_per_s": 2 * src.numel() / t_cp}


def markdown(rows, rates=None) -> str:
    """The counted table; with ``rates`` (``flops``, ``bytes_per_s``) the floors instead."""
    if not rates:
        lines = ["| width | px | params | GFLOP | min MB | act MB (bf16) | FLOP/B (min) | FLOP/B (act) |",
                 "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['width']} | {r['resolution']} | {r['params'] / 1e6:.2f} M | "
                         f"{r['flops'] / 1e9:.1f} | {r['min_bytes'] / 1e6:.2f} | {r['act_bytes'] / 1e6:.0f} | "
                         f"{r['ai_min']:.0f} | {r['ai_act']:.0f} |")
        return "\n".join(lines)
    lines = ["| width | px | FLOPs / rate (ms) | min bytes / rate (ms) | act bytes / rate (ms) "
             "| floor ms (min bytes) | floor ms (act bytes) | img/s at floor (act) | bound (act) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|:---|"]
    for r in rows:
        t_c = r["flops"] / rates["flops"]
        t_min, t_act = r["min_bytes"] / rates["bytes_per_s"], r["act_bytes"] / rates["bytes_per_s"]
        floor = max(t_c, t_act)
        lines.append(f"| {r['width']} | {r['resolution']} | {t_c * 1e3:.3f} | {t_min * 1e3:.3f} | "
                     f"{t_act * 1e3:.3f} | {max(t_c, t_min) * 1e3:.3f} | {floor * 1e3:.3f} | "
                     f"{1 / floor:.0f} | {'compute' if t_c >= t_act else 'memory'} |")
    ridge = rates["flops"] / rates["bytes_per_s"]
    lines += ["", f"Rates: {rates['label']}: {rates['flops'] / 1e12:.1f} TFLOP/s, "
                  f"{rates['bytes_per_s'] / 1e12:.2f} TB/s; ridge point {ridge:.0f} FLOP/B."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", nargs="+", type=int, default=[64, 48])
    p.add_argument("--resolutions", nargs="+", type=int, default=[512, 1024, 2048])
    p.add_argument("--spec", choices=sorted(SPECS), default=None, help="floors from published peaks")
    p.add_argument("--measure", action="store_true", help="floors from rates measured on --device")
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="bf16", choices=list(PRECISIONS))
    a = p.parse_args(argv)
    rows = [count_row(w, r) for w in a.widths for r in a.resolutions]
    print(markdown(rows))
    if a.spec:
        print(f"\n**Published spec values, not measured** ({SPECS[a.spec]['label']}):\n")
        print(markdown(rows, SPECS[a.spec]))
    if a.measure:
        print("\n**Measured on this machine:**\n")
        print(markdown(rows, measure_rates(a.device, a.precision)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
