"""The model registry: built-in and user models, found by name or by path.

A model is two files side by side, ``<name>.safetensors`` (the tensors) and ``<name>.json``
(its :class:`ModelCard`); cards and their check live in ``model_cards``, reading and
writing the files in ``model_files``. This module finds them.

Built-in models live in the package's ``weights/`` folder; models the user trains or
fine-tunes live in a per-user folder (``platformdirs``; override with the
``NAPARI_MINENET_HOME`` environment variable). Both are found through :func:`list_models`
and :func:`load_model`, by name or by path. Listing skips a model whose card is invalid
with a :class:`ModelCardWarning` naming it, so one bad user card never hides the built-in
models. Every name the registry used to define is still importable from here.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError
from .files import atomic_write, atomic_write_bytes, atomic_write_json, remove_stale_temp_files
from .model_cards import (
    CARD_SUFFIX,
    MAX_WIDTH,
    TASKS,
    WEIGHTS_SUFFIX,
    ModelCard,
    check_model_name,
    model_paths,
    package_version,
    read_card,
    validate_card,
)
from .model_files import SegmentationModel, embedded_card, header_bytes, load_weights, save_model, tensors_digest
from .tasks import TASK_TABLE

__all__ = [
    "ModelCard",
    "SegmentationModel",
    "ModelInfo",
    "ModelLoadError",
    "ModelCardWarning",
    "TASKS",
    "MAX_WIDTH",
    "validate_card",
    "check_model_name",
    "builtin_weights_dir",
    "user_models_dir",
    "list_models",
    "resolve_model_path",
    "load_model",
    "save_model",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "package_version",
    "tensors_digest",
    "read_card",
]


class ModelCardWarning(UserWarning):
    """A model in a models folder was skipped (its card is invalid or missing)."""


#: file suffixes of pickled PyTorch / pickle files, which are never loaded
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    display_name: str
    task: str
    source: str  # "builtin" or "user"
    path: Path
    parent: str | None
    metrics: dict[str, Any]
    created: str


# --------------------------------------------------------------------------- locations


def builtin_weights_dir() -> Path:
    """The shipped ``weights/`` folder (inside the installed package, or the repo root)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "weights", here.parents[1] / "weights"):
        if candidate.is_dir():
            return candidate
    return here / "weights"



def user_models_dir(create: bool = False) -> Path:
    """Where fine-tuned and user-trained models are saved."""
    env = os.environ.get("NAPARI_MINENET_HOME")
    if env:
        base = Path(env).expanduser()
    else:
        import platformdirs

        base = Path(platformdirs.user_data_dir("napari-minenet", appauthor=False))
    path = base / "models"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path



# --------------------------------------------------------------------------- registry


def load_model(name_or_path: str | os.PathLike | SegmentationModel, device: str | torch.device = "cpu") -> SegmentationModel:
    """Load a model by registry name (``"nuclei"``) or by path (with or without suffix); a
    :class:`SegmentationModel` is returned as it is."""
    if isinstance(name_or_path, SegmentationModel):
        return name_or_path
    return load_weights(resolve_model_path(name_or_path), device)


def _listing_card(weights: Path) -> ModelCard:
    """The card that :func:`load_model` would use for ``weights``, read without the tensors.

    The ``.json`` card when it belongs to these weights; the card inside the weights file
    when the ``.json`` is missing or belongs to other weights (a save interrupted between
    its two files). Raises :class:`ModelLoadError` when neither is usable.
    """
    _, card_path = model_paths(weights)
    try:
        embedded = embedded_card(header_bytes(weights), weights)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {weights}: {exc.strerror or exc}") from exc
    if not card_path.is_file():
        if embedded is None:
            raise ModelLoadError(f"no model card: {card_path.name} is missing and {weights.name} holds none")
        return embedded
    card = read_card(weights)
    if embedded is not None and card.weights_sha256 and embedded.weights_sha256 \
            and card.weights_sha256 != embedded.weights_sha256:
        return embedded
    return card



def _scan(folder: Path, source: str) -> list[ModelInfo]:
    out = []
    if not folder.is_dir():
        return out
    if source == "user":
        remove_stale_temp_files(folder)
    for weights in sorted(folder.glob("*" + WEIGHTS_SUFFIX)):
        if weights.name.endswith(".ckpt" + WEIGHTS_SUFFIX) or weights.name.startswith("."):
            continue  # training checkpoints are not models
        try:
            card = _listing_card(weights)
        except ModelLoadError as exc:
            warnings.warn(f"skipping model {weights}: {exc}", ModelCardWarning, stacklevel=2)
            continue
        out.append(
            ModelInfo(card.name, card.display_name, card.task, source, weights, card.parent, card.metrics, card.created)
        )
    return out



def list_models() -> list[ModelInfo]:
    """Built-in models (in task order) followed by user models (oldest first).

    A model whose card is invalid or missing is skipped with a :class:`ModelCardWarning`
    that names it; the built-in models are always listed.
    """
    order = {t: i for i, t in enumerate(TASK_TABLE)}
    builtin = sorted(_scan(builtin_weights_dir(), "builtin"), key=lambda m: (order.get(m.task, 99), m.name))
    try:
        user = sorted(_scan(user_models_dir(), "user"), key=lambda m: (m.created, m.name))
    except OSError as exc:  # e.g. an unreadable user folder: the built-in models still work
        warnings.warn(f"cannot list the user models in {user_models_dir()}: {exc}", ModelCardWarning, stacklevel=2)
        user = []
    return builtin + user



def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """The weights file for a registry name or a path; a clear error when there is none."""
    text = str(name_or_path)
    if not text:
        raise ModelLoadError("no model given")
    candidate = Path(text).expanduser()
    if candidate.suffix.lower() in _PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"{text}: pickled PyTorch files ({', '.join(_PICKLE_SUFFIXES[:3])}, ...) are refused because loading "
            "them can run arbitrary code; a model is a .safetensors file with its .json card beside it"
        )
    if candidate.suffix.lower() == ".onnx":
        raise ModelLoadError(f"{text} is an ONNX export; give the .safetensors model it was exported from")
    looks_like_path = candidate.suffix in (WEIGHTS_SUFFIX, CARD_SUFFIX) or os.sep in text or "/" in text
    if not looks_like_path:  # a bare word is a registry name first, a relative path second
        for info in list_models():
            if info.name == text:
                return info.path
    if looks_like_path or candidate.exists():
        if candidate.is_dir():
            found = [p for p in candidate.glob("*" + WEIGHTS_SUFFIX) if not p.name.endswith(".ckpt" + WEIGHTS_SUFFIX)]
            if len(found) != 1:
                raise ModelLoadError(f"{candidate} is a folder with {len(found)} models; give the .safetensors file")
            return found[0]
        weights, _ = model_paths(candidate)
        if not weights.is_file():
            raise ModelLoadError(f"model file not found: {weights}")
        return weights
    names = ", ".join(m.name for m in list_models()) or "none"
    raise ModelLoadError(f"no model named {text!r} (available: {names})")

