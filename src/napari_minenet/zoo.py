"""Model cards, weights I/O and the model registry.

A model is two files side by side:

* ``<name>.safetensors``: the tensors (loading never unpickles anything);
* ``<name>.json``: the :class:`ModelCard` (what the model segments, how to normalise its
  input, thresholds, where it came from, how well it did).

Built-in models live in the package's ``weights/`` folder; models the user trains or
fine-tunes live in a per-user folder (``platformdirs``; override with the
``NAPARI_MINENET_HOME`` environment variable). Both are found through :func:`list_models`
and :func:`load_model`, by name or by path. Every write is atomic: data goes to a
temporary file in the target folder, is flushed to disk, then renamed over the target.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .files import atomic_write, atomic_write_bytes, atomic_write_json

__all__ = [
    "ModelCard",
    "SegmentationModel",
    "ModelInfo",
    "ModelLoadError",
    "TASKS",
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

#: Per-task defaults: what the button says and how the output is presented.
TASKS: dict[str, dict[str, Any]] = {
    "nuclei": {"display_name": "Nuclei (H&E)", "button_text": "Segment nuclei", "object_name": "nuclei",
               "instances": True},
    "vessels": {"display_name": "Retinal vessels", "button_text": "Segment vessels", "object_name": "vessels",
                "instances": False},
    "lesion": {"display_name": "Skin lesion", "button_text": "Segment lesion", "object_name": "lesion",
               "instances": False},
    "custom": {"display_name": "Custom", "button_text": "Segment", "object_name": "objects", "instances": False},
}

_WEIGHTS_SUFFIX = ".safetensors"
_CARD_SUFFIX = ".json"


class ModelLoadError(RuntimeError):
    """A model could not be found or its files are unreadable / inconsistent."""


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
    parent: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    licence: str = ""
    created: str = ""
    package_version: str = ""
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        defaults = TASKS.get(self.task, TASKS["custom"])
        for key in ("display_name", "button_text", "object_name"):
            if not getattr(self, key):
                setattr(self, key, defaults[key])
        if self.in_channels not in (1, 3):
            raise ValueError(f"model card {self.name!r}: in_channels must be 1 or 3, not {self.in_channels}")
        if self.out_channels not in (1, 2):
            raise ValueError(f"model card {self.name!r}: out_channels must be 1 or 2, not {self.out_channels}")
        if self.bn_statistics not in ("image", "running"):
            raise ValueError(f"model card {self.name!r}: bn_statistics must be 'image' or 'running'")

    @property
    def has_contours(self) -> bool:
        return self.out_channels > 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        if not isinstance(data, dict) or "name" not in data:
            raise ValueError("a model card is a JSON object with at least a 'name'")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def build_network(self) -> torch.nn.Module:
        from .architectures import build_network

        try:
            return build_network(self.architecture or {}, self.in_channels, self.out_channels)
        except (ValueError, ImportError) as exc:
            raise ModelLoadError(f"model {self.name!r}: {exc}") from exc


@dataclass
class SegmentationModel:
    """A network with its card (and the file it came from, if any)."""

    network: torch.nn.Module
    card: ModelCard
    path: Path | None = None

    @classmethod
    def new(cls, card: ModelCard) -> SegmentationModel:
        return cls(card.build_network(), card)


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


# --------------------------------------------------------------------------- save / load


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, card) for a path given with or without suffix."""
    p = Path(path)
    if p.suffix in (_WEIGHTS_SUFFIX, _CARD_SUFFIX):
        p = p.with_suffix("")
    return p.with_name(p.name + _WEIGHTS_SUFFIX), p.with_name(p.name + _CARD_SUFFIX)


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors (names, dtypes, shapes, bytes) in name order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_model(model: SegmentationModel, path: str | os.PathLike) -> Path:
    """Write ``<path>.safetensors`` (tensors + the card in its metadata) and the card as
    ``<path>.json`` beside it, each atomically; returns the weights path.

    The .safetensors file alone is a complete model: if a crash leaves an old .json beside
    new weights, loading notices (the card's ``weights_sha256`` is the digest of the
    tensors) and uses the card stored in the weights file.
    """
    from safetensors.torch import save as st_save

    weights_path, card_path = _paths(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.network.state_dict().items()}
    card = dataclasses.replace(model.card)
    card.weights_sha256 = tensors_digest(state)
    card.package_version = card.package_version or package_version()
    card.created = card.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    card_json = json.dumps(card.to_dict())
    blob = st_save(state, metadata={"format": "pt", "name": card.name, "minenet_card": card_json})
    atomic_write_bytes(weights_path, blob)
    atomic_write_json(card_path, card.to_dict())
    model.card = card
    model.path = weights_path
    return weights_path


def _card_from_dict(data: Any, where: Path) -> ModelCard:
    try:
        return ModelCard.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"model card {where} is invalid: {exc}") from exc


def read_card(path: str | os.PathLike) -> ModelCard:
    """The card beside the weights (``<name>.json``)."""
    _, card_path = _paths(path)
    if not card_path.is_file():
        raise ModelLoadError(f"model card not found: {card_path}")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"model card {card_path} is not valid JSON ({exc}); the file is damaged") from exc
    return _card_from_dict(data, card_path)


def _embedded_card(blob: bytes, where: Path) -> ModelCard | None:
    """The card stored in a safetensors header's metadata, if any."""
    try:
        size = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + size].decode("utf-8"))
        text = (header.get("__metadata__") or {}).get("minenet_card")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    if not text:
        return None
    try:
        return _card_from_dict(json.loads(text), where)
    except (json.JSONDecodeError, ModelLoadError):
        return None


def load_model(name_or_path: str | os.PathLike | SegmentationModel, device: str | torch.device = "cpu") -> SegmentationModel:
    """Load a model by registry name (``"nuclei"``) or by path (with or without suffix)."""
    if isinstance(name_or_path, SegmentationModel):
        return name_or_path
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    weights_path = resolve_model_path(name_or_path)
    try:
        blob = weights_path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read weights {weights_path}: {exc}") from exc
    try:
        state = st_load(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"weights file {weights_path} is damaged or not a safetensors file ({exc})") from exc
    digest = tensors_digest(state)
    _, card_path = _paths(weights_path)
    embedded = _embedded_card(blob, weights_path)
    card = read_card(weights_path) if card_path.is_file() or embedded is None else None
    if card is None or (card.weights_sha256 and card.weights_sha256 != digest):
        # the .json is missing or belongs to other weights (e.g. a save interrupted between
        # its two files): trust the card stored inside the weights file if it matches
        if embedded is not None and embedded.weights_sha256 == digest:
            card = embedded
        else:
            raise ModelLoadError(
                f"weights file {weights_path} does not match its model card (checksum differs): "
                "the file is damaged or was replaced; restore it or choose another model"
            )
    network = card.build_network()
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"weights {weights_path} do not fit the architecture in its card "
            f"({card.in_channels} in, {card.out_channels} out): {str(exc).splitlines()[0]}"
        ) from exc
    network.eval().to(device)
    return SegmentationModel(network, card, weights_path)


# --------------------------------------------------------------------------- registry


def _scan(folder: Path, source: str) -> list[ModelInfo]:
    out = []
    if not folder.is_dir():
        return out
    for weights in sorted(folder.glob("*" + _WEIGHTS_SUFFIX)):
        if weights.name.endswith(".ckpt" + _WEIGHTS_SUFFIX):
            continue  # training checkpoints are not models
        try:
            card = read_card(weights)
        except ModelLoadError:
            continue
        out.append(
            ModelInfo(card.name, card.display_name, card.task, source, weights, card.parent, card.metrics, card.created)
        )
    return out


def list_models() -> list[ModelInfo]:
    """Built-in models (in task order) followed by user models (oldest first)."""
    order = {t: i for i, t in enumerate(TASKS)}
    builtin = sorted(_scan(builtin_weights_dir(), "builtin"), key=lambda m: (order.get(m.task, 99), m.name))
    user = sorted(_scan(user_models_dir(), "user"), key=lambda m: (m.created, m.name))
    return builtin + user


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """The weights file for a registry name or a path; a clear error when there is none."""
    text = str(name_or_path)
    if not text:
        raise ModelLoadError("no model given")
    candidate = Path(text).expanduser()
    looks_like_path = candidate.suffix in (_WEIGHTS_SUFFIX, _CARD_SUFFIX) or os.sep in text or "/" in text
    if not looks_like_path:  # a bare word is a registry name first, a relative path second
        for info in list_models():
            if info.name == text:
                return info.path
    if looks_like_path or candidate.exists():
        if candidate.is_dir():
            found = [p for p in candidate.glob("*" + _WEIGHTS_SUFFIX) if not p.name.endswith(".ckpt" + _WEIGHTS_SUFFIX)]
            if len(found) != 1:
                raise ModelLoadError(f"{candidate} is a folder with {len(found)} models; give the .safetensors file")
            return found[0]
        weights, _ = _paths(candidate)
        if not weights.is_file():
            raise ModelLoadError(f"model file not found: {weights}")
        return weights
    names = ", ".join(m.name for m in list_models()) or "none"
    raise ModelLoadError(f"no model named {text!r} (available: {names})")
