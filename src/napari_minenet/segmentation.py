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

#: above this many pixels, ``segment`` keeps its probability maps as float16 (half the memory)
LARGE_IMAGE_PIXELS = 50_000_000

__all__ = [
    "SegmentationResult", "StackResult", "segment", "segment_stack", "labels_for", "measure", "summarize",
    "split_planes", "save_measurements",
]


@dataclass
class SegmentationResult:
    labels: np.ndarray  # (H, W) uint32: 0/1 or instance ids
    probability: np.ndarray  # (H, W) float32 foreground probability
    contour: np.ndarray | None  # (H, W) float32 contour probability, when the model has one
    card: ModelCard
    threshold: float
    instances: bool
    min_size: int

    @property
    def count(self) -> int:
        return int(self.labels.max()) if self.instances else int(self.labels.any())

    def relabel(self, threshold: float | None = None, min_size: int | None = None,
                instances: bool | None = None) -> np.ndarray:
        """New labels from the cached probabilities (no network run); updates this result."""
        if threshold is not None:
            self.threshold = float(threshold)
        if min_size is not None:
            self.min_size = int(min_size)
        if instances is not None:
            self.instances = bool(instances)
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
    precision: str = "fp32",
    test_time_augmentation: int | None = None,
    scale: float | None = None,
    use_contours: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> SegmentationResult:
    """Segment one 2-D grey or RGB image.

    ``instances`` defaults to the model card (nuclei: one label per nucleus; vessels and
    lesions: 0/1). ``threshold`` and ``min_size`` default to the card's values.
    ``use_contours=False`` ignores a contour channel and splits instances by the distance
    transform alone (to measure what the contour channel gains). Images larger than
    ``LARGE_IMAGE_PIXELS`` keep their probabilities as float16 to bound memory.
    """
    model = load_model(model) if not isinstance(model, SegmentationModel) else model
    card = model.card
    # (predict_tiled validates the image; guard here only so a 1-D array reaches its message)
    large = np.ndim(image) >= 2 and image.shape[0] * image.shape[1] > LARGE_IMAGE_PIXELS
    probs = predict_tiled(image, model, device=device, out_dtype=np.float16 if large else np.float32,
                          tile_size=tile_size, overlap=overlap,
                          batch_size=batch_size, precision=precision, test_time_augmentation=test_time_augmentation,
                          scale=scale, progress=progress, cancel=cancel)
    instances = card.instances if instances is None else bool(instances)
    threshold = card.default_threshold if threshold is None else float(threshold)
    min_size = card.min_size if min_size is None else int(min_size)
    contour = probs[1] if card.has_contours and use_contours else None
    labels = labels_for(probs[0], contour, card, threshold, instances, min_size)
    return SegmentationResult(labels, probs[0], contour, card, threshold, instances, min_size)


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
    def probability(self) -> np.ndarray:
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
    model = load_model(model) if not isinstance(model, SegmentationModel) else model
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


def measure(labels: np.ndarray, image: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-object measurements (``skimage.measure.regionprops_table``); intensity columns when
    an image is given (per channel for RGB)."""
    from skimage.measure import regionprops_table

    if labels.ndim != 2:
        raise InputError(f"measurements need 2-D labels, got shape {labels.shape}")
    props = [p for p in MEASUREMENT_PROPERTIES if image is not None or p != "mean_intensity"]
    intensity = None
    if image is not None:
        intensity = check_image(image)
        if intensity.shape[:2] != labels.shape:
            raise InputError(f"image {intensity.shape[:2]} and labels {labels.shape} differ in size")
    return regionprops_table(labels.astype(np.int64, copy=False), intensity_image=intensity, properties=props)


def summarize(labels: np.ndarray, object_name: str = "objects", instances: bool = True) -> str:
    """'42 nuclei, mean area 180 px' (or '12.5% of the image is vessels')."""
    if labels.size == 0:
        return "nothing segmented"
    if not instances:
        frac = float((labels > 0).mean())
        return f"{frac:.1%} of the image is {object_name}"
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        return f"0 {object_name} found"
    return f"{areas.size} {object_name}, mean area {areas.mean():.0f} px"


def save_measurements(path, labels: np.ndarray, image: np.ndarray | None = None) -> int:
    """Write per-object measurements as CSV (atomically); returns the number of rows."""
    import csv
    import io

    from .zoo import atomic_write_bytes

    table = measure(labels, image)
    columns = list(table)
    n = len(table[columns[0]]) if columns else 0
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    for i in range(n):
        writer.writerow([table[c][i].item() if hasattr(table[c][i], "item") else table[c][i] for c in columns])
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    return n
