"""``segment``: the one image-in, labels-out path used by the CLI, the widget and the benchmarks."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .data import InputError, check_image
from .inference import CancelCheck, ProgressCallback, predict_tiled
from .postprocess import labels_from_probability
from .zoo import ModelCard, SegmentationModel, load_model

#: above this many pixels ``segment`` keeps no probability maps by default (instance models
#: build the labels band by band from a window of rows: benchmarks/throughput.py's 10,000^2
#: peak), and maps it must hold whole are float16 (half the memory)
LARGE_IMAGE_PIXELS = 50_000_000

__all__ = [
    "SegmentationResult", "StackResult", "segment", "segment_stack", "labels_for", "measure", "summarize",
    "split_planes", "save_measurements",
]


@dataclass
class SegmentationResult:
    labels: np.ndarray  # (H, W) uint32: 0/1 or instance ids
    probability: np.ndarray | None  # (H, W) float32 foreground probability; None when not kept (keep_maps)
    contour: np.ndarray | None  # (H, W) float32 contour probability, when the model has one
    card: ModelCard
    threshold: float
    instances: bool
    min_size: int  # pixels of the image
    pixel_size: float | None = None  # um per pixel of the image, when known
    scale: float = 1.0  # the image was resampled by this for the network
    #: (probability, contour, min size) on the model's grid when post-processing runs there
    work: tuple[np.ndarray, np.ndarray | None, int] | None = None
    size_note: str = ""  # what the automatic size estimate found

    @property
    def count(self) -> int:
        return int(self.labels.max()) if self.instances else int(self.labels.any())

    def relabel(self, threshold: float | None = None, min_size: int | None = None,
                instances: bool | None = None) -> np.ndarray:
        """New labels from the cached probabilities (no network run); updates this result."""
        if self.probability is None:
            raise ValueError("this result kept no probability maps, so it cannot be re-thresholded: segment it "
                             "again with segment(..., keep_maps=True) (images above "
                             f"{LARGE_IMAGE_PIXELS // 1_000_000} Mpx keep none by default, to bound memory)")
        if threshold is not None:
            self.threshold = float(threshold)
        if min_size is not None:
            self.min_size = int(min_size)
        if instances is not None:
            self.instances = bool(instances)
        if self.work is not None:  # post-processing on the model's grid, labels mapped back
            from .auto_size import labels_to_shape

            if min_size is not None:
                self.work = (self.work[0], self.work[1], round(self.min_size * self.scale ** 2))
            work = labels_for(self.work[0], self.work[1], self.card, self.threshold, self.instances, self.work[2])
            self.labels = labels_to_shape(work, self.labels.shape)
            return self.labels
        self.labels = labels_for(self.probability, self.contour, self.card, self.threshold, self.instances,
                                 self.min_size)
        return self.labels


def labels_for(probability: np.ndarray, contour: np.ndarray | None, card: ModelCard, threshold: float,
               instances: bool, min_size: int) -> np.ndarray:
    """Labels from probability maps with the card's post-processing options."""
    return labels_from_probability(
        probability,
        threshold=threshold,
        contour=contour,
        contour_threshold=card.contour_threshold,
        instances=instances,
        min_size=min_size,
        fill_holes=card.fill_holes,
        keep_largest=card.keep_largest,
    )


def segment(
    image: np.ndarray,
    model: SegmentationModel | str = "nuclei",
    *,
    instances: bool | None = None,
    threshold: float | None = None,
    min_size: int | None = None,
    device: str = "auto",
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 1,
    precision: str = "auto",
    test_time_augmentation: int | None = None,
    scale: float | None = None,
    pixel_size: float | str | None = None,
    use_contours: bool = True,
    keep_maps: bool | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> SegmentationResult:
    """Segment one 2-D grey or RGB image.

    ``instances`` defaults to the model card (nuclei: one label per nucleus; vessels and
    lesions: 0/1). ``threshold`` and ``min_size`` default to the card's values.
    ``use_contours=False`` ignores a contour channel and splits instances by the distance
    transform alone (to measure what the contour channel gains). Images larger than
    ``LARGE_IMAGE_PIXELS`` keep their probabilities as float16 to bound memory.

    ``pixel_size`` (um per pixel of the image): the image is resampled to the card's
    ``pixel_size_um`` and the results mapped back (see :mod:`napari_minenet.auto_size`);
    ``"auto"`` estimates the size from a first pass when the card has a typical object
    size; ``None`` (default) runs at the image's own scale. ``scale`` (a resample factor)
    wins over both. Measurements use the pixel size (``result.pixel_size``). Models with a
    pixel size or a typical object size are post-processed on their own grid, so
    ``min_size`` (pixels of the image) is converted to it.

    ``keep_maps``: keep the probability maps in the result (``result.probability``, and
    :meth:`~SegmentationResult.relabel` needs them). Default: for images up to
    ``LARGE_IMAGE_PIXELS``; above it they are ``None``, and instance models never hold
    them whole (labels built band by band from a window of rows, in tiles of at most
    ``bands.STREAMED_TILE_SIZE`` px unless ``tile_size`` is given: a 10,000^2 image then
    costs its labels plus a few rows of tiles). The automatic size estimate keeps them.
    """
    from .auto_size import estimate_and_segment, plan_scale, post_processes_at_model_scale

    model = load_model(model)  # a SegmentationModel is passed through
    card = model.card
    scale, pixel_size, auto = plan_scale(card, pixel_size, scale)
    if auto:
        def run(data, factor):
            return segment(data, model, instances=instances, threshold=threshold, min_size=min_size, device=device,
                           tile_size=tile_size, overlap=overlap, batch_size=batch_size, precision=precision,
                           test_time_augmentation=test_time_augmentation, scale=factor, use_contours=use_contours,
                           keep_maps=True, progress=progress, cancel=cancel)

        result, estimate = estimate_and_segment(image, card, run)
        result.pixel_size, result.size_note = pixel_size, estimate.describe()
        return result
    image = check_image(image)
    if keep_maps is None:
        keep_maps = image.shape[0] * image.shape[1] <= LARGE_IMAGE_PIXELS
    if scale is not None and abs(scale - 1.0) >= 1e-3 and post_processes_at_model_scale(card):
        return _segment_on_model_grid(image, model, scale, pixel_size, instances=instances, threshold=threshold,
                                      min_size=min_size, use_contours=use_contours, keep_maps=keep_maps, device=device,
                                      tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                                      precision=precision, test_time_augmentation=test_time_augmentation,
                                      progress=progress, cancel=cancel)
    instances = card.instances if instances is None else bool(instances)
    threshold = card.default_threshold if threshold is None else float(threshold)
    min_size = card.min_size if min_size is None else int(min_size)
    probs, labels = _predict_and_label(image, model, threshold, instances, min_size, use_contours, keep_maps,
                                       device=device,
                                       tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                                       precision=precision, test_time_augmentation=test_time_augmentation,
                                       scale=scale, progress=progress, cancel=cancel)
    kept = keep_maps and probs is not None
    contour = probs[1] if kept and card.has_contours and use_contours else None
    return SegmentationResult(labels, probs[0] if kept else None, contour, card, threshold, instances, min_size,
                              pixel_size, 1.0 if scale is None else float(scale))


def _predict_and_label(image, model: SegmentationModel, threshold: float, instances: bool, min_size: int,
                       use_contours: bool, keep_maps: bool = True,
                       **predict_options) -> tuple[np.ndarray | None, np.ndarray]:
    """(probability maps, labels) of ``image``; the maps are None when not ``keep_maps`` (an
    instance model then writes them into a window of rows). Where the network leaves CPU
    cores free (a GPU, or fewer torch threads than cores), or the maps are streamed,
    instances are split band by band as rows of tiles finish
    (:class:`~napari_minenet.bands.BandLabeller`: the same objects as :func:`labels_for` on
    the finished maps, with temporaries the size of a band), in a background thread that
    overlaps the network when cores are free, else between rows of tiles. When torch uses
    every core and the maps are kept, the split runs once on the finished maps: bands between
    rows of tiles would overlap nothing and cost 4-8 % more (``benchmarks/band_overlap.py``).
    Images above ``LARGE_IMAGE_PIXELS`` keep their maps as float16."""
    from . import bands as band_module

    card = model.card
    image = check_image(image)
    large = image.shape[0] * image.shape[1] > LARGE_IMAGE_PIXELS
    background = _cores_to_spare(predict_options.get("device", "auto"))
    # (keeping the largest object needs the whole map)
    if not instances or card.keep_largest or (keep_maps and not background):
        probs = predict_tiled(image, model, out_dtype=np.float16 if large else np.float32, **predict_options)
        contour = probs[1] if card.has_contours and use_contours else None
        return (probs if keep_maps else None), labels_for(probs[0], contour, card, threshold, instances, min_size)
    bands = band_module.BandLabeller(
        image.shape[:2], threshold=threshold, min_size=min_size, use_contour=card.has_contours and use_contours,
        contour_threshold=card.contour_threshold, fill_holes=card.fill_holes,
        background=background, max_band_pixels=None if keep_maps else band_module.BAND_PIXELS)
    dtype = np.float16 if large else np.float32
    if not keep_maps and predict_options.get("tile_size") is None:
        predict_options["tile_size"] = min(card.tile_size, band_module.STREAMED_TILE_SIZE)
    try:
        probs = predict_tiled(image, model, out_dtype=dtype, rows_done=bands.rows_done,
                              out=None if keep_maps else bands.maps(card.out_channels, dtype), **predict_options)
        return (probs if keep_maps else None), bands.finish()
    finally:
        bands.close()


def _cores_to_spare(device) -> bool:
    """Whether post-processing in a thread of its own can overlap the network: it runs on a
    GPU, or torch uses fewer threads than this process may use cores."""
    import torch

    from .devices import select_device, usable_cores

    if select_device(device).type != "cpu":
        return True
    return torch.get_num_threads() < usable_cores()


def _segment_on_model_grid(image, model: SegmentationModel, scale: float, pixel_size: float | None, *,
                           instances, threshold, min_size, use_contours, keep_maps,
                           **predict_options) -> SegmentationResult:
    """``segment`` for a resampled image whose model works at a physical scale: the network
    and the post-processing run on the model's grid (``image`` resized by ``scale``), the
    labels come back nearest-neighbour, the probabilities bilinearly."""
    from .auto_size import labels_to_shape, probabilities_to_shape
    from .data import rescale_image

    card = model.card
    image = check_image(image)
    work = rescale_image(image, scale)
    instances = card.instances if instances is None else bool(instances)
    threshold = card.default_threshold if threshold is None else float(threshold)
    work_min = card.min_size if min_size is None else round(int(min_size) * scale ** 2)
    probs, work_labels = _predict_and_label(work, model, threshold, instances, work_min, use_contours, keep_maps,
                                            scale=1.0, **predict_options)
    labels = labels_to_shape(work_labels, image.shape[:2])
    del work_labels
    if probs is None:
        return SegmentationResult(labels, None, None, card, threshold, instances, max(0, round(work_min / scale ** 2)),
                                  pixel_size, scale)
    contour = probs[1] if card.has_contours and use_contours else None
    back = probabilities_to_shape(probs if contour is not None else probs[:1], image.shape[:2])
    return SegmentationResult(labels, back[0], back[1] if contour is not None else None, card, threshold, instances,
                              max(0, round(work_min / scale ** 2)), pixel_size, scale, (probs[0], contour, work_min))


def split_planes(data: np.ndarray, rgb: bool | None = None) -> tuple[tuple[int, ...], bool]:
    """Leading (non-spatial) shape of an image or stack, and whether it is RGB.

    (H, W) -> ((), False); (H, W, 3) -> ((), True); (Z, H, W) -> ((Z,), False);
    (T, Z, H, W, 3) -> ((T, Z), True).
    """
    if rgb is None:
        rgb = data.ndim >= 3 and data.shape[-1] in (3, 4)
    spatial = 3 if rgb else 2
    if data.ndim < spatial:
        raise InputError(f"image with shape {data.shape} has fewer than 2 spatial dimensions")
    return tuple(data.shape[: data.ndim - spatial]), bool(rgb)


@dataclass
class StackResult:
    """Per-plane results of a stack, with labels assembled so ids are unique across planes."""

    planes: list[SegmentationResult]
    lead_shape: tuple[int, ...]

    @property
    def card(self) -> ModelCard:
        return self.planes[0].card

    @property
    def threshold(self) -> float:
        return self.planes[0].threshold

    @property
    def min_size(self) -> int:
        return self.planes[0].min_size

    @property
    def instances(self) -> bool:
        return self.planes[0].instances

    @property
    def pixel_size(self) -> float | None:
        return self.planes[0].pixel_size

    @property
    def labels(self) -> np.ndarray:
        hw = self.planes[0].labels.shape
        out = np.zeros(self.lead_shape + hw, np.uint32)
        offset = 0
        for index, plane in zip(np.ndindex(*self.lead_shape), self.planes):
            labels = plane.labels
            if plane.instances and offset:
                labels = np.where(labels > 0, labels + offset, 0).astype(np.uint32)
            out[index] = labels
            if plane.instances:
                offset = max(offset, int(labels.max()))
        return out

    @property
    def probability(self) -> np.ndarray | None:
        """The planes' foreground probabilities stacked; None when the planes kept none (``keep_maps``)."""
        if any(p.probability is None for p in self.planes):
            return None
        return np.stack([p.probability for p in self.planes]).reshape(
            self.lead_shape + self.planes[0].probability.shape
        )

    @property
    def count(self) -> int:
        return sum(p.count for p in self.planes)

    def relabel(self, threshold: float | None = None, min_size: int | None = None,
                instances: bool | None = None) -> np.ndarray:
        for plane in self.planes:
            plane.relabel(threshold, min_size, instances)
        return self.labels


def segment_stack(
    data: np.ndarray,
    model: SegmentationModel | str = "nuclei",
    *,
    rgb: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: CancelCheck | None = None,
    **kwargs,
) -> StackResult:
    """Segment every 2-D plane of a stack (Z, H, W[, 3]), (T, Z, H, W[, 3]) ...

    ``progress`` counts planes; ``cancel`` is checked between tiles. A 2-D image gives a
    one-plane result.
    """
    model = load_model(model)  # a SegmentationModel is passed through
    lead, rgb = split_planes(data, rgb)
    n = int(math.prod(lead)) if lead else 1
    planes = []
    for k, index in enumerate(np.ndindex(*lead) if lead else [()]):
        if progress is not None:
            progress(k, n)
        planes.append(segment(np.asarray(data[index]), model, cancel=cancel, **kwargs))
    if progress is not None:
        progress(n, n)
    return StackResult(planes, lead)


MEASUREMENT_PROPERTIES = ("label", "area", "centroid", "bbox", "eccentricity", "solidity", "perimeter",
                          "major_axis_length", "minor_axis_length", "orientation", "mean_intensity")


#: lengths (pixels) that get a ``<name>_um`` column when the pixel size is known; ``area`` gets ``area_um2``
LENGTH_COLUMNS = ("centroid-0", "centroid-1", "perimeter", "major_axis_length", "minor_axis_length")


def measure(labels: np.ndarray, image: np.ndarray | None = None,
            pixel_size: float | None = None) -> dict[str, np.ndarray]:
    """Per-object measurements (``skimage.measure.regionprops_table``, pixels); intensity
    columns when an image is given (per channel for RGB); with ``pixel_size`` (um per pixel)
    also ``area_um2`` and the lengths in um (``perimeter_um``, ``centroid-0_um``, ...)."""
    from skimage.measure import regionprops_table

    if labels.ndim != 2:
        raise InputError(f"measurements need 2-D labels, got shape {labels.shape}")
    props = [p for p in MEASUREMENT_PROPERTIES if image is not None or p != "mean_intensity"]
    intensity = None
    if image is not None:
        intensity = check_image(image)
        if intensity.shape[:2] != labels.shape:
            raise InputError(f"image {intensity.shape[:2]} and labels {labels.shape} differ in size")
    table = regionprops_table(labels.astype(np.int64, copy=False), intensity_image=intensity, properties=props)
    if pixel_size:
        table["area_um2"] = table["area"] * float(pixel_size) ** 2
        for column in LENGTH_COLUMNS:
            table[f"{column}_um"] = table[column] * float(pixel_size)
    return table


def summarize(labels: np.ndarray, object_name: str = "objects", instances: bool = True,
              pixel_size: float | None = None) -> str:
    """'42 nuclei, mean area 180 px' (or '12.5% of the image is vessels'); with ``pixel_size``
    (um per pixel) '42 nuclei, mean area 180 px = 11.3 um^2 (diameter 3.8 um)' or
    '12.5% of the image is vessels (1.2 mm^2)'."""
    if labels.size == 0:
        return "nothing segmented"
    if not instances:
        frac = float((labels > 0).mean())
        text = f"{frac:.1%} of the image is {object_name}"
        if pixel_size:
            area = float((labels > 0).sum()) * float(pixel_size) ** 2
            text += f" ({area / 1e6:.3g} mm^2)" if area >= 1e5 else f" ({area:.3g} um^2)"
        return text
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        return f"0 {object_name} found"
    text = f"{areas.size} {object_name}, mean area {areas.mean():.0f} px"
    if pixel_size:
        um2 = areas * float(pixel_size) ** 2
        text += f" = {um2.mean():.3g} um^2 (median diameter {np.median(np.sqrt(4 * um2 / np.pi)):.3g} um)"
    return text


def save_measurements(path, labels: np.ndarray, image: np.ndarray | None = None,
                      pixel_size: float | None = None) -> int:
    """Write per-object measurements as CSV (atomically); returns the number of rows. With
    ``pixel_size`` (um per pixel) the table also has um and um^2 columns (see :func:`measure`)."""
    import csv
    import io

    from .zoo import atomic_write_bytes

    table = measure(labels, image, pixel_size)
    columns = list(table)
    n = len(table[columns[0]]) if columns else 0
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    for i in range(n):
        writer.writerow([table[c][i].item() if hasattr(table[c][i], "item") else table[c][i] for c in columns])
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    return n
