import os, sys, time
os.makedirs("runs/int8", exist_ok=True)
from dctnet_lite.tools.onnx_export import export_onnx
for name in sys.argv[1:]:
    t = time.time()
    export_onnx(name, f"runs/int8/{name}.fp32.onnx")
    print(name, time.time() - t, flush=True)
