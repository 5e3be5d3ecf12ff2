"""Corrected examples on disk and fine-tuning from them (headless core)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

from napari_minenet import files
from napari_minenet.data import InputError, TrainingExample
from napari_minenet.examples import ExampleStore, default_examples_folder
from napari_minenet.finetuning import FinetuneConfig, acceptance, finetune, holdout_split, l2sp_penalty, version_name
from napari_minenet.inference import Cancelled
from napari_minenet.training import run_to_end
from napari_minenet.zoo import ModelCard, SegmentationModel, list_models, load_model, save_model, user_models_dir


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MINENET_HOME", str(tmp_path / "home"))
    torch.set_num_threads(1)


def _pair(seed: int, size: int = 96):
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), 220, np.uint8)
    labels = np.zeros((size, size), np.uint32)
    for i in range(1, 8):
        r, c = rng.integers(10, size - 10, 2)
        rr, cc = disk((r, c), 6, shape=labels.shape)
        image[rr, cc] = (80, 50, 140)
        labels[rr, cc] = i
    image = (image + rng.integers(0, 15, image.shape)).astype(np.uint8)
    return image, labels


def _model(name="parent") -> SegmentationModel:
    torch.manual_seed(0)
    model = SegmentationModel.new(ModelCard(name=name, task="nuclei", out_channels=2, instances=True))
    save_model(model, user_models_dir(create=True) / name)
    return load_model(name)


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_store_roundtrip_and_remove(tmp_path):
    store = ExampleStore(tmp_path / "ex")
    rec1 = store.add(*_pair(0), source="slide.tif", box=(0, 96, 0, 96), model="nuclei", edited_pixels=12)
    rec2 = store.add(*_pair(1), source="slide.tif")
    assert rec1.id != rec2.id and rec1.objects == 7
    reopened = ExampleStore(tmp_path / "ex")
    assert [r.id for r in reopened.records] == [rec1.id, rec2.id]
    loaded = reopened.load()
    image, labels = _pair(0)
    np.testing.assert_array_equal(loaded[0].image, image)
    np.testing.assert_array_equal(loaded[0].labels, labels)
    np.testing.assert_array_equal(loaded[0].mask, labels > 0)
    reopened.remove(rec1.id)
    assert [r.id for r in ExampleStore(tmp_path / "ex").records] == [rec2.id]
    assert not (tmp_path / "ex" / "images" / f"{rec1.id}.tif").exists()


def test_store_rejects_bad_examples(tmp_path):
    store = ExampleStore(tmp_path / "ex")
    image, labels = _pair(0)
    with pytest.raises(InputError, match="differ in size"):
        store.add(image, labels[:50])
    with pytest.raises(InputError, match="at least 32"):
        store.add(image[:20, :20], labels[:20, :20])
    assert len(store) == 0


def test_examples_survive_a_crash_midway(tmp_path, monkeypatch):
    store = ExampleStore(tmp_path / "ex")
    store.add(*_pair(0))
    store.add(*_pair(1))
    real_replace = os.replace
    calls = {"n": 0}

    def crash_on_second_write(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # the third example's labels file: die half-way through the add
            raise OSError("simulated power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", crash_on_second_write)
    with pytest.raises(OSError, match="power cut"):
        store.add(*_pair(2))
    monkeypatch.setattr(files.os, "replace", real_replace)
    reopened = ExampleStore(tmp_path / "ex")
    assert len(reopened) == 2
    examples = reopened.load()
    assert len(examples) == 2 and all(ex.mask.any() for ex in examples)
    assert not list((tmp_path / "ex").rglob("*.tmp"))
    # the store keeps working after the crash
    reopened.add(*_pair(3))
    assert len(ExampleStore(tmp_path / "ex").load()) == 3


def test_damaged_index_is_reported(tmp_path):
    store = ExampleStore(tmp_path / "ex")
    store.add(*_pair(0))
    (tmp_path / "ex" / "examples.json").write_text("{not json")
    with pytest.raises(InputError, match="damaged"):
        ExampleStore(tmp_path / "ex")


def test_default_folder_beside_the_image(tmp_path):
    image = tmp_path / "slide 1.tif"
    image.write_bytes(b"")
    assert default_examples_folder(image, "slide 1") == tmp_path / "slide_1_minenet_examples"
    assert "examples" in str(default_examples_folder(None, "layer"))


def test_holdout_split_strips_and_whole_examples():
    few = [TrainingExample(str(i), *(lambda p: (p[0], p[1] > 0, p[1]))(_pair(i, 128))) for i in range(2)]
    train, held = holdout_split(few, 0.25)
    assert len(train) == 2 and len(held) == 2
    assert train[0].mask.shape == (96, 128) and held[0].mask.shape == (32, 128) or \
        train[0].mask.shape == (128, 96)
    many = few * 3
    train, held = holdout_split(many, 0.25)
    assert len(train) + len(held) == 6 and len(held) == 2
    with pytest.raises(InputError):
        holdout_split([], 0.25)


def test_l2sp_penalty_is_zero_at_the_parent_and_grows():
    parent = _model().network
    penalty = l2sp_penalty(parent, 1.0)
    child = SegmentationModel(parent, ModelCard(name="c")).network
    assert penalty(child).item() == 0.0
    with torch.no_grad():
        next(p for p in child.parameters() if p.ndim > 1).add_(0.1)
    assert penalty(child).item() > 0.0


def test_version_name():
    assert version_name("nuclei").startswith("nuclei-ft-")
    assert version_name("nuclei-ft-20260101-101010").count("-ft-") == 1


def _examples(n=2):
    out = []
    for i in range(n):
        image, labels = _pair(10 + i, 128)
        out.append(TrainingExample(f"e{i}", image, labels > 0, labels))
    return out


def test_finetune_saves_a_better_version_and_leaves_parent(tmp_path):
    parent = _model()
    parent_hash = _sha(parent.path)
    # bounded by steps, not time, so a busy machine cannot change the outcome
    cfg = FinetuneConfig(max_seconds=120, max_steps=20, lr=5e-3, l2sp=0.0, batch_size=2, patch_size=64,
                         steps_per_validation=5)
    gen = finetune(parent, _examples(), cfg)
    records = []
    with pytest.raises(StopIteration) as stop:
        while True:
            records.append(next(gen))
    result = stop.value.value
    assert records[0].kind == "validation" and records[-1].kind == "done"
    assert any(r.kind == "step" for r in records)
    assert result.steps == 20
    assert result.accepted, result.reason
    assert result.after["loss"] < result.before["loss"]
    assert result.saved_to is not None and result.saved_to.is_file()
    child = load_model(result.saved_to)
    assert child.card.parent == "parent"
    assert child.card.training["kind"] == "fine-tune"
    assert "held-out corrections" in child.card.metrics
    assert _sha(parent.path) == parent_hash
    assert any(m.name == child.card.name for m in list_models())


def test_finetune_that_does_not_improve_is_not_kept(tmp_path):
    parent = _model()
    # a learning rate of ~0 cannot improve the held-out loss: the candidate must be rejected
    cfg = FinetuneConfig(max_seconds=3, lr=1e-12, l2sp=0.0, batch_size=2, patch_size=64, steps_per_validation=3,
                         min_gain=1e-6)
    gen = finetune(parent, _examples(), cfg)
    with pytest.raises(StopIteration) as stop:
        while True:
            next(gen)
    result = stop.value.value
    assert not result.accepted and "not better" in result.reason
    assert result.saved_to is None
    assert [m.name for m in list_models() if m.source == "user"] == ["parent"]


def test_finetune_cancel_changes_nothing(tmp_path):
    parent = _model()
    parent_hash = _sha(parent.path)
    state = {k: v.clone() for k, v in parent.network.state_dict().items()}
    steps = {"n": 0}

    def cancel():
        return steps["n"] >= 2

    gen = finetune(parent, _examples(), FinetuneConfig(max_seconds=60, batch_size=2, patch_size=64), cancel=cancel)
    with pytest.raises(Cancelled):
        for rec in gen:
            if rec.kind == "step":
                steps["n"] += 1
    assert _sha(parent.path) == parent_hash
    for k, v in parent.network.state_dict().items():
        torch.testing.assert_close(v, state[k])
    assert [m.name for m in list_models() if m.source == "user"] == ["parent"]


def _finetune_cli(tmp_path, monkeypatch, *, steps: int, lr: str):
    """`napari-minenet finetune` for a fixed number of steps (not a time budget, which a busy
    machine would turn into fewer steps)."""
    import functools

    from napari_minenet import finetuning
    from napari_minenet.cli import main

    monkeypatch.setattr(finetuning, "FinetuneConfig", functools.partial(FinetuneConfig, max_steps=steps))
    _model()
    store = ExampleStore(tmp_path / "ex")
    for i in range(2):
        store.add(*_pair(20 + i, 128))
    out = tmp_path / "tuned"
    code = main(["finetune", "--model", "parent", "--data", str(tmp_path / "ex"), "-o", str(out),
                 "--max-seconds", "300", "--lr", lr, "--l2sp", "0", "--patch-size", "64", "--batch-size", "2"])
    return code, out.with_suffix(".safetensors")


def test_finetune_cli_keeps_a_better_version(tmp_path, capsys, monkeypatch):
    code, weights = _finetune_cli(tmp_path, monkeypatch, steps=18, lr="5e-3")
    text = capsys.readouterr().out
    assert "accepted: held-out loss" in text and code == 0, text[-400:]
    assert weights.is_file() and load_model(weights).card.parent == "parent"


def test_finetune_cli_refuses_a_version_that_is_not_better(tmp_path, capsys, monkeypatch):
    code, weights = _finetune_cli(tmp_path, monkeypatch, steps=4, lr="1e-12")  # the weights cannot move
    text = capsys.readouterr().out
    assert "rejected: not better than the parent" in text and code == 3, text[-400:]
    assert not weights.exists()


@pytest.mark.parametrize("mode", ["norm", "all"])
def test_finetune_train_mode_decides_which_weights_move(mode):
    parent = _model()
    before = {k: v.clone() for k, v in parent.network.named_parameters()}
    cfg = FinetuneConfig(max_seconds=30, max_steps=4, lr=1e-2, l2sp=0.0, batch_size=2, patch_size=64,
                         steps_per_validation=2, train=mode)
    result = run_to_end(finetune(parent, _examples(), cfg))
    assert result.steps == 4
    moved = {k for k, v in result.model.network.named_parameters() if not torch.equal(v.cpu(), before[k])}
    bn_or_head = {k for k in before if ".bn." in k or k.startswith("classifier.")}
    assert moved & bn_or_head, "BatchNorm / head parameters should learn in both modes"
    if mode == "norm":
        assert moved <= bn_or_head, f"convolutions changed in norm mode: {sorted(moved - bn_or_head)[:3]}"
    else:
        assert moved - bn_or_head, "convolutions should learn in 'all' mode"
    # the parent object itself never changes
    assert all(torch.equal(v, before[k]) for k, v in parent.network.named_parameters())


def test_a_version_keeps_the_parents_stored_batchnorm_statistics():
    """With per-image statistics the stored ones are only the prior they are blended with (card
    bn_prior): a new version keeps the parent's, not those of the user's few tiles."""
    parent = _model()
    buffers = {k: v.clone() for k, v in parent.network.named_buffers() if "running_" in k}
    cfg = FinetuneConfig(max_seconds=30, max_steps=4, lr=1e-2, batch_size=2, patch_size=64, steps_per_validation=2)
    result = run_to_end(finetune(parent, _examples(), cfg))
    assert result.steps == 4
    after = dict(result.model.network.named_buffers())
    assert all(torch.equal(after[k].cpu(), v) for k, v in buffers.items())
    moved = [k for k, v in result.model.network.named_parameters() if ".bn." in k]
    assert moved  # (the BatchNorm scales / shifts still learn)


def test_finetune_rejects_unknown_train_mode():
    with pytest.raises(ValueError, match="norm"):
        run_to_end(finetune(_model(), _examples(), FinetuneConfig(max_seconds=5, train="bias")))


def test_acceptance_needs_lower_loss_and_no_lower_f1():
    assert acceptance({"loss": 0.5, "f1": 0.8}, {"loss": 0.4, "f1": 0.81})[0]
    assert acceptance({"loss": 0.5}, {"loss": 0.4})[0]
    # the default rule is the settings' min_gain: just under it is refused, just over it kept
    gain = FinetuneConfig().min_gain
    assert 0 < gain < 1
    assert not acceptance({"loss": 0.5}, {"loss": 0.5 * (1 - 0.9 * gain)})[0]
    assert acceptance({"loss": 0.5}, {"loss": 0.5 * (1 - 1.1 * gain)})[0]
    ok, why = acceptance({"loss": 0.5, "f1": 0.8}, {"loss": 0.4, "f1": 0.7})
    assert not ok and "F1 0.8000 -> 0.7000" in why
    ok, why = acceptance({"loss": 0.5, "f1": 0.8, "aji": 0.6}, {"loss": 0.4, "f1": 0.85, "aji": 0.55})
    assert not ok and "AJI 0.6000 -> 0.5500" in why
    ok, why = acceptance({"loss": 0.5, "f1": 0.8}, {"loss": 0.5, "f1": 0.9})
    assert not ok and "loss" in why
    assert not acceptance({"loss": 0.5}, {"loss": 0.49}, min_gain=0.03)[0]  # -2 %: not enough
    assert acceptance({"loss": 0.5}, {"loss": 0.48}, min_gain=0.03)[0]  # -4 %


def test_norm_parameters_for_mininet():
    from napari_minenet.architectures import build_network
    from napari_minenet.finetuning import norm_parameters

    mini = build_network({"name": "MiniNet"}, 3, 1)
    names = norm_parameters(mini)
    assert "classifier.weight" in names and "stem.bn.weight" in names and "stem.conv.weight" not in names
    assert 500 < sum(p.numel() for n, p in mini.named_parameters() if n in names) < 2000


def test_norm_parameters_for_the_reference_unet():
    """The benchmarks' U-Net comes from MONAI (the ``bench`` extra, not ``testing``)."""
    pytest.importorskip("monai")
    from napari_minenet.architectures import build_network
    from napari_minenet.finetuning import norm_parameters

    unet = build_network({"name": "UNet"}, 3, 1)
    names = norm_parameters(unet)
    convs = [n for n, p in unet.named_parameters() if p.ndim == 4]
    assert names and convs[-1] in names and convs[0] not in names
