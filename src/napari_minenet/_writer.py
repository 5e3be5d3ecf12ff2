"""napari writer: Labels layers to (zlib-compressed) TIFF, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    from .files import write_tiff

    target = Path(path)
    if target.suffix.lower() not in (".tif", ".tiff"):
        target = target.with_suffix(".tif")
    labels = np.asarray(data)
    dtype = np.uint16 if labels.max(initial=0) < 2**16 else np.uint32
    write_tiff(target, labels.astype(dtype, copy=False), metadata={"name": str(meta.get("name", ""))})
    return [str(target)]
