"""napari sample data: images that ship inside scikit-image (nothing is downloaded)."""

from __future__ import annotations

from .samples import SAMPLES, load_sample


def _layer(name: str):
    data = load_sample(name)
    title = SAMPLES[name][1]
    return [(data, {"name": title, "rgb": data.ndim == 3}, "image")]


def ihc_sample():
    """Colon tissue, immunohistochemistry with haematoxylin-stained nuclei (512 x 512 RGB)."""
    return _layer("ihc")


def retina_sample():
    """Colour fundus photograph (1411 x 1411 RGB)."""
    return _layer("retina")
