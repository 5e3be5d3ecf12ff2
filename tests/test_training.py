"""Training (generator, files, loss going down, checkpoints, resume, cancel), patches, evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_minenet.data import TrainingExample, load_dataset
from napari_minenet.evaluation import METRIC_KEYS, evaluate, evaluate_examples
from napari_minenet.inference import Cancelled
from napari_minenet.patches import Augmentation, PatchSampler, contour_target
from napari_minenet.training import TrainConfig, TrainingResult, split_examples, train
from napari_minenet.zoo import load_model

SMALL = dict(task="custom", epochs=2, steps_per_epoch=5, batch_size=2, patch_size=64, lr=3e-3, device="cpu")


def _run(gen):
    """All records of a training generator, and its return value."""
    records = []
    while True:
        try:
            records.append(next(gen))
        except StopIteration as stop:
            return records, stop.value


def _files(base: Path) -> dict[str, Path]:
    return {s: base.with_name(base.name + s) for s in (".safetensors", ".json", ".ckpt.safetensors", ".ckpt.json")}


# --------------------------------------------------------------------------- train


def test_train_yields_progress_and_writes_the_model(blob_dataset, tmp_path):
    out = tmp_path / "run" / "blobs"
    records, result = _run(train(blob_dataset, out, TrainConfig(**SMALL)))
    kinds = [r.kind for r in records]
    assert kinds == ["step"] * 5 + ["validation"] + ["step"] * 5 + ["validation", "done"]
    steps = [r for r in records if r.kind == "step"]
    assert [r.step for r in steps] == list(range(1, 11))
    assert [r.epoch for r in steps] == [0] * 5 + [1] * 5
    assert all(r.total_steps == 10 for r in records)
    assert all(math.isfinite(r.loss) and r.loss > 0 and r.lr == pytest.approx(3e-3) for r in steps)
    validations = [r for r in records if r.kind == "validation"]
    assert [(r.epoch, r.step) for r in validations] == [(1, 5), (2, 10)]
    assert all(math.isfinite(r.val_loss) and 0.0 <= r.val_score <= 1.0 for r in validations)
    assert validations[0].improved  # the first validation always improves on "nothing"
    assert records[-1].message.startswith("stopped: epochs")

    assert isinstance(result, TrainingResult)
    assert result.steps == 10 and result.stopped == "epochs"
    for path in _files(out).values():
        assert path.is_file(), path

    model = load_model(out)
    card = model.card
    assert card.name == "blobs" and card.task == "custom" and card.in_channels == 3 and card.out_channels == 1
    assert card.training["steps"] == 10 and card.training["parameters"] == 37_721
    train_ids, val_ids = set(card.training["train_ids"]), set(card.training["val_ids"])
    assert train_ids.isdisjoint(val_ids) and train_ids | val_ids == {f"img{i}" for i in range(6)}
    assert len(val_ids) == 1  # 20 % of 6, rounded
    assert 0.3 <= card.default_threshold <= 0.7
    validation = card.metrics["validation"]
    assert validation["ids"] == sorted(val_ids) and "f1" in validation and "loss" in validation
    meta = json.loads(_files(out)[".ckpt.json"].read_text())
    assert meta["step"] == 10 and meta["epoch"] == 2


def test_training_reduces_the_loss(blob_dataset, tmp_path):
    cfg = TrainConfig(task="custom", epochs=1, steps_per_epoch=30, batch_size=4, patch_size=64, lr=3e-3,
                      device="cpu", seed=0)
    records, _ = _run(train(blob_dataset, tmp_path / "m", cfg))
    losses = [r.loss for r in records if r.kind == "step"]
    assert len(losses) == 30
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.9 * first, (first, last)


def test_same_seed_same_losses(blob_dataset, tmp_path):
    cfg = TrainConfig(**dict(SMALL, epochs=1))
    a = [r.loss for r in _run(train(blob_dataset, tmp_path / "a", cfg))[0] if r.kind == "step"]
    b = [r.loss for r in _run(train(blob_dataset, tmp_path / "b", cfg))[0] if r.kind == "step"]
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_resume_continues_the_step_counter(blob_dataset, tmp_path, monkeypatch):
    out = tmp_path / "resume" / "m"
    first, _ = _run(train(blob_dataset, out, TrainConfig(**dict(SMALL, epochs=1))))
    assert [r.step for r in first if r.kind == "step"] == [1, 2, 3, 4, 5]
    ckpt = out.with_name(out.name + ".ckpt")
    assert json.loads(_files(out)[".ckpt.json"].read_text())["step"] == 5

    def forbidden(*a, **k):
        raise AssertionError("checkpoints must not be unpickled")

    monkeypatch.setattr(torch, "load", forbidden)
    resumed, result = _run(train(blob_dataset, out, TrainConfig(**dict(SMALL, epochs=3)), resume=ckpt))
    steps = [r for r in resumed if r.kind == "step"]
    assert [r.step for r in steps] == list(range(6, 16))
    assert steps[0].epoch == 1 and steps[-1].epoch == 2
    assert [(r.epoch, r.step) for r in resumed if r.kind == "validation"] == [(2, 10), (3, 15)]
    assert result.steps == 15
    assert len([h for h in result.history if "loss" in h]) == 15  # history kept across the restart
    monkeypatch.undo()

    # the resumed run continues exactly where an uninterrupted run would be
    straight, _ = _run(train(blob_dataset, tmp_path / "straight" / "m", TrainConfig(**dict(SMALL, epochs=3))))
    straight_losses = [r.loss for r in straight if r.kind == "step"][5:]
    np.testing.assert_allclose([r.loss for r in steps], straight_losses, rtol=1e-3)


def test_resume_from_a_missing_checkpoint(blob_dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        _run(train(blob_dataset, tmp_path / "m", TrainConfig(**SMALL), resume=tmp_path / "none.ckpt"))


def test_cancel_stops_training_and_writes_no_model(blob_dataset, tmp_path):
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 3

    out = tmp_path / "cancelled"
    gen = train(blob_dataset, out, TrainConfig(**SMALL), cancel=cancel)
    seen = []
    with pytest.raises(Cancelled):
        for record in gen:
            seen.append(record)
    assert [r.step for r in seen] == [1, 2, 3]
    assert not any(p.exists() for p in _files(out).values())


def test_train_on_grey_examples_in_memory_with_separate_validation(make_blobs, tmp_path):
    def example(seed):
        image, labels = make_blobs(64, seed=seed, rgb=False)
        return TrainingExample(f"g{seed}", image, labels > 0, labels)

    cfg = TrainConfig(task="nuclei", epochs=1, steps_per_epoch=3, batch_size=2, patch_size=48, lr=3e-3,
                      device="cpu")
    records, result = _run(train([example(1), example(2)], tmp_path / "grey", cfg, val_data=[example(3)]))
    assert records[-1].kind == "done" and result.steps == 3
    card = load_model(tmp_path / "grey").card
    assert card.in_channels == 1
    assert card.out_channels == 2 and card.instances  # nuclei: contour channel, instances
    assert card.training["val_ids"] == ["g3"] and card.training["train_ids"] == ["g1", "g2"]
    assert card.training["data"] == "examples in memory"
    assert "aji" in card.metrics["validation"]  # instance metrics on validation labels


# --------------------------------------------------------------------------- configuration


def test_train_config_defaults_by_task():
    nuclei = TrainConfig(task="nuclei").resolved()
    assert nuclei.contours is True and nuclei.patch_size == 256 and nuclei.working_long_side is None
    lesion = TrainConfig(task="lesion").resolved()
    assert lesion.contours is False and lesion.working_long_side == 256
    assert TrainConfig(task="custom", patch_size=64, contours=True).resolved().patch_size == 64
    assert TrainConfig(task="custom", contours=True).resolved().contours is True


def test_every_consumer_reads_the_one_task_table(monkeypatch):
    """Card defaults, training defaults, a new card, augmentation and the CLI's --task choices
    all come from tasks.TASK_TABLE: a changed row changes every one of them."""
    import dataclasses

    from napari_minenet import tasks
    from napari_minenet.cli import build_parser
    from napari_minenet.patches import Augmentation
    from napari_minenet.training import default_card
    from napari_minenet.zoo import ModelCard

    lesion = default_card("l", "lesion", contours=False, working_long_side=256)
    assert lesion.fill_holes and lesion.keep_largest and not lesion.instances
    nuclei = default_card("n", "nuclei", contours=True, working_long_side=None)
    assert nuclei.instances and nuclei.min_size == 10 and nuclei.fill_holes and not nuclei.keep_largest
    assert Augmentation.for_task("lesion") == Augmentation(scale=(0.8, 1.25), intensity=0.2)
    assert Augmentation.for_task("unknown") == Augmentation() == Augmentation.for_task("custom")

    changed = dataclasses.replace(tasks.TASK_TABLE["vessels"], patch_size=96, min_size=7, keep_largest=True,
                                  button_text="Find vessels", augmentation={"intensity": 0.5})
    monkeypatch.setitem(tasks.TASK_TABLE, "vessels", changed)
    monkeypatch.setitem(tasks.TASK_TABLE, "organoids", dataclasses.replace(changed, name="organoids"))
    assert TrainConfig(task="vessels").resolved().patch_size == 96
    card = default_card("v", "vessels", contours=False, working_long_side=None)
    assert card.min_size == 7 and card.keep_largest and card.button_text == "Find vessels"
    assert ModelCard(name="v", task="vessels").button_text == "Find vessels"
    assert Augmentation.for_task("vessels").intensity == 0.5
    task_action = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                       if a.dest == "task")
    assert set(task_action.choices) == {"nuclei", "vessels", "lesion", "custom", "organoids"}


@pytest.mark.parametrize("kwargs,message", [
    ({"lr_schedule": "step"}, "lr_schedule"),
    ({"batch_size": 0}, "batch size"),
    ({"patch_size": 16}, "patch size"),
])
def test_train_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs).resolved()


def test_split_examples(blob_dataset):
    examples = load_dataset(blob_dataset)
    trn, val = split_examples(examples, 0.34, seed=3)
    assert len(val) == 2 and len(trn) == 4
    assert {e.id for e in trn}.isdisjoint({e.id for e in val})
    again = split_examples(examples, 0.34, seed=3)
    assert [e.id for e in again[1]] == [e.id for e in val]
    assert split_examples(examples[:1], 0.5, seed=0) == (examples[:1], [])
    assert len(split_examples(examples[:2], 0.9, seed=0)[0]) == 1  # always keep one to train on
    with pytest.raises(ValueError, match="validation fraction"):
        split_examples(examples, 1.0, seed=0)


# --------------------------------------------------------------------------- patches


def test_patch_sampler_shapes_and_targets(blob_dataset):
    examples = load_dataset(blob_dataset)
    sampler = PatchSampler(examples, patch_size=48, batch_size=3, normalization={"mean": [0.5] * 3, "std": [0.25] * 3},
                           in_channels=3, contours=True, augmentation=Augmentation(), seed=1)
    x, y = sampler.sample()
    assert x.shape == (3, 3, 48, 48) and x.dtype == torch.float32
    assert y.shape == (3, 2, 48, 48) and y.dtype == torch.float32
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
    assert torch.isfinite(x).all()
    assert (y[:, 1] <= y[:, 0]).all()  # contours lie inside the foreground
    # the sampler is reproducible from its state
    state = sampler.state()
    a = sampler.sample()
    sampler.set_state(state)
    b = sampler.sample()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_patch_sampler_grey_without_contours(make_blobs):
    image, labels = make_blobs(40, seed=1, rgb=False)
    sampler = PatchSampler([TrainingExample("a", image, labels > 0)], patch_size=32, batch_size=2,
                           normalization={"mean": [0.5], "std": [0.25]}, in_channels=1, seed=0)
    x, y = sampler.sample()
    assert x.shape == (2, 1, 32, 32) and y.shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="no training examples"):
        PatchSampler([], patch_size=32, batch_size=2, normalization={})


def test_contour_target_marks_inner_borders():
    labels = np.zeros((20, 20), np.int32)
    labels[5:15, 5:10] = 1
    labels[5:15, 10:15] = 2
    edges = contour_target(labels, width=1)
    assert edges.dtype == bool
    assert edges[5, 7] and edges[10, 9] and edges[10, 10]  # outer border and the shared border
    assert not edges[10, 7] and not edges[0, 0]
    assert (contour_target(labels, width=2) >= edges).all()
    assert not (contour_target(labels, width=2) & (labels == 0)).any()


# --------------------------------------------------------------------------- evaluation


def test_evaluate_returns_the_documented_keys(blob_dataset, trained_model_path):
    report = evaluate(blob_dataset, trained_model_path, device="cpu")
    assert {"model", "data", "mean", "per_image"} <= set(report)
    assert report["model"] == "blobnet"
    assert report["data"] == str(blob_dataset)
    assert set(report["mean"]) <= set(METRIC_KEYS)
    assert {"f1", "jaccard", "se", "sp", "acc", "auc"} <= set(report["mean"])
    assert all(k == k.lower() for k in report["mean"])
    assert "aji" not in report["mean"]  # a binary model: instance metrics do not apply
    assert [row["id"] for row in report["per_image"]] == [f"img{i}" for i in range(6)]
    for row in report["per_image"]:
        assert set(row) - {"id", "seconds"} <= set(METRIC_KEYS)
    assert report["mean"]["f1"] > 0.9  # the model was trained on these blobs
    assert all(0.0 <= v <= 1.0 for v in report["mean"].values())
    assert json.loads(json.dumps(report)) == report


def test_evaluate_instance_model_adds_aji_and_pq(blob_dataset, tiny_model_path):
    report = evaluate(blob_dataset, tiny_model_path, device="cpu")
    assert {"aji", "pq"} <= set(report["mean"]) <= set(METRIC_KEYS)
    assert all("aji" in row for row in report["per_image"])


def test_evaluate_examples_reports_progress(blob_dataset, trained_model):
    examples = load_dataset(blob_dataset, ["img0", "img1"])
    calls = []
    mean, rows = evaluate_examples(examples, trained_model, device="cpu", progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 2), (1, 2), (2, 2)]
    assert [r["id"] for r in rows] == ["img0", "img1"]
    assert mean["f1"] == pytest.approx(np.mean([r["f1"] for r in rows]))


def test_evaluate_missing_data_folder(tmp_path, tiny_model_path):
    from napari_minenet.data import InputError

    with pytest.raises(InputError, match="data folder not found"):
        evaluate(tmp_path / "missing", tiny_model_path)
