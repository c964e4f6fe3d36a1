"""INT8 of an imported official graph against TensorFlow's own uint8 output, in levels.

    python3 eval/reports/cpu_backends/int8_vs_tf.py --calibration ../shared/data/portraits/train

For each fixture graph of tests/fixtures/official/ (ModelScope's generator frozen under
TensorFlow, seeded random weights, with TF's uint8 outputs on fixed inputs): import it, write it
as a checkpoint, quantize it with dctnet_lite.tools.quantize.quantize (the calibration folder's
training split), and run the INT8 artefact (ONNX Runtime) on the fixture inputs the graph takes
directly (sides multiples of 4, no padding), mapped to TF's uint8 rule
(clip(+-0.999999), (y + 1) * 127.5, truncation), BGR. Prints, per graph and overall, the largest
and mean absolute difference in uint8 levels and the share of values off; fp32 (the exact path)
and bf16 (the CPU default) alongside, from dctnet_lite.official.official_uint8.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))
from dctnet_lite import save_checkpoint  # noqa: E402
from dctnet_lite.official import CLIP, official_uint8  # noqa: E402
from dctnet_lite.tools import import_modelscope as im  # noqa: E402
from dctnet_lite.tools.onnx_export import OnnxRuntimeNetwork  # noqa: E402
from dctnet_lite.tools.quantize import quantize  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "official"


def int8_uint8(net: OnnxRuntimeNetwork, bgr: np.ndarray) -> np.ndarray:
    rgb = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1], dtype=np.float32)).permute(2, 0, 1)[None]
    y = net(rgb / 127.5 - 1.0, 1.0)  # [-1, 1], the clamped cartoon at s = 1
    out = ((y.clamp(-CLIP, CLIP) + 1.0) * 127.5).to(torch.uint8)
    return out[0].permute(1, 2, 0).flip(-1).numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibration", required=True, help="photo folder (its training split calibrates)")
    ap.add_argument("--calib-images", type=int, default=16)
    ap.add_argument("--calib-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows, tot = [], {k: [0, 0.0, 0, 0] for k in ("fp32", "bf16", "int8")}
    with tempfile.TemporaryDirectory() as tmp:
        for pb in sorted(FIXTURES.glob("official_*.pb")):
            d = np.load(pb.with_suffix(".npz"))
            model, _ = im.import_graph(pb.read_bytes(), pb.name)
            ckpt = Path(tmp) / f"{pb.stem}.safetensors"
            save_checkpoint(ckpt, model, dtype="fp32", provenance={"fixture": pb.name})
            out = Path(tmp) / f"{pb.stem}.int8.onnx"
            quantize(ckpt, a.calibration, out, calib_images=a.calib_images, calib_size=a.calib_size,
                     measure=False, threads=a.threads)
            net = OnnxRuntimeNetwork(out, threads=a.threads)
            for i, (h, w) in enumerate(tuple(s) for s in d["sizes"]):
                if d[f"padded_{i}"]:
                    continue  # the graph itself cannot take that size (ModelScope pads it white)
                tf = d[f"output_{i}"].astype(int)
                got = {"fp32": official_uint8(model, d[f"input_{i}"], precision="fp32"),
                       "bf16": official_uint8(model, d[f"input_{i}"], precision="bf16"),
                       "int8": int8_uint8(net, d[f"input_{i}"])}
                row = {"graph": pb.stem, "size": [int(h), int(w)]}
                for k, v in got.items():
                    diff = np.abs(v.astype(int) - tf)
                    row[k] = {"max": int(diff.max()), "mean": float(diff.mean()), "off": float((diff > 0).mean())}
                    t = tot[k]
                    t[0], t[1], t[2], t[3] = max(t[0], int(diff.max())), t[1] + float(diff.sum()), \
                        t[2] + int((diff > 0).sum()), t[3] + diff.size
                rows.append(row)
                print(json.dumps(row))
    summary = {k: {"max_levels": t[0], "mean_levels": t[1] / t[3], "fraction_off": t[2] / t[3], "values": t[3]}
               for k, t in tot.items()}
    print(json.dumps({"overall": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
