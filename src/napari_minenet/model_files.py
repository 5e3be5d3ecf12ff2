"""Weights I/O: a model is ``<name>.safetensors`` (the tensors, and a copy of the card in its
metadata; loading never unpickles anything) with ``<name>.json`` (the card) beside it.

Save order: the weights file is written first (it holds the card too, so it is a whole
model by itself), the ``.json`` copy of the card second. A crash between the two leaves
either new weights with no ``.json`` or new weights beside the old ``.json``; listing and
loading then both use the card inside the weights file, so the pair never disagrees.
Every write is atomic: data goes to a temporary file in the target folder, is flushed to
disk, then renamed over the target. Leftover ``.*.tmp`` files of interrupted writes are
removed when they are older than an hour (:func:`~napari_minenet.files.remove_stale_temp_files`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ModelLoadError
from .files import atomic_write_bytes, atomic_write_json, remove_stale_temp_files
from .model_cards import ModelCard, card_from_dict, model_paths, package_version, read_card, validate_card

logger = logging.getLogger(__name__)

__all__ = ["SegmentationModel", "tensors_digest", "save_model", "load_weights", "embedded_card", "header_bytes"]


@dataclass
class SegmentationModel:
    """A network with its card (and the file it came from, if any)."""

    network: torch.nn.Module
    card: ModelCard
    path: Path | None = None

    @classmethod
    def new(cls, card: ModelCard) -> SegmentationModel:
        return cls(card.build_network(), card)



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

    weights_path, card_path = model_paths(path)
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



#: a safetensors header larger than this is not read when listing (a damaged file)
_MAX_HEADER_BYTES = 100_000_000


def header_bytes(weights: Path) -> bytes:
    """The 8-byte length and the JSON header of a safetensors file (not the tensors)."""
    with open(weights, "rb") as fh:
        head = fh.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else 0
        return head + (fh.read(size) if 0 < size <= _MAX_HEADER_BYTES else b"")



def embedded_card(blob: bytes, where: Path) -> ModelCard | None:
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
        return card_from_dict(json.loads(text), where)
    except (json.JSONDecodeError, ModelLoadError) as exc:
        logger.info("%s: the card inside the weights file is invalid, not used (%s)", where, exc)
        return None



def load_weights(weights_path: Path, device: str | torch.device = "cpu") -> SegmentationModel:
    """Load the model whose weights file is ``weights_path`` (checked against its card)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    try:
        blob = weights_path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read weights {weights_path}: {exc}") from exc
    try:
        state = st_load(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"weights file {weights_path} is damaged or not a safetensors file ({exc})") from exc
    digest = tensors_digest(state)
    _, card_path = model_paths(weights_path)
    embedded = embedded_card(blob, weights_path)
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

