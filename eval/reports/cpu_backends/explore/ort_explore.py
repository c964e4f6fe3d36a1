"""ORT quantize_static exploration: speed @512 (2 threads) and LPIPS(alex) to PyTorch fp32 on val photos."""
import json, sys, time, os
import numpy as np, torch, onnx
import onnxruntime as ort
from onnxruntime.quantization import (quantize_static, CalibrationDataReader, QuantFormat, QuantType,
                                      CalibrationMethod)
from dctnet_lite.tools.evaluate import select_images, load_photo, lpips
from dctnet_lite.inference import Cartoonizer
torch.set_num_threads(2)
ROOT = "../shared/data/portraits/train"
name = sys.argv[1]
configs = sys.argv[2].split(",")
fp32 = f"runs/int8/{name}.fp32.onnx"
_, val = select_images(ROOT, split="val")
_, train = select_images(ROOT, split="train")
def square(p, n=512):
    x = load_photo(p, None); h, w = x.shape[-2:]; k = min(h, w)
    x = x[..., (h - k) // 2:(h - k) // 2 + k, (w - k) // 2:(w - k) // 2 + k]
    return torch.nn.functional.interpolate(x, size=(n, n), mode="bicubic", antialias=True).clamp(0, 1)
calib = [square(p) for p, _ in train[:int(os.environ.get("NCAL", 8))]]
vals = [load_photo(p, 512) for p, _ in val]
cz = Cartoonizer(name, device="cpu", precision="fp32")
refs = [cz.forward(x, 1.0).float() for x in vals]
del cz

class Reader(CalibrationDataReader):
    def __init__(self): self.it = iter(calib)
    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {"image": x.numpy(), "strength": np.ones(1, np.float32)}

m = onnx.load(fp32)
convs = [n for n in m.graph.node if n.op_type in ("Conv", "ConvTranspose")]
print("ops:", sorted({n.op_type for n in m.graph.node}))
for n in convs: print("  ", n.op_type, n.name, list(n.input)[:2])

def sess(path):
    o = ort.SessionOptions(); o.intra_op_num_threads = 2; o.inter_op_num_threads = 1
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])

def measure(path, label):
    s = sess(path)
    x = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)).numpy()
    feed = {"image": x, "strength": np.ones(1, np.float32)}
    s.run(None, feed)
    ts = []
    for _ in range(3):
        t = time.perf_counter(); s.run(None, feed); ts.append(time.perf_counter() - t)
    outs = [torch.from_numpy(s.run(None, {"image": v.numpy(), "strength": np.ones(1, np.float32)})[0]) for v in vals]
    d = [float((o - r).abs().max()) for o, r in zip(outs, refs)]
    lp = [float(lpips(o, r)[0]) for o, r in zip(outs, refs)]
    res = {"label": label, "ms": 1e3 * sorted(ts)[1], "lpips": sum(lp) / len(lp), "lpips_max": max(lp),
           "max_abs": max(d), "mean_abs": float(sum((o - r).abs().mean() for o, r in zip(outs, refs)) / len(outs))}
    print(json.dumps(res), flush=True)

for cfg in configs:
    if cfg == "fp32":
        measure(fp32, "fp32"); continue
    # cfg: <ops>-<calib>[-x<exclude>]  ops: all|conv ; calib: minmax|pct|ent ; exclude: last|gf|lastgf
    parts = cfg.split("-")
    ops, cal = parts[0], parts[1]
    excl = parts[2] if len(parts) > 2 else ""
    kw = {}
    kw["op_types_to_quantize"] = {"conv": ["Conv"], "convlr": ["Conv", "LeakyRelu"],
                                  "convlrac": ["Conv", "LeakyRelu", "Add", "Concat"], "all": None}[ops]
    if kw["op_types_to_quantize"] is None: del kw["op_types_to_quantize"]
    nodes_ex = [n.name for n in convs if not n.input[1].endswith(".weight")] if "p" in excl else []
    pconvs = [n.name for n in convs if n.input[1].endswith(".weight")]
    if "l" in excl.replace("last", ""): nodes_ex.append(pconvs[-1])
    if "o" in excl: extra_o = True
    if "gf" in excl:  # depthwise box filters (constant weight, group == channels)
        for n in convs:
            g = [a.i for a in n.attribute if a.name == "group"]
            if g and g[0] > 1: nodes_ex.append(n.name)
    if "last" in excl:
        nodes_ex.append([n for n in convs if n.op_type == "Conv" and not ([a.i for a in n.attribute if a.name == "group"] or [1])[0] > 1][-1].name)
    if "first" in excl:
        nodes_ex.append(convs[0].name)
    method = {"minmax": CalibrationMethod.MinMax, "pct": CalibrationMethod.Percentile, "ent": CalibrationMethod.Entropy}[cal]
    extra = {"CalibMovingAverage": False, }
    if "o" in excl: extra["OpTypesToExcludeOutputQuantization"] = ["Conv"]
    if cal == "pct": extra["CalibPercentile"] = 99.999
    out = f"runs/int8/{name}.{cfg}.onnx"
    t = time.time()
    quantize_static(fp32, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=method, nodes_to_exclude=nodes_ex, extra_options=extra, **kw)
    print(cfg, "quantized in", round(time.time() - t, 1), "s; excluded", nodes_ex, flush=True)
    measure(out, cfg)
