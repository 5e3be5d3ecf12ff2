"""The training loop, shared by ``train`` (from scratch) and ``finetune`` (from a parent).

``fit`` is a generator: it yields a :class:`TrainingProgress` after every optimisation step
and after every validation, checks a cancel flag between steps, and returns a
:class:`TrainingResult`. The CLI turns the records into a progress bar, the napari widget
into a progress bar, a loss plot and notifications.

The loop's state and records live in :mod:`napari_minenet.training_loop`, validation and
calibration in :mod:`napari_minenet.validation`, checkpoints in :mod:`napari_minenet.checkpoints`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import platform
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import TrainingExample, load_dataset, rescale_image, working_scale
from .errors import InputError
from .inference import Cancelled, select_device
from .losses import MiniNetLoss
from .model import count_parameters
from .patches import Augmentation, ParallelSampler, PatchSampler
from .tasks import TASK_TABLE, task
from .training_loop import TrainingLoop, TrainingProgress, TrainingResult, run_to_end
from .validation import calibrate_and_score, validate
from .zoo import ModelCard, SegmentationModel, save_model

__all__ = [
    "TrainConfig",
    "TrainingProgress",
    "TrainingResult",
    "fit",
    "train",
    "validate",
    "split_examples",
    "default_card",
    "hardware_description",
    "run_to_end",
]

#: defaults that differ by task (the rest of TrainConfig applies to all; read from the task
#: table, tasks.TASK_TABLE)
TASK_TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    name: {"contours": t.contours, "patch_size": t.patch_size, "working_long_side": t.working_long_side,
           "min_size": t.min_size}
    for name, t in TASK_TABLE.items()
}


@dataclass
class TrainConfig:
    task: str = "nuclei"
    epochs: int = 100
    steps_per_epoch: int = 100
    patch_size: int | None = None
    batch_size: int = 8
    lr: float = 1e-4  # the paper's initial learning rate
    lr_schedule: str = "constant"  # "constant" (paper) or "cosine" (anneals to the time/step budget)
    patience: int = 4  # early stopping on validation loss (paper: 4)
    seed: int = 0
    device: str = "auto"
    max_minutes: float | None = None
    contours: bool | None = None
    alpha: float = 1.0 / 3.0
    working_long_side: int | None = -1  # -1 = task default
    val_fraction: float = 0.2
    threads: int | None = None
    architecture: str = "MiniNet"  # "UNet": the benchmarks' reference (needs MONAI)
    #: processes that cut and augment patches while the network trains (0: in the training
    #: process). Worth it where the network is fast (a GPU); each worker draws its own stream,
    #: so a resumed run is not step-for-step identical to an uninterrupted one
    workers: int = 0
    #: augmentation that differs from the task table's row (None: the row's value)
    stain: float | None = None
    scale_range: tuple[float, float] | None = None
    #: the training images' pixel size in micrometres, recorded in the card (segment() then
    #: resamples images of another known pixel size to it)
    pixel_size_um: float | None = None

    def augmentation(self) -> Augmentation:
        aug = Augmentation.for_task(self.task)
        if self.stain is not None:
            aug = dataclasses.replace(aug, stain=float(self.stain))
        if self.scale_range is not None:
            aug = dataclasses.replace(aug, scale=tuple(float(v) for v in self.scale_range))
        return aug

    def resolved(self) -> TrainConfig:
        defaults = task(self.task)
        cfg = dataclasses.replace(self)
        if cfg.patch_size is None:
            cfg.patch_size = defaults.patch_size
        if cfg.contours is None:
            cfg.contours = defaults.contours
        if cfg.working_long_side == -1:
            cfg.working_long_side = defaults.working_long_side
        if cfg.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', not {cfg.lr_schedule!r}")
        if cfg.batch_size < 1 or cfg.patch_size < 32:
            raise ValueError("batch size must be >= 1 and patch size >= 32")
        if cfg.pixel_size_um is not None and not 0.02 <= cfg.pixel_size_um <= 50:
            raise ValueError(f"pixel size must be 0.02-50 um, not {cfg.pixel_size_um}")
        if cfg.workers < 0:
            raise ValueError(f"workers must be >= 0, not {cfg.workers}")
        if cfg.stain is not None and not 0 <= cfg.stain <= 1:
            raise ValueError(f"stain jitter must be in [0, 1], not {cfg.stain}")
        if cfg.scale_range is not None and not 0.1 <= cfg.scale_range[0] <= cfg.scale_range[1] <= 10:
            raise ValueError(f"scale range must be 0.1 <= low <= high <= 10, not {cfg.scale_range}")
        return cfg




def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), name)
    except OSError:
        pass
    return f"CPU {name}, {torch.get_num_threads()} torch threads"


def default_card(name: str, task_name: str, *, contours: bool, working_long_side: int | None) -> ModelCard:
    """The card a newly trained model of ``task_name`` starts from (the task table's row)."""
    defaults = task(task_name)
    return ModelCard(
        name=name,
        task=task_name,
        out_channels=2 if contours else 1,
        working_long_side=working_long_side,
        instances=defaults.instances,
        min_size=defaults.min_size,
        fill_holes=defaults.fill_holes,
        keep_largest=defaults.keep_largest,
    )


def _new_card(cfg: TrainConfig, name: str, train_ex: list[TrainingExample], licence: str) -> ModelCard:
    """The card of a model about to be trained: the task's defaults, the pixel size it is
    trained at (``cfg.pixel_size_um``) and, for object tasks, the object size in the training
    labels that automatic sizing compares an image with (``auto_size``)."""
    card = default_card(name, cfg.task, contours=bool(cfg.contours), working_long_side=cfg.working_long_side)
    card.in_channels = 1 if all(ex.image.ndim == 2 for ex in train_ex) else 3
    card.licence = licence
    card.architecture = {"name": cfg.architecture} if cfg.architecture != "MiniNet" else card.architecture
    card.pixel_size_um = cfg.pixel_size_um
    if card.instances and cfg.working_long_side is None:
        card.object_width_px, card.object_diameter_px = object_sizes(train_ex)
    return card


def object_sizes(examples: list[TrainingExample]) -> tuple[float | None, float | None]:
    """(width, diameter) in pixels: the median over images of the mean object width
    (``auto_size.object_width`` of the mask), and the median equivalent diameter of all
    labelled objects. None where no image has enough foreground / labels."""
    from .auto_size import object_width

    widths = [w for w in (object_width(ex.mask) for ex in examples) if w is not None]
    areas = [a[a > 0] for a in (np.bincount(ex.labels.ravel())[1:] for ex in examples if ex.labels is not None)]
    areas = np.concatenate(areas) if areas else np.zeros(0)
    return (round(float(np.median(widths)), 1) if widths else None,
            round(float(np.median(np.sqrt(4 * areas / np.pi))), 1) if areas.size else None)


def split_examples(examples: list[TrainingExample], val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic train / validation split by image (at least one of each when possible)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {val_fraction}")
    if len(examples) < 2 or val_fraction == 0:
        return list(examples), []
    order = np.random.default_rng(seed).permutation(len(examples))
    n_val = min(len(examples) - 1, max(1, int(round(val_fraction * len(examples)))))
    val = [examples[i] for i in sorted(order[:n_val])]
    trn = [examples[i] for i in sorted(order[n_val:])]
    return trn, val


def load_examples(data: str | Path | list) -> tuple[list[TrainingExample], str]:
    """The examples of one dataset folder, several folders (ids must not repeat), or a list of
    examples already in memory; and a description of where they came from (for the card)."""
    if isinstance(data, (str, Path)):
        return load_dataset(data), str(data)
    items = list(data)
    if all(isinstance(ex, TrainingExample) for ex in items):
        return items, "examples in memory"
    examples = [ex for folder in items for ex in load_dataset(folder)]
    seen: set[str] = set()
    repeated = sorted({ex.id for ex in examples if ex.id in seen or seen.add(ex.id)})
    if repeated:
        raise InputError(f"the same image id is in more than one data folder: {', '.join(repeated[:5])}")
    return examples, " + ".join(str(f) for f in items)


def select_ids(examples: list[TrainingExample], patterns: Sequence[str]) -> tuple[list, list]:
    """(matching, rest): examples whose id matches one of the shell-style ``patterns``
    (``tnbc_07_*``)."""
    hit = [ex for ex in examples if any(fnmatch.fnmatchcase(ex.id, p) for p in patterns)]
    ids = {ex.id for ex in hit}
    return hit, [ex for ex in examples if ex.id not in ids]


def resize_examples(examples: list[TrainingExample], long_side: int | None) -> list[TrainingExample]:
    """Examples at the model's working size (``scale`` 1.0 after this), done once before
    sampling patches. Crops use their own ``scale``; whole images go to ``long_side``."""
    out = []
    for ex in examples:
        s = working_scale(ex.image.shape, long_side, ex.scale)
        if abs(s - 1.0) < 1e-3:
            out.append(dataclasses.replace(ex, scale=1.0) if long_side else ex)
            continue
        mask = rescale_image(ex.mask.astype(np.float32), s) > 0.5
        labels = None if ex.labels is None else rescale_image(ex.labels, s, labels=True)
        fov = None if ex.fov is None else rescale_image(ex.fov.astype(np.float32), s) > 0.5
        # "before" is resized exactly like what it is compared with (labels or mask), so pixels
        # the user did not change stay unchanged at the working size
        if ex.before is None:
            before = None
        elif ex.labels is not None:
            before = rescale_image(ex.before, s, labels=True)
        else:
            before = (rescale_image((ex.before > 0).astype(np.float32), s) > 0.5).astype(ex.before.dtype)
        out.append(TrainingExample(ex.id, rescale_image(ex.image, s), mask, labels, fov, ex.source, scale=1.0,
                                   before=before))
    return out


# --------------------------------------------------------------------------- the loop




def fit(
    model: SegmentationModel,
    sampler: PatchSampler,
    val_examples: list[TrainingExample],
    *,
    lr: float,
    epochs: int,
    steps_per_epoch: int,
    lr_schedule: str = "constant",
    patience: int = 4,
    max_seconds: float | None = None,
    device: str | torch.device = "auto",
    loss_fn: nn.Module | None = None,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    cancel: Callable[[], bool] | None = None,
    pause: Callable[[], bool] | None = None,
    checkpoint: Path | None = None,
    resume: Path | None = None,
    validate_instances: bool = False,
    validate_first: bool = False,
    checkpoint_meta: dict[str, Any] | None = None,
    keep: str = "best",
) -> Generator[TrainingProgress, None, TrainingResult]:
    """Optimise ``model.network`` in place on batches from ``sampler``.

    Stops after ``epochs`` epochs, after ``patience`` validations without improvement of
    the validation loss, when ``max_seconds`` have passed, or when ``cancel()`` is true
    (then :class:`Cancelled` is raised and ``model`` is restored to its initial weights).
    While ``pause()`` is true the loop waits and the time budget does not run.
    At the end the network holds the weights with the best validation loss, or with
    ``keep="last"`` the weights of the last step (then validation data is optional and
    only reported).
    """
    loop = TrainingLoop(model, sampler, val_examples, lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch,
                 lr_schedule=lr_schedule, max_seconds=max_seconds, device=select_device(device),
                 loss_fn=loss_fn or MiniNetLoss(), regularizer=regularizer, validate_instances=validate_instances)
    if resume is not None:
        loop.resume(resume)
    stopped = "epochs"
    try:
        if validate_first and resume is None:
            yield loop.validation()
        loop.net.train()
        while loop.epoch < epochs:
            for _ in range(steps_per_epoch):
                loop.wait_while_paused(pause, cancel)
                if cancel is not None and cancel():
                    raise Cancelled()
                if max_seconds is not None and loop.elapsed() >= max_seconds:
                    stopped = "time budget"
                    break
                yield loop.train_step()
            loop.epoch += 1
            yield loop.validation()
            if checkpoint is not None:
                loop.save(checkpoint, checkpoint_meta)
            if stopped == "time budget":
                break
            if loop.bad_epochs >= patience:
                stopped = "early stopping"
                break
    except BaseException:  # cancelled, interrupted or failed: the model is as it was given
        loop.net.load_state_dict(loop.initial)
        loop.net.eval()
        raise
    result = loop.finish(keep, stopped)
    yield TrainingProgress("done", loop.epoch, loop.step, loop.total_steps, result.elapsed,
                           val_loss=result.best_val_loss, val_score=result.val_metrics.get("f1"),
                           val_metrics=result.val_metrics, message=f"stopped: {stopped}; best epoch {result.best_epoch}")
    return result


def _training_record(cfg: TrainConfig, source: str, train_ex: list, val_ex: list, result: TrainingResult,
                     command: str, dev: torch.device, model: SegmentationModel) -> dict[str, Any]:
    """What the model card records of how the model was trained."""
    return {
        "data": source,
        "train_ids": [ex.id for ex in train_ex],
        "val_ids": [ex.id for ex in val_ex],
        "command": command,
        "config": dataclasses.asdict(cfg),
        "epochs_run": sum(1 for h in result.history if "val_loss" in h),
        "steps": result.steps,
        "stopped": result.stopped,
        "best_epoch": result.best_epoch,
        "duration_s": round(result.elapsed, 1),
        "hardware": hardware_description(dev),
        "torch": torch.__version__,
        "parameters": count_parameters(model.network),
        "augmentation": dataclasses.asdict(cfg.augmentation()),
        "batches": "each batch holds patches of one image (per-image BatchNorm statistics)",
    }


def train(
    data: str | Path | list,
    output: str | Path,
    config: TrainConfig | None = None,
    *,
    val_data: str | Path | list | None = None,
    hold_out: Sequence[str] = (),
    exclude: Sequence[str] = (),
    name: str | None = None,
    resume: str | Path | None = None,
    command: str = "",
    licence: str = "",
    cancel: Callable[[], bool] | None = None,
) -> Generator[TrainingProgress, None, TrainingResult]:
    """Train a new Mini-Net on dataset folders and save it to ``output`` (.safetensors + .json).

    ``data`` / ``val_data``: a folder, several folders or examples in memory. Images whose id
    matches a ``hold_out`` pattern (shell style, e.g. ``tnbc_07_*``) are moved to validation,
    those matching ``exclude`` are not used at all; without ``val_data`` and ``hold_out``,
    ``val_fraction`` of the images is held out. Without validation images the weights of the
    last step are kept.

    A checkpoint ``<output>.ckpt.safetensors/.json`` is written atomically after every
    epoch; pass it as ``resume`` to continue an interrupted run.
    """
    cfg = (config or TrainConfig()).resolved()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    output = Path(output).with_suffix("") if Path(output).suffix in (".safetensors", ".json") else Path(output)
    examples, source = load_examples(data)
    examples = select_ids(examples, exclude)[1]
    held, examples = select_ids(examples, hold_out)
    if val_data is not None or held:
        train_ex, val_ex = examples, held + (load_examples(val_data)[0] if val_data is not None else [])
    else:
        train_ex, val_ex = split_examples(examples, cfg.val_fraction, cfg.seed)
    if not train_ex:
        raise InputError("no training images left after --exclude / --hold-out")
    card = _new_card(cfg, name or output.name, train_ex, licence)
    in_channels = card.in_channels
    model = SegmentationModel.new(card)
    dev = select_device(cfg.device)
    sampler = PatchSampler(
        resize_examples(train_ex, cfg.working_long_side),
        patch_size=cfg.patch_size, batch_size=cfg.batch_size, normalization=card.normalization,
        in_channels=in_channels, contours=bool(cfg.contours), augmentation=cfg.augmentation(),
        seed=cfg.seed,
    )
    if cfg.workers:
        sampler = ParallelSampler(sampler, cfg.workers, pin_memory=dev.type == "cuda")
    loss_fn = MiniNetLoss(alpha=cfg.alpha)
    try:
        result = yield from fit(
            model, sampler, val_ex, lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=cfg.steps_per_epoch,
            lr_schedule=cfg.lr_schedule, patience=cfg.patience,
            max_seconds=cfg.max_minutes * 60 if cfg.max_minutes else None, device=dev, loss_fn=loss_fn,
            cancel=cancel, checkpoint=output.with_name(output.name + ".ckpt"),
            resume=Path(resume) if resume else None, validate_instances=card.instances,
            checkpoint_meta={"config": dataclasses.asdict(cfg)}, keep="best" if val_ex else "last",
        )
    finally:
        if isinstance(sampler, ParallelSampler):
            sampler.close()
    vloss, vmetrics = calibrate_and_score(model, val_ex, loss_fn, dev, source) if val_ex else (
        result.best_val_loss, result.val_metrics)
    card.training = _training_record(cfg, source, train_ex, val_ex, result, command, dev, model)
    save_model(model, output, overwrite=True)  # train writes its output (-o), also on a re-run
    result.val_metrics = vmetrics
    return result
