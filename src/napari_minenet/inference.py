"""Tiled inference: image in, probability maps out, in bounded memory.

How a prediction is made (``predict_tiled``):

1. the image is checked and, if the card asks for it, resized to the model's working size;
2. a :class:`~napari_minenet.data.Normalizer` is built from the whole image;
3. BatchNorm statistics are re-estimated on this image (AdaBN, when the card says
   ``bn_statistics == "image"``) from a fixed sample of tiles spread over the whole image,
   so every tile is normalised identically (no disagreement between tiles), then folded
   into the convolutions;
4. the image is cut into overlapping tiles that start on the network's grid (its
   ``size_multiple``: 4 px for Mini-Net),
   tiles run in batches, and each tile's output is blended into the result with weights
   that are 0 near every inner tile edge (where zero padding changes the output), rise
   smoothly across the middle of the overlap and sum exactly to 1 everywhere (a separable
   partition of unity: no weight map, no seams). Every pixel comes from tiles in which it
   lies at least ``overlap / 2 - overlap / 8`` pixels from an inner edge; the network's
   context is ~40 px: with the default 128 px overlap the tiled result differs from the
   untiled one by ~1e-4, with 160 px by ~1e-6 (measured in tests/test_inference.py).

Memory beyond the output arrays is one batch of tiles and its activations.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .adabn import adapt_batchnorm
from .allocator import keep_freed_buffers
from .data import (
    MAX_TILE_SIZE,
    GreyImageWarning,
    Normalizer,
    as_rgb_or_grey,
    check_image,
    rescale_image,
    working_scale,
)
from .devices import device_report, select_device  # noqa: F401 - the public place they were
from .errors import Cancelled
from .inference_graph import inference_network
from .tiling import (  # noqa: F401 - re-exported: tiling used to live here
    _DIHEDRAL,
    GRID,
    _check_views,
    _sample_boxes,
    _transform,
    blend_weights,
    network_grid,
    tile_ranges,
    tile_starts,
)
from .zoo import SegmentationModel, load_model

__all__ = [
    "Cancelled",
    "select_device",
    "device_report",
    "predict",
    "predict_tiled",
    "tile_ranges",
    "tile_starts",
    "blend_weights",
    "adapt_batchnorm",
    "prepare_network",
    "adapt_to_tiles",
    "ready_network",
    "predict_with_network",
    "resolve_precision",
    "native_bf16_cpu",
]

ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]
#: ``rows_done(probs, stop)``: rows [0, stop) of the (C, H, W) maps ``probs`` are final
RowsDone = Callable[[np.ndarray, int], None]

#: images up to this many pixels re-estimate BatchNorm statistics on the whole image (when
#: the image is one tile, that statistics pass is also the prediction: no second pass)
BN_WHOLE_IMAGE_PIXELS = 1 << 20
#: larger images estimate them on a sample of this many pixels (tiles spread over the image)
BN_SAMPLE_PIXELS = 1 << 20
BN_SAMPLE_TILE = 256


# --------------------------------------------------------------------------- network preparation


def prepare_network(model: SegmentationModel, image: np.ndarray, normalizer: Normalizer,
                    device: torch.device, precision: str = "fp32") -> nn.Module:
    """The network ready to run on tiles of ``image``: statistics adapted (that pass in
    ``precision``), BN folded, on device."""
    return _prepare(model, image, normalizer, device, keep_output=False, precision=precision)[0]


def _prepare(model: SegmentationModel, image: np.ndarray, normalizer: Normalizer, device: torch.device,
             keep_output: bool, precision: str = "fp32") -> tuple[nn.Module, torch.Tensor | None]:
    """(network, logits): with ``keep_output`` and an image whose statistics come from the
    whole image, the statistics pass already is the prediction and its logits are kept.
    The statistics pass runs in ``precision`` (bf16: convolutions in bfloat16, the
    statistics accumulated in fp32 by BatchNorm)."""
    net, logits = model.network, None
    if model.card.bn_statistics == "image":
        h, w = image.shape[:2]
        boxes = [(0, h, 0, w)] if h * w <= BN_WHOLE_IMAGE_PIXELS else _sample_boxes(h, w, BN_SAMPLE_PIXELS,
                                                                                    BN_SAMPLE_TILE)
        tiles = [normalizer(image[y0:y1, x0:x1]) for y0, y1, x0, x1 in boxes]
        batch = torch.from_numpy(np.stack(tiles)).to(device)
        with _autocast(device, precision):
            net, out = adapt_batchnorm(net, batch, return_output=True, prior=model.card.bn_prior)
        if keep_output and boxes == [(0, h, 0, w)] and out is not None:
            return net, out
    return ready_network(net, device, precision), logits


def ready_network(network: nn.Module, device: torch.device, precision: str = "fp32") -> nn.Module:
    """A copy of ``network`` with BatchNorm folded and branches merged (``inference_graph``;
    separable pairs multiplied out for bf16 / fp16 only, where that is fastest), on
    ``device`` (channels-last on the CPU): what every tile runs through."""
    fused = inference_network(network, merge_separable=resolve_precision(device, precision) in ("bf16", "fp16"))
    fused = fused.to(device)  # (a copy: the caller's model is untouched)
    return fused.to(memory_format=torch.channels_last) if device.type == "cpu" else fused


def adapt_to_tiles(model: SegmentationModel, tiles: Sequence[np.ndarray], normalizer: Normalizer,
                   device: torch.device) -> nn.Module:
    """``model.network`` with BatchNorm statistics estimated on ``tiles`` (AdaBN), not folded.

    For inputs too large for :func:`predict_tiled`'s own sample (whole slides): the caller
    picks the tiles (e.g. tissue tiles spread over the slide, all the same shape, raw
    pixels), estimates the statistics once and reuses the network for every block, so all
    blocks are normalised alike. A card without per-image statistics gets its network as is.
    """
    if model.card.bn_statistics != "image":
        return model.network
    if not tiles:
        raise ValueError("no tiles to estimate the normalisation statistics from")
    batch = torch.from_numpy(np.stack([normalizer(t) for t in tiles])).to(device)
    return adapt_batchnorm(model.network, batch, prior=model.card.bn_prior).cpu()


def predict_with_network(image: np.ndarray, model: SegmentationModel, network: nn.Module, normalizer: Normalizer,
                         *, device: torch.device, tile_size: int | None = None, overlap: int | None = None,
                         batch_size: int = 1, precision: str = "fp32", progress: ProgressCallback | None = None,
                         cancel: CancelCheck | None = None) -> np.ndarray:
    """Probability maps (C, H, W) of ``image`` with a network from :func:`ready_network` and a
    normaliser chosen by the caller: the same tiles and blending as :func:`predict_tiled`,
    without re-estimating anything from ``image`` (a block of a slide is one part of a
    larger image). No resizing and no test-time augmentation."""
    card = model.card
    tile_size = card.tile_size if tile_size is None else int(tile_size)
    overlap = card.tile_overlap if overlap is None else int(overlap)
    tile_size -= tile_size % network_grid(model.network)
    overlap = min(overlap, tile_size // 2)
    work = as_rgb_or_grey(check_image(image), card.in_channels)
    return _predict_tiles(work, model, device, tile_size, overlap, batch_size, precision, progress, cancel,
                          prepared=(network, normalizer))


# --------------------------------------------------------------------------- prediction


def predict_tiled(
    image: np.ndarray,
    model: SegmentationModel | str,
    *,
    device: str | torch.device = "auto",
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 1,
    precision: str = "auto",
    test_time_augmentation: int | None = None,
    scale: float | None = None,
    out_dtype: type = np.float32,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    rows_done: RowsDone | None = None,
    out=None,
) -> np.ndarray:
    """Probability maps (C, H, W) float32 for a 2-D grey or RGB image of any size.

    ``out_dtype=np.float16`` halves the memory of the result (``segment`` uses it for very
    large images; probabilities keep ~3 significant digits).

    Models with a working size (the card's ``working_long_side``) see the image resized so
    its long side has that size, or by ``scale`` when given (a crop of a larger image must
    be resized like that image; 1.0 = already at working size); the output has the input's
    size.

    ``C`` is the model's output channels (foreground, then contour). ``progress(done,
    total)`` is called after every batch of tiles; ``cancel()`` is checked before each
    batch and raises :class:`Cancelled`. On CUDA out-of-memory the tile size is halved
    and the run retried; below 256 px it falls back to the CPU with a warning.
    ``test_time_augmentation`` (default: the card's) averages the prediction over 1, 2,
    4 or 8 rotations / flips of the image (8 = all of them), at that many times the cost.

    ``precision``: ``auto`` (default) runs the convolutions in bfloat16 on a CPU that has it
    natively (AVX512-BF16 / AMX; ~2-3x faster here, validation F1 / AJI of every built-in
    model within 0.0002 of fp32, docs/benchmarks.md) and in fp32 elsewhere; ``fp32`` forces
    full precision; ``bf16`` / ``fp16`` force autocast to that type.

    ``tile_size`` is from 32 to :data:`~napari_minenet.data.MAX_TILE_SIZE` pixels. A grey
    image given to a colour (3-channel) model gives a :class:`~napari_minenet.data.GreyImageWarning`
    (the prediction is unreliable); turn it into an error with ``warnings.simplefilter("error",
    GreyImageWarning)``. A prediction that is not finite raises ``RuntimeError``.

    ``rows_done(probs, stop)``: rows ``[0, stop)`` of ``probs`` (the array returned) are final
    (:mod:`napari_minenet.bands`): after every row of tiles for an image run as it is with one
    view, else once at the end, always ending with H (after a CUDA out-of-memory retry, again
    with a new array).

    ``out``: a :class:`~napari_minenet.bands.MapRows` window of rows (from ``BandLabeller.maps``)
    to write into and return, where rows are streamed (one view, no resampling): the maps
    are then never whole.
    """
    model = load_model(model)  # a SegmentationModel is passed through
    card = model.card
    image = check_image(image)
    tile_size, overlap = _tiling_settings(card, image, model.network, tile_size, overlap, batch_size, precision)
    dev = select_device(device)
    views = _DIHEDRAL[: _check_views(card.test_time_augmentation if test_time_augmentation is None
                                     else test_time_augmentation)]

    full_hw = image.shape[:2]
    work = rescale_image(image, working_scale(image.shape, card.working_long_side, scale))
    work = as_rgb_or_grey(work, card.in_channels)
    streamed = rows_done if (len(views) == 1 and work.shape[:2] == full_hw) else None
    if out is not None and out.shape != (card.out_channels, *full_hw):
        raise ValueError(f"the window of map rows is {out.shape}, the maps are {(card.out_channels, *full_hw)}")
    if streamed is None:  # (resampled or several views: the maps are made whole first)
        out = None
    probs = _predict_until_it_fits(work, views, model, dev, tile_size, overlap, batch_size, precision, progress,
                                   cancel, out_dtype, streamed, out)
    if probs.shape[1:] != full_hw:
        probs = _resize_probs(probs.astype(np.float32), full_hw).astype(out_dtype, copy=False)
    if rows_done is not None and streamed is None:
        rows_done(probs, full_hw[0])
    return probs


def _predict_until_it_fits(work, views, model, dev, tile_size, overlap, *args) -> np.ndarray:
    """``_predict_views``; on CUDA out of memory, again with half the tile size (with a new
    window of rows, if any), and below 256 px on the CPU."""
    while True:
        try:
            return _predict_views(work, views, model, dev, tile_size, overlap, *args)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if args[-1] is not None:  # (out)
                args = (*args[:-1], args[-1].renewed())
            if tile_size > 256:
                tile_size //= 2
                overlap = min(overlap, tile_size // 2)
                warnings.warn(f"GPU out of memory; retrying with {tile_size} px tiles", RuntimeWarning, stacklevel=3)
            else:
                warnings.warn("GPU out of memory even with small tiles; continuing on the CPU", RuntimeWarning,
                              stacklevel=3)
                dev = torch.device("cpu")


#: (quarter turns, horizontal flip) in the order test-time augmentation uses them

def _tiling_settings(card, image: np.ndarray, network: nn.Module, tile_size, overlap, batch_size,
                     precision: str) -> tuple[int, int]:
    """Checked (tile size, overlap) for ``predict_tiled``: the card's by default, the tile a
    multiple of the network's grid, the overlap at most half a tile; bad values raise."""
    tile_size = card.tile_size if tile_size is None else tile_size
    overlap = card.tile_overlap if overlap is None else overlap
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)):
        raise ValueError(f"tile size must be an integer number of pixels, not {tile_size!r}")
    if tile_size < 32:
        raise ValueError(f"tile size {tile_size} is too small (minimum 32)")
    if tile_size > MAX_TILE_SIZE:
        raise ValueError(f"tile size {tile_size} is too large (maximum {MAX_TILE_SIZE}; larger tiles only "
                         "cost memory)")
    tile_size, overlap = int(tile_size), int(overlap)
    if overlap < 0:
        raise ValueError(f"tile overlap must be >= 0, not {overlap}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, not {batch_size!r}")
    if card.in_channels == 3 and image.ndim == 2:
        warnings.warn(GreyImageWarning(
            f"model {card.name!r} was trained on colour (RGB) images but this image is grey: the result is "
            "unreliable (often far too much foreground); use the colour original"), stacklevel=3)
    _autocast(torch.device("cpu"), precision)  # reject an unknown precision before any work
    tile_size -= tile_size % network_grid(network)
    if overlap > tile_size // 2:
        warnings.warn(f"tile overlap {overlap} reduced to half the tile size ({tile_size // 2})", RuntimeWarning,
                      stacklevel=3)
        overlap = tile_size // 2
    return tile_size, overlap


def _predict_views(work: np.ndarray, views, model, dev, tile_size: int, overlap: int, batch_size: int,
                   precision: str, progress, cancel, out_dtype, rows_done=None, out=None) -> np.ndarray:
    """The tiled prediction averaged over the test-time augmentation ``views`` (``out``: see predict_tiled)."""
    if out is not None:  # (one view, as it is)
        return _predict_tiles(work, model, dev, tile_size, overlap, batch_size, precision, progress, cancel,
                              out_dtype, rows_done=rows_done, out=out)
    probs = None
    for v, (k, flip) in enumerate(views):
        view_progress = None if progress is None else (
            lambda done, total, v=v: progress(v * total + done, len(views) * total))
        out = _predict_tiles(_transform(work, k, flip), model, dev, tile_size, overlap, batch_size, precision,
                             view_progress, cancel, out_dtype, rows_done=rows_done if len(views) == 1 else None)
        out = _transform(out, k, flip, inverse=True, channels_first=True)
        probs = out if probs is None else probs + out
    if len(views) > 1:
        probs = np.ascontiguousarray(probs / len(views), dtype=out_dtype)
    return probs

def predict(image: np.ndarray, model: SegmentationModel | str, **kwargs) -> np.ndarray:
    """Foreground probability (H, W) float32; see :func:`predict_tiled` for the options."""
    return predict_tiled(image, model, **kwargs)[0]


def _predict_tiles(image, model, device, tile_size, overlap, batch_size, precision, progress, cancel,
                   out_dtype=np.float32, prepared=None, rows_done=None, out=None) -> np.ndarray:
    card, (h, w) = model.card, image.shape[:2]
    keep_freed_buffers()  # (once per process: every tile reuses the last one's pages)
    if prepared is None:
        normalizer = Normalizer.for_image(image, card.normalization, card.in_channels)
    else:  # (network, normalizer) chosen by the caller (whole slides)
        net, normalizer = prepared
    if cancel is not None and cancel():
        raise Cancelled()
    grid = network_grid(model.network)
    ys, xs = tile_ranges(h, tile_size, overlap, grid), tile_ranges(w, tile_size, overlap, grid)
    one_tile = len(ys) == 1 and len(xs) == 1
    logits = None
    if prepared is None:
        net, logits = _prepare(model, image, normalizer, device, keep_output=one_tile, precision=precision)
    if logits is not None:  # the statistics pass covered the whole image: it is the prediction
        whole = torch.sigmoid(logits.float())[0].cpu().numpy()
        _check_finite(whole)
        if progress is not None:
            progress(1, 1)
        whole = np.clip(whole, 0.0, 1.0).astype(out_dtype, copy=False)
        if out is not None:  # a window of rows
            out.rows(0, h)[...] = whole
            whole = out
        if rows_done is not None:
            rows_done(whole, h)
        return whole
    wy, wx = blend_weights(h, ys, overlap), blend_weights(w, xs, overlap)
    boxes = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    if out is None:
        out = np.zeros((card.out_channels, h, w), out_dtype)
    rows = out.rows if not isinstance(out, np.ndarray) else lambda r0, r1: out[:, r0:r1]
    total = len(boxes)
    if progress is not None:
        progress(0, total)
    autocast = _autocast(device, precision)
    memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    done = final = 0  # tiles done; rows [0, final) of ``out`` are final (clipped)
    with torch.inference_mode():
        while done < total:
            if cancel is not None and cancel():
                raise Cancelled()
            # a batch holds consecutive tiles of the same shape (edge tiles may be longer)
            first = boxes[done]
            shape = (ys[first[0]][1] - ys[first[0]][0], xs[first[1]][1] - xs[first[1]][0])
            chunk = [first]
            for i, j in boxes[done + 1 : done + batch_size]:
                if (ys[i][1] - ys[i][0], xs[j][1] - xs[j][0]) != shape:
                    break
                chunk.append((i, j))
            batch = np.stack([normalizer(image[ys[i][0] : ys[i][1], xs[j][0] : xs[j][1]]) for i, j in chunk])
            x = torch.from_numpy(batch).to(device).contiguous(memory_format=memory_format)
            with autocast:
                logits = net(x)
            prob = torch.sigmoid(logits.float()).cpu().numpy()
            _check_finite(prob)
            for k, (i, j) in enumerate(chunk):
                weight = wy[i][:, None] * wx[j][None, :]
                rows(ys[i][0], ys[i][1])[:, :, xs[j][0] : xs[j][1]] += prob[k] * weight
            done += len(chunk)
            # rows above the next unfinished row of tiles get no more contributions
            stop = h if done == total else ys[done // len(xs)][0]
            if stop > final:
                done_rows = rows(final, stop)
                np.clip(done_rows, 0.0, 1.0, out=done_rows)
                final = stop
                if rows_done is not None:
                    rows_done(out, stop)
            if progress is not None:
                progress(done, total)
    return out


def _check_finite(prob: np.ndarray) -> None:
    if not np.isfinite(prob).all():
        raise RuntimeError("the network's output is not a number (NaN) for this image: its pixel values or the "
                           "model's weights are out of range; nothing was segmented")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def native_bf16_cpu() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16, read from
    /proc/cpuinfo; False elsewhere, e.g. where emulated bf16 would be slower than fp32)."""
    global _NATIVE_BF16
    if _NATIVE_BF16 is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
                flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        except OSError:
            flags = []
        _NATIVE_BF16 = bool({"avx512_bf16", "amx_bf16"} & set(flags)) and torch.backends.mkldnn.is_available()
    return _NATIVE_BF16


_NATIVE_BF16: bool | None = None


def resolve_precision(device: torch.device, precision: str) -> str:
    """``auto`` -> the fastest precision validated for this device: ``bf16`` on a CPU with
    native bfloat16 (validation F1 / AJI of the built-in models within 0.002 of fp32,
    docs/benchmarks.md), else ``fp32`` (GPUs included: not validated there yet). Other
    values are returned normalised (``float32`` -> ``fp32`` ...); unknown ones raise."""
    p = str(precision).lower()
    p = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(p, p)
    if p not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use auto, fp32, bf16 or fp16")
    if p == "auto":
        return "bf16" if device.type == "cpu" and native_bf16_cpu() else "fp32"
    return p


def _autocast(device: torch.device, precision: str):
    precision = resolve_precision(device, precision)
    if precision in ("fp32", "float32"):
        return torch.autocast(device.type, enabled=False)
    dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}.get(
        precision
    )
    if dtype is None:
        raise ValueError(f"unknown precision {precision!r}: use auto, fp32, bf16 or fp16")
    return torch.autocast(device.type, dtype=dtype)


def _resize_probs(probs: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(probs)[None]
    return torch.nn.functional.interpolate(t, size=hw, mode="bilinear", align_corners=False)[0].numpy()
