"""Pictures for people: outlines of labels drawn on the image (used by the CLI and demo)."""

from __future__ import annotations

import numpy as np

__all__ = ["outline_overlay", "to_display_rgb"]


def to_display_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) for any grey / RGB image (16-bit and float are stretched)."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    if img.dtype != np.uint8:
        f = img.astype(np.float32)
        lo, hi = np.percentile(f[:: max(1, f.shape[0] // 512), :: max(1, f.shape[1] // 512)], [0.5, 99.5])
        img = (np.clip((f - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return img


def outline_overlay(image: np.ndarray, labels: np.ndarray, color=(255, 230, 0)) -> np.ndarray:
    """The image with the border of every labelled object drawn in ``color``."""
    from skimage.segmentation import find_boundaries

    rgb = to_display_rgb(image).copy()
    edges = find_boundaries(labels, mode="inner")
    rgb[edges] = color
    return rgb
