"""Model cards: what a set of weights segments, how to feed it, where it came from, and the
one check every card goes through.

Every card, wherever it comes from (a ``.json`` file, the copy inside a weights file, or
code), goes through :func:`validate_card`: a card with a field of the wrong type or out of
range, or a ``name`` that is not a plain file name, is refused with a one-line reason.
Weights I/O is in ``model_files``, the registry (finding models by name) in ``zoo``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import MAX_TILE_SIZE, MAX_WORKING_LONG_SIDE, MIN_SIDE, _card_statistics
from .errors import ModelLoadError
from .pixel_size import PIXEL_SIZE_RANGE
from .tasks import TASK_TABLE, task

__all__ = ["ModelCard", "TASKS", "MAX_WIDTH", "validate_card", "check_model_name", "package_version", "read_card",
           "model_paths"]

#: Per-task defaults: what the button says and how the output is presented (read from
#: the task table, tasks.TASK_TABLE)
TASKS: dict[str, dict[str, Any]] = {
    name: {"display_name": t.display_name, "button_text": t.button_text, "object_name": t.object_name,
           "instances": t.instances}
    for name, t in TASK_TABLE.items()
}

WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"
#: largest MiniNet ``width`` a card may ask for (8 in the paper; params grow with width^2)
MAX_WIDTH = 64
_NAME_RE = re.compile(r"^\w[\w .+\-()\[\]@,=~]*$")


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("napari-minenet")
    except Exception:  # pragma: no cover - running from a bare source tree
        return "unknown"



@dataclass
class ModelCard:
    """Everything needed to use a set of weights correctly, and where they came from."""

    name: str
    task: str = "custom"
    display_name: str = ""
    button_text: str = ""
    object_name: str = ""
    description: str = ""
    architecture: dict[str, Any] = field(default_factory=lambda: {"name": "MiniNet", "width": 8})
    in_channels: int = 3
    out_channels: int = 1  # 1 = foreground; 2 = foreground + contour
    #: input = (pixel / dtype range - mean) / std, per channel, after grey/RGB conversion
    normalization: dict[str, Any] = field(
        default_factory=lambda: {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    )
    #: "image": re-estimate BatchNorm statistics on each image (AdaBN); "running": use
    #: the statistics stored in the weights.
    bn_statistics: str = "image"
    #: with ``bn_statistics == "image"``: the weight of the statistics stored in the weights
    #: (those of the training images) in each BatchNorm's statistics, the image's own
    #: weighing ``1 - bn_prior`` (0: the image's alone). A prior keeps a tile whose content
    #: is unusual (few nuclei, mostly stroma) from being normalised into a different regime.
    bn_prior: float = 0.0
    #: resize so the longest side has this many pixels before inference (None = native)
    working_long_side: int | None = None
    default_threshold: float = 0.5
    contour_threshold: float = 0.5
    min_size: int = 0
    instances: bool = False
    fill_holes: bool = False
    keep_largest: bool = False
    tile_size: int = 1024
    tile_overlap: int = 128
    #: average the prediction over this many rotations / flips (1 = off; 8 = all)
    test_time_augmentation: int = 1
    #: micrometres per pixel of the training images (None: unknown or not meaningful, e.g.
    #: fundus photographs); images with a known pixel size are resampled to it
    pixel_size_um: float | None = None
    #: typical (median) object diameter in pixels at the training resolution (None: the
    #: objects have no typical size, e.g. vessels); used by the automatic size estimate
    object_diameter_px: float | None = None
    #: the automatic size estimate's reference: 6 x the mean distance to the background over
    #: the training labels' foreground (the diameter of round objects; None: use the diameter)
    object_width_px: float | None = None
    parent: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    licence: str = ""
    created: str = ""
    package_version: str = ""
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.task, str):
            defaults = task(self.task)
            for key in ("display_name", "button_text", "object_name"):
                if not getattr(self, key):
                    setattr(self, key, getattr(defaults, key))
        validate_card(self)

    @property
    def has_contours(self) -> bool:
        return self.out_channels > 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        if not isinstance(data, dict) or "name" not in data:
            raise ValueError("a model card is a JSON object with at least a 'name'")
        if not isinstance(data["name"], str):
            raise ValueError(f"the card's name must be a string, not {_short(data['name'])}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def build_network(self) -> torch.nn.Module:
        from .architectures import build_network

        try:
            return build_network(self.architecture or {}, self.in_channels, self.out_channels)
        except (ValueError, ImportError) as exc:
            raise ModelLoadError(f"model {self.name!r}: {exc}") from exc



def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."



def check_model_name(name: Any) -> str:
    """A model name must be a plain file name: it decides where the model is written."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a model name must be a non-empty string, not {_short(name)}")
    if "/" in name or "\\" in name or ".." in name or name != name.strip() or name.endswith(".") \
            or len(name) > 128 or not _NAME_RE.match(name):
        raise ValueError(
            f"model name {_short(name)} is not a plain file name: use letters, digits, spaces and . _ - + ( ) "
            "(no path separators, no '..', at most 128 characters)"
        )
    return name



def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)



def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))



def validate_card(card: ModelCard) -> ModelCard:
    """Check every field of ``card`` (types and ranges); ``ValueError`` with a one-line reason.

    Used by every card that is built, read from a ``.json`` file or a weights file, or saved.
    """
    who = f"model card {card.name!r}" if isinstance(card.name, str) else "model card"

    def bad(field_name: str, expected: str) -> ValueError:
        return ValueError(f"{who}: {field_name} must be {expected}, not {_short(getattr(card, field_name))}")

    try:
        check_model_name(card.name)
    except ValueError as exc:
        raise ValueError(f"{who}: {exc}") from None
    for key in ("task", "display_name", "button_text", "object_name", "description", "licence", "created",
                "package_version", "weights_sha256"):
        if not isinstance(getattr(card, key), str):
            raise bad(key, "a string")
    arch = card.architecture
    if not isinstance(arch, dict):
        raise bad("architecture", 'a mapping such as {"name": "MiniNet", "width": 8}')
    if not isinstance(arch.get("name", "MiniNet"), str):
        raise ValueError(f"{who}: architecture name must be a string, not {_short(arch.get('name'))}")
    if "width" in arch and not (_is_int(arch["width"]) and 1 <= arch["width"] <= MAX_WIDTH):
        raise ValueError(f"{who}: architecture width must be an integer from 1 to {MAX_WIDTH}, "
                         f"not {_short(arch['width'])}")
    if not (_is_int(card.in_channels) and card.in_channels in (1, 3)):
        raise bad("in_channels", "1 or 3")
    if not (_is_int(card.out_channels) and card.out_channels in (1, 2)):
        raise bad("out_channels", "1 or 2")
    try:
        _card_statistics(card.normalization, card.in_channels)
    except ValueError as exc:
        raise ValueError(f"{who}: {exc}") from None
    if card.bn_statistics not in ("image", "running"):
        raise bad("bn_statistics", "'image' or 'running'")
    if not (_is_real(card.bn_prior) and 0.0 <= card.bn_prior < 1.0):
        raise bad("bn_prior", "a number from 0 up to (not including) 1")
    if card.working_long_side is not None and not (
            _is_int(card.working_long_side) and MIN_SIDE <= card.working_long_side <= MAX_WORKING_LONG_SIDE):
        raise bad("working_long_side", f"null or an integer from {MIN_SIDE} to {MAX_WORKING_LONG_SIDE}")
    for key in ("default_threshold", "contour_threshold"):
        value = getattr(card, key)
        if not (_is_real(value) and 0.0 <= value <= 1.0):
            raise bad(key, "a number from 0 to 1")
    if not (_is_int(card.min_size) and card.min_size >= 0):
        raise bad("min_size", "an integer >= 0")
    for key in ("instances", "fill_holes", "keep_largest"):
        if not isinstance(getattr(card, key), bool):
            raise bad(key, "true or false")
    if not (_is_int(card.tile_size) and 32 <= card.tile_size <= MAX_TILE_SIZE):
        raise bad("tile_size", f"an integer from 32 to {MAX_TILE_SIZE}")
    if not (_is_int(card.tile_overlap) and 0 <= card.tile_overlap < card.tile_size):
        raise bad("tile_overlap", "an integer >= 0 and smaller than tile_size")
    if not (_is_int(card.test_time_augmentation) and card.test_time_augmentation in (1, 2, 4, 8)):
        raise bad("test_time_augmentation", "1, 2, 4 or 8")
    lo, hi = PIXEL_SIZE_RANGE
    if card.pixel_size_um is not None and not (_is_real(card.pixel_size_um) and lo <= card.pixel_size_um <= hi):
        raise bad("pixel_size_um", f"null or a number of micrometres per pixel from {lo:g} to {hi:g}")
    for key in ("object_diameter_px", "object_width_px"):
        value = getattr(card, key)
        if value is not None and not (_is_real(value) and 2.0 <= value <= MAX_TILE_SIZE):
            raise bad(key, f"null or a number of pixels from 2 to {MAX_TILE_SIZE}")
    if card.parent is not None and not isinstance(card.parent, str):
        raise bad("parent", "null or a string")
    for key in ("training", "metrics"):
        if not isinstance(getattr(card, key), dict):
            raise bad(key, "a mapping")
    return card



def model_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, card) for a path given with or without suffix."""
    p = Path(path)
    if p.suffix in (WEIGHTS_SUFFIX, CARD_SUFFIX):
        p = p.with_suffix("")
    return p.with_name(p.name + WEIGHTS_SUFFIX), p.with_name(p.name + CARD_SUFFIX)



def card_from_dict(data: Any, where: Path) -> ModelCard:
    try:
        return ModelCard.from_dict(data)
    except (TypeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"model card {where} is invalid: {reason}") from exc



def read_card(path: str | os.PathLike) -> ModelCard:
    """The card beside the weights (``<name>.json``)."""
    _, card_path = model_paths(path)
    if not card_path.is_file():
        raise ModelLoadError(f"model card not found: {card_path}")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelLoadError(f"cannot read model card {card_path}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelLoadError(f"model card {card_path} is not valid JSON ({exc}); the file is damaged") from exc
    return card_from_dict(data, card_path)

