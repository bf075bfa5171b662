"""Write examples/digits_images/, the bundled 8x8 digits as 32x32 RGB PNG files in one folder per class.

Run `python examples/make_image_folder.py` before training examples/digits_images.dlspec; the images
are generated, not committed. Each digit's 0 to 16 ink is stretched to 0 to 255, upscaled 4x with
bilinear filtering and written grey in all three channels: an image folder as a camera would give.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def make(out: Path, size: int = 32) -> int:
    """Write `out`/<label>/<index>.png for every digit; the number of files written."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    for label in range(10):
        (out / str(label)).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(pixels, digits.target)):
        big = Image.fromarray(image, "L").resize((size, size), Image.Resampling.BILINEAR)
        big.convert("RGB").save(out / str(label) / f"{i:04d}.png")
    return len(pixels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, default=HERE / "digits_images")
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args()
    n = make(args.output, args.size)
    print(f"wrote {n} images to {args.output}/0 ... {args.output}/9")


if __name__ == "__main__":
    main()
