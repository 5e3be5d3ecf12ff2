"""``evaluate``: score a model on a dataset folder with the paper's metrics.

Pixel metrics (F1, Jaccard, Se, Sp, Acc, AUC) are computed inside the field of view when
the dataset has ``fov/`` masks (as the paper does for DRIVE); AJI and PQ are added when
the dataset has ``labels/`` and the model produces instances. Keys that do not apply are
left out, as the JSON contract says.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .data import TrainingExample, load_dataset
from .metrics import instance_metrics, mean_metrics, pixel_metrics
from .segmentation import segment
from .zoo import SegmentationModel, load_model

__all__ = ["evaluate", "evaluate_examples", "METRIC_KEYS"]

METRIC_KEYS = ("f1", "jaccard", "se", "sp", "acc", "auc", "aji", "pq")


def evaluate_examples(
    examples: list[TrainingExample],
    model: SegmentationModel | str,
    *,
    device: str = "auto",
    threshold: float | None = None,
    use_contours: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(mean metrics, per-image rows) for examples already in memory."""
    model = load_model(model)  # a SegmentationModel is passed through
    rows = []
    for k, ex in enumerate(examples):
        if progress is not None:
            progress(k, len(examples))
        t0 = time.perf_counter()
        result = segment(ex.image, model, device=device, threshold=threshold, use_contours=use_contours,
                         scale=ex.scale)
        row: dict[str, Any] = {"id": ex.id}
        metrics = pixel_metrics(result.labels > 0, ex.mask, prob=result.probability, fov=ex.fov)
        if ex.labels is not None and result.instances:
            metrics.update(instance_metrics(result.labels, ex.labels))
        row.update({k: float(metrics[k]) for k in METRIC_KEYS if k in metrics and np.isfinite(metrics[k])})
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
    if progress is not None:
        progress(len(examples), len(examples))
    mean = mean_metrics([{k: r[k] for k in METRIC_KEYS if k in r} for r in rows])
    return {k: mean[k] for k in METRIC_KEYS if k in mean}, rows


def evaluate(
    data: str | Path,
    model: SegmentationModel | str,
    *,
    device: str = "auto",
    threshold: float | None = None,
    use_contours: bool = True,
    ids: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """``{"model", "data", "mean": {...}, "per_image": [{"id", ...}]}`` for a dataset folder."""
    model = load_model(model)  # a SegmentationModel is passed through
    examples = load_dataset(data, ids=ids)
    mean, rows = evaluate_examples(examples, model, device=device, threshold=threshold, use_contours=use_contours,
                                   progress=progress)
    report = {
        "model": model.card.name,
        "data": str(data),
        "threshold": model.card.default_threshold if threshold is None else threshold,
        "mean": mean,
        "per_image": rows,
    }
    training = model.card.training or {}
    report["model_info"] = {  # what a comparison between models needs to be fair
        "architecture": model.card.architecture,
        "parameters": sum(p.numel() for p in model.network.parameters()),
        "test_time_augmentation": model.card.test_time_augmentation,
        **{k: training[k] for k in ("command", "steps", "duration_s", "hardware", "stopped") if k in training},
    }
    if not use_contours and model.card.has_contours:
        report["contours"] = "ignored (distance-transform instance splitting)"
    return report
