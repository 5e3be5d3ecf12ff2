"""napari-minenet: Mini-Net segmentation (nuclei, retinal vessels, skin lesions) for napari.

The core API below is headless (no Qt, no napari) and is what the widget and the
``napari-minenet`` command line call::

    from napari_minenet import segment, load_model
    result = segment(image, "nuclei")          # labels, probability, count
    result.relabel(threshold=0.4)              # re-threshold without re-running the network

Names are imported lazily so that ``import napari_minenet`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "MiniNet",
    "ModelCard",
    "SegmentationModel",
    "SegmentationResult",
    "TrainingExample",
    "TrainConfig",
    "MinenetError",
    "InputError",
    "ModelLoadError",
    "Cancelled",
    "segment",
    "segment_stack",
    "predict",
    "predict_tiled",
    "train",
    "finetune",
    "evaluate",
    "export_onnx",
    "load_model",
    "save_model",
    "list_models",
    "read_image",
    "load_dataset",
]

_LOCATIONS = {
    "MiniNet": "model",
    "ModelCard": "zoo",
    "SegmentationModel": "zoo",
    "MinenetError": "errors",
    "ModelLoadError": "errors",
    "load_model": "zoo",
    "save_model": "zoo",
    "list_models": "zoo",
    "SegmentationResult": "segmentation",
    "segment": "segmentation",
    "segment_stack": "segmentation",
    "TrainingExample": "data",
    "InputError": "errors",
    "read_image": "data",
    "load_dataset": "data",
    "Cancelled": "inference",
    "predict": "inference",
    "predict_tiled": "inference",
    "TrainConfig": "training",
    "train": "training",
    "finetune": "finetuning",
    "evaluate": "evaluation",
    "export_onnx": "export",
}

try:
    from importlib.metadata import version as _version

    __version__ = _version("napari-minenet")
except Exception:  # pragma: no cover
    __version__ = "unknown"


def __getattr__(name: str) -> Any:
    if name in _LOCATIONS:
        module = importlib.import_module(f".{_LOCATIONS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'napari_minenet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
