"""One optimisation run, step by step: the records it yields (:class:`TrainingProgress`),
what it returns (:class:`TrainingResult`) and its state (:class:`TrainingLoop`: weights,
optimiser, learning-rate schedule, the best validation so far, the clock, checkpoints).

``training.fit`` drives a :class:`TrainingLoop` for both ``train`` and ``finetune``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoints import load_checkpoint, restore_optimizer, save_checkpoint, sub_state
from .data import TrainingExample
from .patches import PatchSampler
from .validation import validate
from .zoo import SegmentationModel

__all__ = ["TrainingProgress", "TrainingResult", "run_to_end", "TrainingLoop"]


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


class TrainingLoop:
    """The state of one optimisation run (what ``fit`` drives): weights, optimiser, the best
    validation so far, steps and the clock (which stops while paused)."""

    def __init__(self, model: SegmentationModel, sampler: PatchSampler, val_examples: list[TrainingExample], *,
                 lr: float, epochs: int, steps_per_epoch: int, lr_schedule: str, max_seconds: float | None,
                 device: torch.device, loss_fn: nn.Module, regularizer, validate_instances: bool):
        self.model, self.sampler, self.val_examples = model, sampler, val_examples
        self.lr, self.lr_schedule, self.max_seconds = lr, lr_schedule, max_seconds
        self.steps_per_epoch, self.total_steps = steps_per_epoch, epochs * steps_per_epoch
        self.dev, self.loss_fn, self.regularizer = device, loss_fn, regularizer
        self.validate_instances = validate_instances
        self.net = model.network.to(device).to(memory_format=torch.channels_last)
        self.initial = copy.deepcopy(self.net.state_dict())
        self.optimizer = torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad], lr=lr)
        self.history: list[dict[str, Any]] = []
        self.best_state = copy.deepcopy(self.net.state_dict())
        self.best_loss, self.best_epoch, self.bad_epochs, self.best_metrics = math.inf, 0, 0, {}
        self.step, self.epoch = 0, 0
        self.start, self.paused_for = time.perf_counter(), 0.0

    def resume(self, path: Path) -> None:
        tensors, meta = load_checkpoint(path)
        self.net.load_state_dict(sub_state(tensors, "model"))
        self.best_state = sub_state(tensors, "best")
        restore_optimizer(self.optimizer, tensors, meta)
        torch.set_rng_state(tensors["rng.torch"])
        self.sampler.set_state(meta["sampler_rng"])
        self.step, self.epoch = meta["step"], meta["epoch"]
        self.best_loss, self.best_epoch, self.bad_epochs = meta["best_val_loss"], meta["best_epoch"], meta["bad_epochs"]
        self.best_metrics, self.history = meta.get("best_metrics", {}), meta.get("history", [])
        self.start = time.perf_counter() - meta["elapsed"]

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.paused_for

    def wait_while_paused(self, pause, cancel) -> None:
        while pause is not None and pause():
            if cancel is not None and cancel():
                return
            time.sleep(0.05)
            self.paused_for += 0.05

    def lr_at(self, step: int) -> float:
        if self.lr_schedule == "constant":
            return self.lr
        frac = step / max(1, self.total_steps)
        if self.max_seconds:
            frac = max(frac, self.elapsed() / self.max_seconds)
        return self.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    def train_step(self) -> TrainingProgress:
        x, y, *weight = self.sampler.sample()
        x = x.to(self.dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(self.dev, non_blocking=True)
        weight = weight[0].to(self.dev, non_blocking=True) if weight else None
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self.loss_fn(self.net(x), y, weight)
        total = loss + self.regularizer(self.net) if self.regularizer is not None else loss
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.step += 1
        value = loss.item()
        self.history.append({"step": self.step, "loss": value, "lr": lr})
        return TrainingProgress("step", self.epoch, self.step, self.total_steps, self.elapsed(), loss=value, lr=lr)

    def validation(self) -> TrainingProgress:
        """Validate (or, without validation data, average the last epoch's training loss)
        and remember the best weights."""
        self.net.eval()
        if self.val_examples:
            vloss, vmetrics, _ = validate(self.model, self.val_examples, self.loss_fn, self.dev,
                                          instances=self.validate_instances)
        else:
            recent = [h["loss"] for h in self.history[-self.steps_per_epoch:] if "loss" in h]
            vloss, vmetrics = (float(np.mean(recent)) if recent else math.inf), {}
        self.net.train()
        improved = vloss < self.best_loss - 1e-5
        if improved:
            self.best_loss, self.best_epoch, self.bad_epochs = vloss, self.epoch, 0
            self.best_state = copy.deepcopy(self.net.state_dict())
            self.best_metrics = vmetrics
        else:
            self.bad_epochs += 1
        self.history.append({"epoch": self.epoch, "step": self.step, "val_loss": vloss, "elapsed": self.elapsed(),
                             **{f"val_{k}": v for k, v in vmetrics.items()}})
        return TrainingProgress("validation", self.epoch, self.step, self.total_steps, self.elapsed(),
                                val_loss=vloss, val_score=vmetrics.get("f1"), val_metrics=vmetrics,
                                improved=improved)

    def save(self, path: Path, meta: dict[str, Any] | None) -> None:
        save_checkpoint(path, network=self.net, best_state=self.best_state, optimizer=self.optimizer,
                        meta=dict(meta or {}, step=self.step, epoch=self.epoch, elapsed=self.elapsed(),
                                  best_val_loss=self.best_loss, best_epoch=self.best_epoch,
                                  bad_epochs=self.bad_epochs, best_metrics=self.best_metrics,
                                  history=self.history, sampler_rng=self.sampler.state()))

    def finish(self, keep: str, stopped: str) -> TrainingResult:
        if keep == "last":
            self.best_state, self.best_epoch = copy.deepcopy(self.net.state_dict()), self.epoch
        self.net.load_state_dict(self.best_state)
        self.net.eval()
        return TrainingResult(self.model, self.history, self.best_epoch, self.best_loss, self.best_metrics, stopped,
                              self.elapsed(), self.step)
