"""Fine-tuning on fully labelled examples (a data folder): every pixel is truth; a held-out
strip of each example (or whole examples when there are 4 or more) judges the candidate."""

from __future__ import annotations

from ..data import InputError, TrainingExample
from ..losses import MiniNetLoss
from ..training import TrainingProgress
from ..validation import validate
from .config import Outcome, fit_for, sampler_for

__all__ = ["holdout_split", "acceptance", "learn_from_labels"]


def holdout_split(examples: list[TrainingExample], fraction: float = 0.25,
                  min_train: int = 64, min_held: int = 32) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """(train, held-out): whole examples when there are >= 4, else a strip of each example
    (the last ``fraction`` along its longer side). Examples too small to cut train only."""
    if not examples:
        raise InputError("no examples to fine-tune on: add at least one corrected example")
    if len(examples) >= 4:
        n_val = max(1, int(round(fraction * len(examples))))
        return examples[:-n_val], examples[-n_val:]
    train, held = [], []
    for ex in examples:
        h, w = ex.mask.shape
        axis = 0 if h >= w else 1
        length = (h, w)[axis]
        cut = int(round(length * (1 - fraction)))
        if length - cut < min_held or cut < min_train:
            train.append(ex)
            continue

        def part(sl: slice, suffix: str) -> TrainingExample:
            index = (sl, slice(None)) if axis == 0 else (slice(None), sl)
            return TrainingExample(
                f"{ex.id}{suffix}", ex.image[index], ex.mask[index],
                None if ex.labels is None else ex.labels[index], None if ex.fov is None else ex.fov[index], ex.source,
                scale=ex.scale,
            )

        train.append(part(slice(0, cut), ":train"))
        held.append(part(slice(cut, None), ":held-out"))
    return train, held


def acceptance(before: dict[str, float], after: dict[str, float], min_gain: float = 0.03) -> tuple[bool, str]:
    """Whether a fine-tuned version replaces its parent, and why, from their held-out scores.

    All must hold: the held-out loss fell by more than the fraction ``min_gain``, and the
    held-out F1 and, for instance models, AJI (when measured) did not fall. A lower loss alone is not enough:
    a model can become more confident on the pixels it already got right while losing or
    merging objects.
    """
    b_loss, a_loss = before["loss"], after["loss"]
    if not a_loss < b_loss * (1.0 - min_gain):
        return False, (f"not better than the parent on the held-out corrections (loss {b_loss:.4f} -> "
                       f"{a_loss:.4f}, needs -{100 * min_gain:.0f} %); the parent stays selected")
    scores = [k for k in ("f1", "aji") if k in before and k in after]
    change = "".join(f", {k.upper()} {before[k]:.4f} -> {after[k]:.4f}" for k in scores)
    if any(after[k] < before[k] for k in scores):
        return False, (f"not better than the parent on the held-out corrections (loss {b_loss:.4f} -> "
                       f"{a_loss:.4f}{change}); the parent stays selected")
    return True, f"held-out loss {b_loss:.4f} -> {a_loss:.4f}{change}"


def learn_from_labels(parent_model, child, examples, cfg, dev, cancel, pause):
    """Full labels (every pixel is truth): train on a part, judge on a held-out strip."""
    train_ex, held_ex = holdout_split(examples, cfg.holdout_fraction)
    if not train_ex:
        raise InputError("the examples are too small to fine-tune on (need at least 64 x 64 pixels)")
    loss_fn = MiniNetLoss()
    # instance models are judged on the instances users see (AJI), not only on pixels
    instances = child.card.instances and bool(held_ex) and all(ex.labels is not None for ex in held_ex)
    before_loss, before, _ = (validate(parent_model, held_ex, loss_fn, dev, instances=instances) if held_ex
                              else (float("nan"), {}, None))
    yield TrainingProgress("validation", 0, 0, cfg.max_steps, 0.0, val_loss=before_loss, val_score=before.get("f1"),
                           val_metrics=before, message="parent model on the held-out corrections")
    result = yield from fit_for(child, sampler_for(train_ex, child.card, cfg, corrections=False), held_ex, cfg, parent_model, dev,
                             cfg.max_seconds, cancel, pause, instances=instances)
    after, after_loss = dict(result.val_metrics), result.best_val_loss
    if not held_ex:
        accepted, reason = True, "no held-out corrections to compare with (examples too small to split)"
    else:
        accepted, reason = acceptance({"loss": before_loss, **before}, {"loss": after_loss, **after}, cfg.min_gain)
    record = {"train_parts": [ex.id for ex in train_ex], "held_out_parts": [ex.id for ex in held_ex]}
    return Outcome(accepted, reason, {"loss": before_loss, **before}, {"loss": after_loss, **after}, result,
                    result.elapsed, record)
