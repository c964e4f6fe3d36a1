"""PT2E + X86InductorQuantizer exploration: compile time, speed @512 (2 threads), LPIPS to fp32 on val."""
import json, sys, time, os
import torch
from torch import nn
import torch._inductor.config as icfg
from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, convert_pt2e
import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
import importlib
importlib.import_module("torchao.quantization.pt2e.inductor_passes.x86")  # registers the int8 lowerings
from dctnet_lite.checkpoint import load
from dctnet_lite.model import pad_to_multiple
from dctnet_lite.official import guided_filter, OfficialGenerator
from dctnet_lite.tools.evaluate import select_images, load_photo, lpips
from dctnet_lite.inference import Cartoonizer
torch.set_num_threads(2)
icfg.freezing = True
ROOT = "../shared/data/portraits/train"
name = sys.argv[1]
_, val = select_images(ROOT, split="val")
_, train = select_images(ROOT, split="train")
vals = [load_photo(p, 512) for p, _ in val]
cz = Cartoonizer(name, device="cpu", precision="fp32")
refs = [cz.forward(x, 1.0).float() for x in vals]
del cz
model = load(name).float().eval()
official = isinstance(model, OfficialGenerator)

class Core(nn.Module):  # the part that is quantized
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, x):
        if official: return self.m.generator(x)
        s = torch.ones(x.shape[0], 1, 1, 1)
        fused = [f(c, t, s) for f, c, t in zip(self.m.fusions, self.m.content(x), self.m.texture(x))]
        y = self.m.bottleneck(fused[3])
        for block, skip in zip(self.m.decoder, (fused[2], fused[1], fused[0], x)):
            y = block(y, skip)
        return self.m.head(y)

def full(core, x01):  # [0,1] image -> [0,1] output, strength 1
    h, w = x01.shape[-2:]
    x = pad_to_multiple(x01 * 2 - 1, 16)
    y = core(x)
    y = guided_filter(x, y).clamp(-1, 1) if official else torch.tanh(y)
    return ((y[..., :h, :w] + 1) * 0.5).clamp(0, 1)

def sq(x):  # center 512 crop / pad
    return torch.nn.functional.interpolate(x, size=(512, 512), mode="bilinear", antialias=True)

core = Core(model).eval()
H, W = torch.export.Dim("h", min=1, max=256), torch.export.Dim("w", min=1, max=256)
STATIC = os.environ.get("STATIC") == "1"
ex = torch.rand(1, 3, 512, 512) if STATIC else torch.rand(1, 3, 64 * 2, 80 * 2)
t = time.time()
ep = torch.export.export(core, (ex,), dynamic_shapes=None if STATIC else {"x": {2: 16 * H, 3: 16 * W}}).module()
q = xiq.X86InductorQuantizer()
q.set_global(xiq.get_default_x86_inductor_quantization_config())
prepared = prepare_pt2e(ep, q)
with torch.no_grad():
    for p, _ in train[:8]:
        ph = load_photo(p, 512)
        prepared((sq(ph) if STATIC else pad_to_multiple(ph, 16)) * 2 - 1)
conv = convert_pt2e(prepared)
print("export+prepare+calib+convert", round(time.time() - t, 1), "s", flush=True)
with torch.no_grad():
    outs = [full(conv, v) for v in vals] if not STATIC else refs
lp = [float(lpips(o, r)[0]) for o, r in zip(outs, refs)]
print(json.dumps({"label": "pt2e-ref(eager q/dq)", "lpips": sum(lp) / len(lp), "lpips_max": max(lp),
                  "max_abs": max(float((o - r).abs().max()) for o, r in zip(outs, refs))}), flush=True)
x = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    comp = torch.compile(conv, dynamic=False)
    t = time.time(); y0 = full(comp, x); first = time.time() - t
    ts = []
    for _ in range(3):
        t = time.perf_counter(); full(comp, x); ts.append(time.perf_counter() - t)
    ref_q = full(conv, x)
from torch._dynamo.utils import counters
print("inductor counters:", {k: v for k, v in counters["inductor"].items() if "q" in k or "pack" in k})
print(json.dumps({"label": "pt2e-compiled", "first_call_s": first, "ms": 1e3 * sorted(ts)[1],
                  "compiled_vs_ref_max": float((y0 - ref_q).abs().max())}), flush=True)
