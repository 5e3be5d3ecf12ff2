"""Sample images that ship inside installed packages (nothing is downloaded).

* ``ihc``: scikit-image's ``ihc.png``, immunohistochemistry of colon tissue with a
  haematoxylin counterstain (blue nuclei), 512 x 512. The default demo image.
* ``retina``: scikit-image's ``retina.jpg``, a colour fundus photograph, 1411 x 1411.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["SAMPLES", "load_sample", "sample_path"]

SAMPLES = {
    "ihc": ("ihc.png", "Tissue (IHC, nuclei)", "nuclei"),
    "retina": ("retina.jpg", "Retina (fundus)", "vessels"),
}


def sample_path(name: str) -> Path:
    if name not in SAMPLES:
        raise KeyError(f"unknown sample {name!r}; choose from {', '.join(SAMPLES)}")
    import skimage

    path = Path(skimage.__file__).parent / "data" / SAMPLES[name][0]
    if not path.is_file():
        raise FileNotFoundError(f"scikit-image does not ship {path.name} in this installation ({path})")
    return path


def load_sample(name: str) -> np.ndarray:
    from .data import read_image

    return read_image(sample_path(name))
