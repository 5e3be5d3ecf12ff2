"""Learning from the user's edits: corrections, the simulated user, the store, the judge."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.draw import disk

from napari_minenet.data import InputError, TrainingExample
from napari_minenet.edits import (
    JudgeRule,
    correction_acceptance,
    correction_scores,
    edited_pixels,
    find_corrections,
)
from napari_minenet.examples import ExampleStore
from napari_minenet.finetuning import FinetuneConfig, finetune
from napari_minenet.patches import PatchSampler
from napari_minenet.simulated_user import simulate_corrections
from napari_minenet.training import resize_examples, run_to_end
from napari_minenet.zoo import ModelCard, SegmentationModel, load_model, save_model, user_models_dir


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MINENET_HOME", str(tmp_path / "home"))
    torch.set_num_threads(1)


def _blobs(centres, shape=(96, 96), radius=6) -> np.ndarray:
    labels = np.zeros(shape, np.uint32)
    for i, (r, c) in enumerate(centres, start=1):
        rr, cc = disk((r, c), radius, shape=shape)
        labels[rr, cc] = i
    return labels


def test_edited_pixels_sees_paint_erase_and_split():
    before = _blobs([(20, 20), (60, 60)])
    after = before.copy()
    after[before == 1] = 0  # erased
    painted = _blobs([(20, 70)]) > 0
    after[painted] = 7  # painted
    edited = edited_pixels(before, after)
    assert edited[before == 1].all() and edited[painted].all()
    assert not edited[before == 2].any()
    # a split keeps the foreground but moves boundaries
    merged = np.zeros((40, 40), np.uint32)
    merged[10:30, 5:35] = 1
    split = merged.copy()
    split[10:30, 20:35] = 2
    assert edited_pixels(merged, split).any()
    assert not edited_pixels(merged, merged).any()


def test_find_corrections_groups_each_edit_with_a_margin():
    before = _blobs([(20, 20), (60, 60), (80, 20)])
    after = before.copy()
    after[before == 1] = 0
    after[_blobs([(30, 75)]) > 0] = 9
    corr = find_corrections(before, after, margin=3)
    assert corr.count == 2
    assert sorted(corr.kinds) == ["added", "removed"]
    region_of_erased = corr.regions[20, 20]
    assert region_of_erased > 0 and corr.regions[60, 60] == 0  # the untouched nucleus is not a correction
    # the margin reaches beyond the object
    assert corr.regions[20, 20 + 6 + 2] == region_of_erased
    assert find_corrections(before, before).count == 0


def test_binary_corrections_are_the_edited_pieces_not_the_whole_vessel_tree():
    # a vessel-like binary mask: one connected tree; the user paints two missed branches
    # far apart and erases one false piece. Each is its own correction; the tree is not.
    before = np.zeros((120, 120), np.uint8)
    before[60, 5:115] = 1  # trunk
    before[10:60, 30] = 1  # branch
    before[60:110, 90] = 1  # branch
    after = before.astype(bool).copy()
    after[10:60, 60] = True  # missed branch, touching the trunk
    after[60:110, 15] = True  # another missed branch
    after[10:60, 30] = False  # a false branch erased
    corr = find_corrections(before, after, margin=2, objects=False)
    assert corr.count == 3
    assert sorted(corr.kinds) == ["added", "added", "removed"]
    assert corr.regions[60, 100] == 0 and corr.regions[100, 90] == 0  # untouched trunk and branch
    assert corr.mask().mean() < 0.2
    # as instance labels the tree would be one object that every edit touches
    assert find_corrections(before, after, margin=2).count == 1


def test_resizing_a_binary_example_invents_no_edits():
    # STARE images are resized to the vessels model's working size (584 px long side): the
    # unedited "before" must stay equal to the mask there, or every vessel border becomes an edit
    rng = np.random.default_rng(0)
    mask = ndi.binary_dilation(rng.random((140, 170)) > 0.985, iterations=2)
    image = rng.integers(0, 255, (140, 170, 3), dtype=np.uint8)
    ex = TrainingExample("v", image, mask, None, None, "test", before=mask.astype(np.uint8))
    (small,) = resize_examples([ex], 120)
    assert small.mask.shape == (99, 120)
    assert find_corrections(small.before, small.mask, objects=False).count == 0
    edited = mask.copy()
    edited[60:80, 60:80] = True
    (small,) = resize_examples([dataclasses.replace(ex, mask=edited)], 120)
    assert find_corrections(small.before, small.mask, objects=False).count == 1


RULE = JudgeRule(min_loss_drop=0.02, min_agreement_gain=0.0, max_rest_changed=0.02)


def test_correction_scores_count_fixed_broken_and_rest():
    before = _blobs([(20, 20), (60, 60)])
    after = before.copy()
    after[before == 1] = 0
    after[_blobs([(20, 70)]) > 0] = 5
    corr = find_corrections(before, after, margin=2)
    corrected = after > 0
    parent = before > 0
    parent_prob = np.where(parent, 0.9, 0.1)
    # a candidate that reproduces both corrections and changes nothing else
    good_prob = np.where(corrected, 0.8, 0.2)
    s = correction_scores(corrected, parent, corrected, corr, [1, 2], candidate_prob=good_prob,
                          parent_prob=parent_prob)
    assert (s.held_out, s.fixed, s.broken, s.parent_fixed) == (2, 2, 0, 0)
    assert s.rest_changed_fraction == 0.0 and s.loss_drop > 0.5
    assert "2 corrections it did not see" in s.summary() and "2 fixed outright" in s.summary()
    ok, why = correction_acceptance(s, RULE)
    assert ok and "2 fixed outright" in why and "closer to them" in why
    # one that moves a little towards them without flipping any: kept on the loss
    near_prob = np.where(corrected & ~parent, 0.3, np.where(parent & ~corrected, 0.7, parent_prob))
    s = correction_scores(parent, parent, corrected, corr, [1, 2], candidate_prob=near_prob, parent_prob=parent_prob)
    assert s.fixed == 0 and s.loss_drop > 0.02
    assert correction_acceptance(s, RULE)[0]
    # one that ignores them and also drops the untouched nucleus
    bad = parent.copy()
    bad[before == 2] = False
    s = correction_scores(bad, parent, corrected, corr, [1, 2], candidate_prob=np.where(bad, 0.9, 0.1),
                          parent_prob=parent_prob)
    assert s.fixed == 0 and s.rest_changed > 0 and s.rest_changed_fraction > 0.01
    ok, why = correction_acceptance(s, RULE)
    assert not ok and "0 fixed outright" in why and "not close enough" in why
    # close to the corrections but changing much of the rest
    drifted = corrected.copy()
    drifted[75:95, 0:40] = True  # foreground where nobody corrected anything
    s = correction_scores(drifted, parent, corrected, corr, [1, 2], candidate_prob=good_prob, parent_prob=parent_prob)
    ok, why = correction_acceptance(s, RULE)
    assert not ok and "of what you did not correct" in why
    ok, why = correction_acceptance(s, JudgeRule(min_loss_drop=0.02, max_rest_changed=0.0125))
    assert not ok and "changes more than 1.25 % of what you did not correct" in why
    # the vessels kind of rule: closer on the loss is not enough, the edited pixels must flip
    s = correction_scores(parent, parent, corrected, corr, [1, 2], candidate_prob=near_prob, parent_prob=parent_prob)
    ok, why = correction_acceptance(s, JudgeRule(min_loss_drop=0.0, min_agreement_gain=0.08))
    assert not ok and "reproduces too little" in why and s.agreement_gain == 0.0
    s = correction_scores(corrected, parent, corrected, corr, [1, 2], candidate_prob=good_prob, parent_prob=parent_prob)
    assert s.agreement_gain == 1.0 and "right on 100 % of their pixels (was 0 %)" in s.summary()
    assert correction_acceptance(s, JudgeRule(min_loss_drop=0.0, min_agreement_gain=0.08))[0]


def test_judge_rules_per_task_and_overrides():
    from napari_minenet.finetuning import JUDGE_RULES

    cfg = FinetuneConfig()
    assert cfg.judge_rule("nuclei") == JUDGE_RULES["nuclei"]
    assert cfg.judge_rule("vessels").min_agreement_gain > cfg.judge_rule("nuclei").min_agreement_gain
    assert cfg.judge_rule("lesion") == JUDGE_RULES["nuclei"]  # not measured: the stricter rule
    assert FinetuneConfig(min_loss_drop=0.5).judge_rule("vessels").min_loss_drop == 0.5
    assert FinetuneConfig(min_loss_drop=0.5).judge_rule("vessels").min_agreement_gain == JUDGE_RULES[
        "vessels"].min_agreement_gain


def test_simulated_user_paints_missed_erases_false_and_splits():
    truth = _blobs([(20, 20), (20, 60), (60, 20), (60, 45)])
    pred = np.zeros_like(truth)
    pred[truth == 1] = 1  # found
    # missed: truth 2; false: a blob where nothing is; merged: truth 3 and 4 as one object
    pred[_blobs([(80, 80)]) > 0] = 2
    pred[(truth == 3) | (truth == 4)] = 3
    pred[58:63, 20:46] = 3
    prob = (pred > 0).astype(np.float32)
    out, kinds = simulate_corrections(pred, truth, 10, prob=prob)
    assert sorted(kinds) == ["added", "removed", "split"]
    assert (out[truth == 2] > 0).all()  # painted
    assert not out[_blobs([(80, 80)]) > 0].any()  # erased
    assert len(np.unique(out[(truth == 3) | (truth == 4)])) == 2  # split into two
    out1, kinds1 = simulate_corrections(pred, truth, 1, prob=prob)
    assert kinds1 == ["added"] and (out1[truth == 2] > 0).all() and out1[80, 80] > 0
    # binary models: pieces of the difference
    b_out, b_kinds = simulate_corrections((pred > 0).astype(np.uint32), (truth > 0).astype(np.uint32), 2,
                                          instances=False)
    assert sorted(b_kinds) == ["added", "removed"] and set(np.unique(b_out)) <= {0, 1}


def test_store_keeps_the_prediction_before_the_edit(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    before = _blobs([(20, 20)], shape=(64, 64))
    after = before.copy()
    after[_blobs([(45, 45)], shape=(64, 64)) > 0] = 2
    store = ExampleStore(tmp_path / "ex")
    rec = store.add(image, after, before=before, source="a.tif")
    assert rec.has_before
    plain = store.add(image, after, source="b.tif")
    loaded = ExampleStore(tmp_path / "ex").load()
    assert np.array_equal(loaded[0].before, before) and loaded[1].before is None
    assert plain.has_before is False
    with pytest.raises(InputError, match="differ in size"):
        store.add(image, after, before=before[:40])


@pytest.mark.parametrize("labels, message", [
    (np.full((64, 64), np.nan), "NaN"),
    (np.full((64, 64), 0.5), "whole-number"),
    (np.full((64, 64), 2**33, np.int64), "above"),
    (np.full((64, 64), -1, np.int32), "negative"),
    (np.zeros((64, 64), np.complex64), "integer object ids"),
    (np.zeros((64, 64, 3), np.uint8), "2-D plane"),
])
def test_store_refuses_labels_it_cannot_keep(tmp_path, labels, message):
    store = ExampleStore(tmp_path / "ex")
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    with pytest.raises(InputError, match=message):
        store.add(image, labels)
    assert len(ExampleStore(tmp_path / "ex")) == 0
    assert not any((tmp_path / "ex").rglob("*.tif"))


def test_store_never_touches_files_outside_its_folder(tmp_path):
    precious = tmp_path / "precious"
    (precious / "images").mkdir(parents=True)
    victim = precious / "images" / "x.tif"
    victim.write_bytes(b"keep me")
    folder = tmp_path / "store"
    folder.mkdir()
    for ident in ("../precious/images/x", str(victim.with_suffix(""))):
        row = {"id": ident, "source": "", "box": [0, 1, 0, 1], "shape": [1, 1], "objects": 0}
        (folder / "examples.json").write_text(json.dumps({"version": 1, "examples": [row]}))
        with pytest.raises(InputError, match="not plain names"):
            ExampleStore(folder)
    assert victim.read_bytes() == b"keep me"
    store = ExampleStore(tmp_path / "other")
    with pytest.raises(InputError):
        store.remove("../precious/images/x")
    assert victim.exists()


def test_store_reports_a_non_utf8_index(tmp_path):
    folder = tmp_path / "ex"
    folder.mkdir()
    (folder / "examples.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="not UTF-8"):
        ExampleStore(folder)


def test_store_removes_leftovers_of_interrupted_writes(tmp_path):
    store = ExampleStore(tmp_path / "ex")
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    rec = store.add(image, _blobs([(20, 20)], shape=(64, 64)))
    # what a kill between the files and the index leaves, and a temp file of a write
    for sub, name in (("images", "orphan_009.tif"), ("masks", "orphan_009.png"), ("labels", ".x.tif.abc.tmp")):
        (tmp_path / "ex" / sub / name).write_bytes(b"partial")
    reopened = ExampleStore(tmp_path / "ex")
    assert [r.id for r in reopened.records] == [rec.id]
    left = sorted(p.name for p in (tmp_path / "ex").rglob("*") if p.is_file())
    assert left == sorted(["examples.json", f"{rec.id}.tif", f"{rec.id}.png", f"{rec.id}.tif"])
    # a folder without an index (a dataset) keeps all its files
    data = tmp_path / "dataset" / "images"
    data.mkdir(parents=True)
    (data / "img_001.tif").write_bytes(b"data")
    ExampleStore(tmp_path / "dataset")
    assert (data / "img_001.tif").exists()


def test_patch_sampler_weights_soft_targets_and_focus():
    image = np.zeros((128, 128, 3), np.uint8)
    ex = TrainingExample("a", image, np.zeros((128, 128), bool))
    soft = np.full((1, 128, 128), 0.3, np.float32)
    weight = np.zeros((128, 128), np.float32)
    weight[100:110, 100:110] = 1.0
    focus = weight > 0
    sampler = PatchSampler([ex], patch_size=32, batch_size=4, normalization={"kind": "image"}, in_channels=3,
                           targets=[soft], weights=[weight], focus=[focus], focus_probability=1.0, seed=0)
    for _ in range(5):
        x, y, w = sampler.sample()
        assert x.shape == (4, 3, 32, 32) and y.shape == (4, 1, 32, 32) and w.shape == (4, 1, 32, 32)
        assert torch.allclose(y, torch.tensor(0.3), atol=1e-5)  # soft targets stay soft
        assert (w.flatten(1).max(dim=1).values > 0).all()  # every patch sees the correction


def _nuclei_model(name="parent") -> SegmentationModel:
    torch.manual_seed(0)
    model = SegmentationModel.new(ModelCard(name=name, task="nuclei", out_channels=2, instances=True))
    save_model(model, user_models_dir(create=True) / name)
    return load_model(name)


def _edited_examples(n: int = 2, k: int = 8):
    """Images with dark discs; 'before' misses some of them, 'after' has them painted."""
    out = []
    rng = np.random.default_rng(1)
    for e in range(n):
        centres = [(r + int(rng.integers(-3, 4)), c + int(rng.integers(-3, 4))) for r in (20, 64, 108)
                   for c in (20, 64, 108)]  # 9 well-separated nuclei
        truth = _blobs(centres, shape=(128, 128))
        image = np.full((128, 128, 3), 225, np.uint8)
        image[truth > 0] = (70, 40, 130)
        image = (image + rng.integers(0, 12, image.shape)).astype(np.uint8)
        before = truth.copy()
        before[np.isin(truth, np.arange(1, k + 1))] = 0  # the model missed k of them
        out.append(TrainingExample(f"ex{e}", image, truth > 0, truth, None, "", before=before))
    return out


def test_finetune_from_edits_judges_on_held_out_corrections(tmp_path):
    parent = _nuclei_model()
    examples = _edited_examples()
    cfg = FinetuneConfig(max_seconds=4, batch_size=2, patch_size=64, max_steps=6)
    gen = finetune(parent, examples, cfg, output=tmp_path / "child")
    records = []
    result = run_to_end(gen, records.append)
    assert records[0].kind == "setup" and "16 corrections" in records[0].message and "5 held out" in records[0].message
    assert result.corrections is not None and result.corrections.held_out == 5
    assert "corrections it did not see" in result.reason
    assert result.steps >= 1 and result.total_seconds >= result.seconds
    training = result.model.card.training
    assert training["corrections"]["corrections"] == 16 and training["corrections"]["added"] == 16
    assert (result.saved_to is not None) == result.accepted
    assert not (tmp_path / "child.safetensors").exists() or result.accepted


def test_finetune_from_edits_refuses_examples_without_corrections():
    parent = _nuclei_model()
    examples = _edited_examples()
    for ex in examples:
        ex.before = ex.labels.copy()
    with pytest.raises(InputError, match="no corrections"):
        run_to_end(finetune(parent, examples, FinetuneConfig(max_seconds=2, batch_size=2, patch_size=64)))


def test_finetune_from_too_few_edits_says_so_before_training(tmp_path):
    parent = _nuclei_model()
    examples = _edited_examples(n=1, k=2)
    records = []
    with pytest.raises(InputError, match=f"2 correction.*at least {FinetuneConfig().min_corrections}"):
        run_to_end(finetune(parent, examples, FinetuneConfig(max_seconds=30, batch_size=2, patch_size=64),
                            output=tmp_path / "c"), records.append)
    assert not any(r.kind == "step" for r in records)  # not a single training step was spent
    assert not (tmp_path / "c.safetensors").exists()


def test_correction_loss_is_smallest_at_the_soft_target():
    """Distillation must not drift: the loss's gradient vanishes where the prediction equals
    a soft target (soft Dice does not have this property)."""
    from napari_minenet.losses import CorrectionLoss, dice_loss

    target = torch.rand(2, 2, 16, 16) * 0.8 + 0.1
    logits = torch.logit(target).clone().requires_grad_(True)
    weight = torch.rand(2, 1, 16, 16)
    CorrectionLoss()(logits, target, weight).backward()
    assert logits.grad.abs().max() < 1e-6
    moved = torch.logit(target).clone().requires_grad_(True)
    dice_loss(moved[:, :1], target[:, :1]).backward()
    assert moved.grad.abs().max() > 1e-4  # soft Dice would still push


def test_changed_objects_counts_new_removed_and_reshaped():
    from napari_minenet.edits import changed_objects

    before = _blobs([(20, 20), (60, 60), (80, 20)])
    after = before.copy()
    assert changed_objects(before, after) == 0
    after[before == 1] = 0  # removed
    after[_blobs([(20, 70)]) > 0] = 9  # new
    after[before == 3] = 7  # same object, another id: not a change
    assert changed_objects(before, after) == 2
    grown = _blobs([(60, 60)], radius=9) > 0
    after[grown] = 2  # reshaped
    assert changed_objects(before, after) == 3  # the reshaped one counts once
    assert changed_objects(before > 0, after > 0, instances=False) == int(((before > 0) != (after > 0)).sum())


def test_simulated_user_benchmark_runs_end_to_end(blob_dataset, tiny_model_path, tmp_path):
    """benchmarks/simulated_user.py: segment, correct, fine-tune, score the other images."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "simulated_user.py"
    out = tmp_path / "sim.json"
    proc = subprocess.run(
        [sys.executable, str(script), "--data", str(blob_dataset), "--model", str(tiny_model_path), "--k", "3",
         "--images", "1", "--seeds", "0", "--group-by", "image", "--config", '{"max_steps": 4, "batch_size": 2, '
         '"patch_size": 64, "min_corrections": 3}', "--max-seconds", "60", "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert run["k"] == 3 and run["corrections"] == 3 and run["eval_images"] == 5
    assert run["steps"] >= 1 and isinstance(run["accepted"], bool) and run["reason"]
    assert run["judged"]["held_out"] >= 1
    for key in ("f1_before", "f1_candidate", "f1_kept", "aji_before"):
        assert 0.0 <= run[key] <= 1.0
    assert run["f1_kept"] == (run["f1_candidate"] if run["accepted"] else run["f1_before"])
    assert "seed 0 n 1 k   3" in proc.stdout
