"""What eval/official_tf_bench.py (TensorFlow venv) and eval/official_vs_tf.py (the project's
environment) share: numpy and the standard library only, so both environments import it."""
from __future__ import annotations

import platform

import numpy as np


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def bench_image(size: int, seed: int = 0) -> np.ndarray:
    """A smooth synthetic BGR float32 image, integer-valued 0..255 (the timed input of both sides)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    img = np.stack([150 + 80 * xx, 120 + 60 * yy, 90 + 50 * (1 - xx)], -1)
    face = ((yy - 0.45) / 0.3) ** 2 + ((xx - 0.5) / 0.22) ** 2 < 1.0
    img[face] = (120, 160, 215)
    img = img + rng.normal(0, 3, img.shape) + 10 * np.sin(40 * xx + 25 * yy)[..., None]
    return np.clip(np.round(img), 0, 255).astype(np.float32)
