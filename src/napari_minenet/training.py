"""The training loop, shared by ``train`` (from scratch) and ``finetune`` (from a parent).

``fit`` is a generator: it yields a :class:`TrainingProgress` after every optimisation step
and after every validation, checks a cancel flag between steps, and returns a
:class:`TrainingResult`. The CLI turns the records into a progress bar, the napari widget
into a progress bar, a loss plot and notifications.

Validation runs the network exactly as segmentation does (``predict_tiled``: per-image
BatchNorm statistics, tiling), so the validation score is the score users get.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import platform
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import TrainingExample, load_dataset, rescale_image, working_scale
from .files import atomic_write_bytes, atomic_write_json
from .inference import Cancelled, predict_tiled, select_device
from .losses import MiniNetLoss
from .metrics import instance_metrics, mean_metrics, pixel_metrics
from .model import count_parameters
from .patches import Augmentation, PatchSampler, example_targets
from .postprocess import labels_from_probability
from .zoo import TASKS, ModelCard, SegmentationModel, save_model

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

#: defaults that differ by task (the rest of TrainConfig applies to all)
TASK_TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    "nuclei": {"contours": True, "patch_size": 256, "working_long_side": None, "min_size": 10},
    # fundus cameras differ in resolution but not in field of view: bring every image to
    # DRIVE's size (584 px long side) so vessel widths match what the model learned
    "vessels": {"contours": False, "patch_size": 256, "working_long_side": 584, "min_size": 0},
    "lesion": {"contours": False, "patch_size": 192, "working_long_side": 256, "min_size": 0},
    "custom": {"contours": False, "patch_size": 256, "working_long_side": None, "min_size": 0},
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

    def resolved(self) -> TrainConfig:
        task = TASK_TRAINING_DEFAULTS.get(self.task, TASK_TRAINING_DEFAULTS["custom"])
        cfg = dataclasses.replace(self)
        if cfg.patch_size is None:
            cfg.patch_size = task["patch_size"]
        if cfg.contours is None:
            cfg.contours = task["contours"]
        if cfg.working_long_side == -1:
            cfg.working_long_side = task["working_long_side"]
        if cfg.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', not {cfg.lr_schedule!r}")
        if cfg.batch_size < 1 or cfg.patch_size < 32:
            raise ValueError("batch size must be >= 1 and patch size >= 32")
        return cfg


@dataclass
class TrainingProgress:
    kind: str  # "step", "validation", "done"; fine-tuning adds "setup" and "checking"
    epoch: int
    step: int
    total_steps: int
    elapsed: float
    loss: float | None = None
    lr: float | None = None
    val_loss: float | None = None
    val_score: float | None = None  # validation F1 (Dice)
    val_metrics: dict[str, float] = field(default_factory=dict)
    improved: bool = False
    message: str = ""


@dataclass
class TrainingResult:
    model: SegmentationModel
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_loss: float
    val_metrics: dict[str, float]
    stopped: str  # "epochs", "early stopping", "time budget", "cancelled"
    elapsed: float
    steps: int


def run_to_end(generator: Generator[TrainingProgress, None, Any],
               on_record: Callable[[TrainingProgress], None] | None = None) -> Any:
    """Drive a training / fine-tuning generator to its end; returns its result."""
    while True:
        try:
            record = next(generator)
        except StopIteration as stop:
            return stop.value
        if on_record is not None:
            on_record(record)


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


def default_card(name: str, task: str, *, contours: bool, working_long_side: int | None) -> ModelCard:
    defaults = TASK_TRAINING_DEFAULTS.get(task, TASK_TRAINING_DEFAULTS["custom"])
    return ModelCard(
        name=name,
        task=task,
        out_channels=2 if contours else 1,
        working_long_side=working_long_side,
        instances=TASKS.get(task, TASKS["custom"])["instances"],
        min_size=defaults["min_size"],
        fill_holes=task in ("lesion", "nuclei"),
        keep_largest=task == "lesion",
    )


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
        before = None if ex.before is None else rescale_image(ex.before, s, labels=True)
        out.append(TrainingExample(ex.id, rescale_image(ex.image, s), mask, labels, fov, ex.source, scale=1.0,
                                   before=before))
    return out


# --------------------------------------------------------------------------- validation


def validate(
    model: SegmentationModel,
    examples: list[TrainingExample],
    loss_fn: nn.Module,
    device: torch.device,
    *,
    instances: bool = False,
    probabilities: list[np.ndarray] | None = None,
) -> tuple[float, dict[str, float], list[np.ndarray]]:
    """Validation loss and mean metrics over ``examples``, predicted like ``segment`` does.

    Returns (loss, metrics, probability maps) so callers can reuse the maps (threshold
    selection) without predicting again.
    """
    losses, rows, probs_out = [], [], []
    card = model.card
    for k, ex in enumerate(examples):
        probs = probabilities[k] if probabilities is not None else predict_tiled(ex.image, model, device=device,
                                                                                 scale=ex.scale)
        probs_out.append(probs)
        target = torch.from_numpy(example_targets(ex, card.has_contours))[None]
        logits = torch.logit(torch.from_numpy(probs)[None].clamp(1e-6, 1 - 1e-6))
        valid = None if ex.fov is None else torch.from_numpy(ex.fov[None, None].astype(np.float32))
        losses.append(float(loss_fn(logits, target, valid)))
        row = pixel_metrics(probs[0] > card.default_threshold, ex.mask, prob=probs[0], fov=ex.fov)
        if instances and ex.labels is not None:
            labels = _labels(probs, card, card.default_threshold)
            row.update(instance_metrics(labels, ex.labels))
        rows.append(row)
    return float(np.mean(losses)) if losses else float("nan"), mean_metrics(rows), probs_out


def _labels(probs: np.ndarray, card: ModelCard, threshold: float) -> np.ndarray:
    return labels_from_probability(
        probs[0],
        threshold=threshold,
        contour=probs[1] if card.has_contours else None,
        contour_threshold=card.contour_threshold,
        instances=card.instances,
        min_size=card.min_size,
        fill_holes=card.fill_holes,
        keep_largest=card.keep_largest,
    )


def choose_threshold(model: SegmentationModel, examples: list[TrainingExample], probs: list[np.ndarray]) -> float:
    """The foreground threshold (0.30 ... 0.70) with the best mean validation F1."""
    if not examples:
        return model.card.default_threshold
    best_t, best_f1 = model.card.default_threshold, -1.0
    for t in np.round(np.arange(0.30, 0.701, 0.05), 2):
        f1 = np.mean([pixel_metrics(p[0] > t, ex.mask, fov=ex.fov)["f1"] for p, ex in zip(probs, examples)])
        if f1 > best_f1 + 1e-6:
            best_t, best_f1 = float(t), float(f1)
    return best_t


def choose_instance_thresholds(model: SegmentationModel, examples: list[TrainingExample],
                               probs: list[np.ndarray]) -> tuple[float, float]:
    """(foreground, contour) thresholds with the best mean validation AJI (instance models
    with labelled validation images); the card's values when there is nothing to tune on."""
    card = model.card
    usable = [(p, ex) for p, ex in zip(probs, examples) if ex.labels is not None]
    if not usable or not card.instances:
        return card.default_threshold, card.contour_threshold
    best, best_aji = (card.default_threshold, card.contour_threshold), -1.0
    contour_grid = (0.4, 0.5, 0.6, 0.7) if card.has_contours else (card.contour_threshold,)
    for t in (0.4, 0.45, 0.5, 0.55, 0.6):
        for ct in contour_grid:
            trial = dataclasses.replace(card, contour_threshold=ct)
            aji = np.mean([instance_metrics(_labels(p, trial, t), ex.labels)["aji"] for p, ex in usable])
            if aji > best_aji + 1e-6:
                best, best_aji = (float(t), float(ct)), float(aji)
    return best


# --------------------------------------------------------------------------- checkpoints


def _state_tensors(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in state.items()}


def save_checkpoint(path: Path, *, network: nn.Module, best_state: dict, optimizer: torch.optim.Optimizer,
                    meta: dict[str, Any]) -> None:
    """Everything needed to resume, as safetensors + JSON (no pickle), written atomically."""
    from safetensors.torch import save as st_save

    tensors = _state_tensors("model", network.state_dict())
    tensors.update(_state_tensors("best", best_state))
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for key, value in st.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = dict(meta, param_groups=opt["param_groups"])
    # the JSON lives inside the tensors file too: the .safetensors alone is a consistent
    # checkpoint even if a crash separates it from the readable .json copy
    blob = st_save(tensors, metadata={"minenet_checkpoint": json.dumps(meta)})
    atomic_write_bytes(path.with_name(path.name + ".safetensors"), blob)
    atomic_write_json(path.with_name(path.name + ".json"), meta)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    base = Path(str(path).removesuffix(".safetensors").removesuffix(".json"))
    tensors_path = base.with_name(base.name + ".safetensors")
    if not tensors_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {tensors_path}")
    with safe_open(str(tensors_path), framework="pt") as fh:
        meta_text = (fh.metadata() or {}).get("minenet_checkpoint")
    if meta_text is None:
        raise ValueError(f"{tensors_path} is not a napari-minenet training checkpoint")
    return load_file(str(tensors_path)), json.loads(meta_text)


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _sub(tensors: dict, prefix: str) -> dict:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


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
    dev = select_device(device)
    net = model.network.to(dev).to(memory_format=torch.channels_last)
    initial = copy.deepcopy(net.state_dict())
    loss_fn = loss_fn or MiniNetLoss()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    total_steps = epochs * steps_per_epoch
    history: list[dict[str, Any]] = []
    best_state = copy.deepcopy(net.state_dict())
    best_loss, best_epoch, bad_epochs, best_metrics = math.inf, 0, 0, {}
    step, epoch, elapsed_before = 0, 0, 0.0

    if resume is not None:
        tensors, meta = load_checkpoint(resume)
        net.load_state_dict(_sub(tensors, "model"))
        best_state = _sub(tensors, "best")
        _restore_optimizer(optimizer, tensors, meta)
        torch.set_rng_state(tensors["rng.torch"])
        sampler.set_state(meta["sampler_rng"])
        step, epoch, elapsed_before = meta["step"], meta["epoch"], meta["elapsed"]
        best_loss, best_epoch, bad_epochs = meta["best_val_loss"], meta["best_epoch"], meta["bad_epochs"]
        best_metrics, history = meta.get("best_metrics", {}), meta.get("history", [])

    start = time.perf_counter() - elapsed_before
    paused_for = 0.0

    def elapsed() -> float:
        return time.perf_counter() - start - paused_for

    def wait_while_paused() -> None:
        nonlocal paused_for
        while pause is not None and pause():
            if cancel is not None and cancel():
                return
            time.sleep(0.05)
            paused_for += 0.05

    def lr_at(s: int) -> float:
        if lr_schedule == "constant":
            return lr
        frac = s / max(1, total_steps)
        if max_seconds:
            frac = max(frac, elapsed() / max_seconds)
        return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    def run_validation() -> TrainingProgress:
        nonlocal best_loss, best_epoch, bad_epochs, best_state, best_metrics
        net.eval()
        if val_examples:
            vloss, vmetrics, _ = validate(model, val_examples, loss_fn, dev, instances=validate_instances)
        else:  # no validation data: track the training loss of the last epoch
            recent = [h["loss"] for h in history[-steps_per_epoch:] if "loss" in h]
            vloss, vmetrics = (float(np.mean(recent)) if recent else math.inf), {}
        net.train()
        improved = vloss < best_loss - 1e-5
        if improved:
            best_loss, best_epoch, bad_epochs = vloss, epoch, 0
            best_state = copy.deepcopy(net.state_dict())
            best_metrics = vmetrics
        else:
            bad_epochs += 1
        record = {"epoch": epoch, "step": step, "val_loss": vloss, "elapsed": elapsed(), **{f"val_{k}": v for k, v in vmetrics.items()}}
        history.append(record)
        return TrainingProgress("validation", epoch, step, total_steps, elapsed(), val_loss=vloss,
                                val_score=vmetrics.get("f1"), val_metrics=vmetrics, improved=improved)

    stopped = "epochs"
    try:
        if validate_first and resume is None:
            yield run_validation()
        net.train()
        while epoch < epochs:
            for _ in range(steps_per_epoch):
                wait_while_paused()
                if cancel is not None and cancel():
                    raise Cancelled()
                if max_seconds is not None and elapsed() >= max_seconds:
                    stopped = "time budget"
                    break
                x, y, *weight = sampler.sample()
                x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
                y = y.to(dev, non_blocking=True)
                weight = weight[0].to(dev, non_blocking=True) if weight else None
                current_lr = lr_at(step)
                for group in optimizer.param_groups:
                    group["lr"] = current_lr
                loss = loss_fn(net(x), y, weight)
                total = loss + regularizer(net) if regularizer is not None else loss
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                step += 1
                loss_value = loss.item()
                history.append({"step": step, "loss": loss_value, "lr": current_lr})
                yield TrainingProgress("step", epoch, step, total_steps, elapsed(), loss=loss_value, lr=current_lr)
            epoch += 1
            yield run_validation()
            if checkpoint is not None:
                save_checkpoint(
                    checkpoint, network=net, best_state=best_state, optimizer=optimizer,
                    meta=dict(checkpoint_meta or {}, step=step, epoch=epoch, elapsed=elapsed(),
                              best_val_loss=best_loss, best_epoch=best_epoch, bad_epochs=bad_epochs,
                              best_metrics=best_metrics, history=history, sampler_rng=sampler.state()),
                )
            if stopped == "time budget":
                break
            if bad_epochs >= patience:
                stopped = "early stopping"
                break
    except Cancelled:
        net.load_state_dict(initial)
        net.eval()
        raise
    except BaseException:
        net.load_state_dict(initial)
        net.eval()
        raise
    if keep == "last":
        best_state, best_epoch = copy.deepcopy(net.state_dict()), epoch
    net.load_state_dict(best_state)
    net.eval()
    result = TrainingResult(model, history, best_epoch, best_loss, best_metrics, stopped, elapsed(), step)
    yield TrainingProgress("done", epoch, step, total_steps, elapsed(), val_loss=best_loss,
                           val_score=best_metrics.get("f1"), val_metrics=best_metrics,
                           message=f"stopped: {stopped}; best epoch {best_epoch}")
    return result


def calibrate_and_score(model: SegmentationModel, val_ex: list[TrainingExample], loss_fn: nn.Module,
                        device: torch.device, source: str) -> tuple[float, dict[str, float]]:
    """Pick the card's thresholds on the validation images and record the validation metrics
    (and, for a contour channel, the same metrics without it) in ``model.card.metrics``."""
    card = model.card
    card.test_time_augmentation = 1
    _, _, probs = validate(model, val_ex, loss_fn, device)
    if not card.instances:
        # test-time augmentation (8 rotations / flips): kept only if it helps on validation
        plain = mean_metrics([pixel_metrics(p[0] > card.default_threshold, ex.mask, prob=p[0], fov=ex.fov)
                              for p, ex in zip(probs, val_ex)])
        tta = [predict_tiled(ex.image, model, device=device, test_time_augmentation=8, scale=ex.scale)
               for ex in val_ex]
        augmented = mean_metrics([pixel_metrics(p[0] > card.default_threshold, ex.mask, prob=p[0], fov=ex.fov)
                                  for p, ex in zip(tta, val_ex)])
        if augmented["f1"] >= plain["f1"] and augmented.get("auc", 1) >= plain.get("auc", 1) and (
                augmented["f1"] > plain["f1"] or augmented.get("auc", 0) > plain.get("auc", 0)):
            card.test_time_augmentation, probs = 8, tta
    if card.instances and any(ex.labels is not None for ex in val_ex):
        card.default_threshold, card.contour_threshold = choose_instance_thresholds(model, val_ex, probs)
    else:
        card.default_threshold = choose_threshold(model, val_ex, probs)
    vloss, vmetrics, _ = validate(model, val_ex, loss_fn, device, instances=card.instances, probabilities=probs)
    card.metrics = {"validation": {"data": source, "ids": [ex.id for ex in val_ex], "loss": vloss,
                                   "threshold": card.default_threshold, "contour_threshold": card.contour_threshold,
                                   "test_time_augmentation": card.test_time_augmentation, **vmetrics}}
    if card.has_contours and card.instances:
        # what the contour channel gains: the same validation, instances split without it
        from .evaluation import evaluate_examples

        without, _ = evaluate_examples(val_ex, model, device=device, use_contours=False)
        card.metrics["validation, contour channel ignored"] = {"data": source, **without}
    return vloss, vmetrics


def train(
    data: str | Path | list[TrainingExample],
    output: str | Path,
    config: TrainConfig | None = None,
    *,
    val_data: str | Path | list[TrainingExample] | None = None,
    name: str | None = None,
    resume: str | Path | None = None,
    command: str = "",
    licence: str = "",
    cancel: Callable[[], bool] | None = None,
) -> Generator[TrainingProgress, None, TrainingResult]:
    """Train a new Mini-Net on a dataset folder and save it to ``output`` (.safetensors + .json).

    A checkpoint ``<output>.ckpt.safetensors/.json`` is written atomically after every
    epoch; pass it as ``resume`` to continue an interrupted run.
    """
    cfg = (config or TrainConfig()).resolved()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    output = Path(output).with_suffix("") if Path(output).suffix in (".safetensors", ".json") else Path(output)
    examples = load_dataset(data) if not isinstance(data, list) else data
    if val_data is not None:
        train_ex, val_ex = examples, (load_dataset(val_data) if not isinstance(val_data, list) else val_data)
    else:
        train_ex, val_ex = split_examples(examples, cfg.val_fraction, cfg.seed)
    name = name or output.name
    card = default_card(name, cfg.task, contours=bool(cfg.contours), working_long_side=cfg.working_long_side)
    in_channels = 1 if all(ex.image.ndim == 2 for ex in train_ex) else 3
    card.in_channels = in_channels
    card.licence = licence
    card.architecture = {"name": cfg.architecture} if cfg.architecture != "MiniNet" else card.architecture
    model = SegmentationModel.new(card)
    dev = select_device(cfg.device)
    sampler = PatchSampler(
        resize_examples(train_ex, cfg.working_long_side),
        patch_size=cfg.patch_size, batch_size=cfg.batch_size, normalization=card.normalization,
        in_channels=in_channels, contours=bool(cfg.contours), augmentation=Augmentation.for_task(cfg.task),
        seed=cfg.seed,
    )
    loss_fn = MiniNetLoss(alpha=cfg.alpha)
    result = yield from fit(
        model, sampler, val_ex, lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=cfg.steps_per_epoch,
        lr_schedule=cfg.lr_schedule, patience=cfg.patience,
        max_seconds=cfg.max_minutes * 60 if cfg.max_minutes else None, device=dev, loss_fn=loss_fn,
        cancel=cancel, checkpoint=output.with_name(output.name + ".ckpt"),
        resume=Path(resume) if resume else None, validate_instances=card.instances,
        checkpoint_meta={"config": dataclasses.asdict(cfg)},
    )
    source = str(data) if not isinstance(data, list) else "examples in memory"
    vloss, vmetrics = calibrate_and_score(model, val_ex, loss_fn, dev, source) if val_ex else (
        result.best_val_loss, result.val_metrics)
    card.training = {
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
        "augmentation": dataclasses.asdict(Augmentation.for_task(cfg.task)),
        "batches": "each batch holds patches of one image (per-image BatchNorm statistics)",
    }
    save_model(model, output, overwrite=True)  # train writes its output (-o), also on a re-run
    result.val_metrics = vmetrics
    return result
