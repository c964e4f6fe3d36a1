"""Cold start: what a one-shot ``dctnet-lite cartoonize`` imports and allocates beyond torch itself.

Not a timing test: it checks that the modules whose import cost a cold start about 0.35 s (triton,
through torch.utils.flop_counter) and 0.5-1.4 s (sympy and torch's symbolic shapes, through
``Module.to_empty`` on meta tensors) are not imported on the way from process start to the
written file, and that a checkpoint loaded without them is a plain trainable model.
"""
import subprocess
import sys
import textwrap

import numpy as np
import torch
from PIL import Image

from dctnet_lite import create_model, load
from dctnet_lite.checkpoint import save_checkpoint


def test_cartoonize_cli_does_not_import_sympy_or_triton(tmp_path):
    photo = tmp_path / "p.png"
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(photo)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(ckpt, create_model("official_c16n4"))
    code = textwrap.dedent(f"""
        import sys
        from dctnet_lite.cli import main
        rc = main(["cartoonize", {str(photo)!r}, "-o", {str(tmp_path / 'out')!r}, "--checkpoint", {str(ckpt)!r}])
        heavy = sorted(m for m in ("sympy", "triton", "torch.fx.experimental.symbolic_shapes") if m in sys.modules)
        print("RC", rc, "HEAVY", ",".join(heavy))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "RC 0 HEAVY", r.stdout + r.stderr
    assert (tmp_path / "out" / "p.png").is_file()


def test_loaded_parameters_are_real_trainable_tensors(tmp_path):
    ckpt = tmp_path / "w16.safetensors"
    src = create_model("dctnet_w16")
    save_checkpoint(ckpt, src)
    m = load(ckpt)
    params = list(m.parameters())
    assert params and all(not p.is_meta and p.device.type == "cpu" and p.requires_grad for p in params)
    assert all(isinstance(p, torch.nn.Parameter) for p in params)
    for a, b in zip(src.state_dict().values(), m.state_dict().values()):
        assert torch.equal(a, b)
    # the loaded tensors are the model's own: a training step changes them and nothing else
    x = torch.rand(1, 3, 32, 32)
    m.train()
    m(x).mean().backward()
    assert all(p.grad is not None for p in params)
