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

Every card, wherever it comes from (a ``.json`` file, the copy inside a weights file, or
code), goes through one check, :func:`validate_card`: a card with a field of the wrong
type or out of range, or a ``name`` that is not a plain file name, is refused with a
one-line reason. Listing skips such a card with a :class:`ModelCardWarning` naming it,
so one bad user card never hides the built-in models.

Save order: the weights file is written first (it holds the card too, so it is a whole
model by itself), the ``.json`` copy of the card second. A crash between the two leaves
either new weights with no ``.json`` or new weights beside the old ``.json``; listing and
loading then both use the card inside the weights file, so the pair never disagrees.
Leftover ``.*.tmp`` files of interrupted writes are removed when they are older than an
hour (:func:`~napari_minenet.files.remove_stale_temp_files`, run on listing and saving).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import numbers
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import MAX_TILE_SIZE, MAX_WORKING_LONG_SIDE, MIN_SIDE, _card_statistics
from .errors import ModelLoadError
from .files import atomic_write, atomic_write_bytes, atomic_write_json, remove_stale_temp_files
from .pixel_size import PIXEL_SIZE_RANGE
from .tasks import TASK_TABLE, task

logger = logging.getLogger(__name__)

__all__ = [
    "ModelCard",
    "SegmentationModel",
    "ModelInfo",
    "ModelLoadError",
    "ModelCardWarning",
    "TASKS",
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

#: Per-task defaults: what the button says and how the output is presented (read from
#: the task table, tasks.TASK_TABLE)
TASKS: dict[str, dict[str, Any]] = {
    name: {"display_name": t.display_name, "button_text": t.button_text, "object_name": t.object_name,
           "instances": t.instances}
    for name, t in TASK_TABLE.items()
}

_WEIGHTS_SUFFIX = ".safetensors"
_CARD_SUFFIX = ".json"


class ModelCardWarning(UserWarning):
    """A model in a models folder was skipped (its card is invalid or missing)."""


#: file suffixes of pickled PyTorch / pickle files, which are never loaded
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar")
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


def save_model(model: SegmentationModel, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``<path>.safetensors`` (tensors + the card in its metadata) and the card as
    ``<path>.json`` beside it, each atomically; returns the weights path.

    An existing model at ``path`` is never replaced unless ``overwrite=True``
    (:class:`FileExistsError` otherwise). The card is validated and the weights must be
    finite before anything is written.

    The .safetensors file alone is a complete model and is written first: if a crash
    leaves an old .json beside new weights, or no .json at all, loading and listing notice
    (the card's ``weights_sha256`` is the digest of the tensors) and use the card stored in
    the weights file.
    """
    from safetensors.torch import save as st_save

    weights_path, card_path = _paths(path)
    if weights_path.exists() and not overwrite:
        raise FileExistsError(f"a model already exists at {weights_path}; choose another name "
                              "(or pass overwrite=True to replace it)")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.network.state_dict().items()}
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"refusing to save model {model.card.name!r}: weight {key!r} contains NaN or "
                             "infinite values (training diverged?)")
    card = validate_card(dataclasses.replace(model.card))
    card.weights_sha256 = tensors_digest(state)
    card.package_version = card.package_version or package_version()
    card.created = card.created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    card_json = json.dumps(card.to_dict())
    blob = st_save(state, metadata={"format": "pt", "name": card.name, "minenet_card": card_json})
    if weights_path.parent.is_dir():
        remove_stale_temp_files(weights_path.parent)
    atomic_write_bytes(weights_path, blob)  # first: a complete model on its own
    atomic_write_json(card_path, card.to_dict())
    model.card = card
    model.path = weights_path
    return weights_path


def _card_from_dict(data: Any, where: Path) -> ModelCard:
    try:
        return ModelCard.from_dict(data)
    except (TypeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"model card {where} is invalid: {reason}") from exc


def read_card(path: str | os.PathLike) -> ModelCard:
    """The card beside the weights (``<name>.json``)."""
    _, card_path = _paths(path)
    if not card_path.is_file():
        raise ModelLoadError(f"model card not found: {card_path}")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelLoadError(f"cannot read model card {card_path}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelLoadError(f"model card {card_path} is not valid JSON ({exc}); the file is damaged") from exc
    return _card_from_dict(data, card_path)


#: a safetensors header larger than this is not read when listing (a damaged file)
_MAX_HEADER_BYTES = 100_000_000


def _header_bytes(weights: Path) -> bytes:
    """The 8-byte length and the JSON header of a safetensors file (not the tensors)."""
    with open(weights, "rb") as fh:
        head = fh.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else 0
        return head + (fh.read(size) if 0 < size <= _MAX_HEADER_BYTES else b"")


def _embedded_card(blob: bytes, where: Path) -> ModelCard | None:
    """The card stored in a safetensors header's metadata, if any (and valid)."""
    try:
        size = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + size].decode("utf-8"))
        text = (header.get("__metadata__") or {}).get("minenet_card")
    except (ValueError, UnicodeDecodeError, AttributeError, RecursionError) as exc:
        logger.debug("%s: unreadable safetensors header (%s)", where, exc)
        return None
    if not text:
        return None
    try:
        return _card_from_dict(json.loads(text), where)
    except (json.JSONDecodeError, ModelLoadError) as exc:
        logger.info("%s: the card inside the weights file is invalid, not used (%s)", where, exc)
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
    _check_tensors(state, network.state_dict(), weights_path)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"weights {weights_path} do not fit the architecture in its card "
            f"({card.in_channels} in, {card.out_channels} out): {str(exc).splitlines()[0]}"
        ) from exc
    network.eval().to(device)
    return SegmentationModel(network, card, weights_path)


def _check_tensors(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: Path) -> None:
    """Weights must have the kind of dtype the network stores (float / integer) and be finite."""
    for key, tensor in state.items():
        want = expected.get(key)
        if want is None:
            continue  # load_state_dict(strict=True) names unexpected keys
        if want.is_floating_point() != tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            kind = "floating point" if want.is_floating_point() else "integer"
            raise ModelLoadError(f"weights file {where}: tensor {key!r} has dtype {str(tensor.dtype).replace('torch.', '')}"
                                 f"; expected {kind} ({str(want.dtype).replace('torch.', '')})")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelLoadError(f"weights file {where}: tensor {key!r} contains NaN or infinite values; "
                                 "the model is unusable (retrain it or choose another model)")


# --------------------------------------------------------------------------- registry


def _listing_card(weights: Path) -> ModelCard:
    """The card that :func:`load_model` would use for ``weights``, read without the tensors.

    The ``.json`` card when it belongs to these weights; the card inside the weights file
    when the ``.json`` is missing or belongs to other weights (a save interrupted between
    its two files). Raises :class:`ModelLoadError` when neither is usable.
    """
    _, card_path = _paths(weights)
    try:
        embedded = _embedded_card(_header_bytes(weights), weights)
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
    for weights in sorted(folder.glob("*" + _WEIGHTS_SUFFIX)):
        if weights.name.endswith(".ckpt" + _WEIGHTS_SUFFIX) or weights.name.startswith("."):
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
