"""Print the path of the sample portrait that ships with the package.

``dctnet-lite cartoonize "$(python -m dctnet_lite.sample)" -o out/``

The photo is scikit-image's ``astronaut.png`` (Eileen Collins, NASA: public domain), copied into
the package so the README's first command works from a wheel with nothing else installed.
"""
import sys
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent / "assets" / "astronaut.png"


def sample_portrait() -> Path:
    if not SAMPLE.is_file():
        raise SystemExit(f"the sample portrait is missing from the installed package: {SAMPLE} "
                         f"(reinstall dctnet-lite)")
    return SAMPLE


if __name__ == "__main__":
    print(sample_portrait())
    sys.exit(0)
