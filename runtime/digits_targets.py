"""Targets derived from the bundled digits, for models with several heads or per-pixel outputs:
`ink`, the share of the 8x8 grid the digit inks (a regression target, 0 to 1), and `mask`, each
pixel's class: 0 where the pixel is background (value <= INK_LEVEL of 16), else 1 + the digit."""

from __future__ import annotations

import numpy as np

INK_LEVEL = 4  # of 16: lighter pixels are background in `mask`
DERIVED = ("ink", "mask")


def derived(name: str, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Target `name` (one of DERIVED) of digits `images` [N, 64] (0..16) with classes `labels` [N]."""
    if name == "ink":
        return images.sum(1) / (16.0 * images.shape[1])
    pixels = images.reshape(len(images), 8, 8)
    return np.where(pixels > INK_LEVEL, labels[:, None, None] + 1, 0).astype(np.int64)


def mask_like(values: np.ndarray, rank: int) -> np.ndarray:
    """`mask` [N, 8, 8] as a declared [N, 1, 8, 8] target, or as it is."""
    return values[:, None] if rank == 4 and values.ndim == 3 else values
