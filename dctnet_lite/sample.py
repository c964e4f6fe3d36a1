"""Print the path of a redistributable sample portrait: scikit-image's public-domain astronaut.

``dctnet-lite cartoonize "$(python -m dctnet_lite.sample)" -o out/``
"""
import sys
from pathlib import Path


def sample_portrait() -> Path:
    try:
        import skimage.data
    except ImportError:
        raise SystemExit("the sample portrait ships with scikit-image: pip install scikit-image") from None
    path = Path(skimage.data.__file__).parent / "astronaut.png"
    if not path.is_file():
        raise SystemExit(f"scikit-image is installed but {path} is missing")
    return path


if __name__ == "__main__":
    print(sample_portrait())
    sys.exit(0)
