"""train(): several data folders, held-out / excluded ids, augmentation overrides, the pixel
size and object size a new card records, and patch preparation in worker processes."""

from __future__ import annotations

import multiprocessing
import shutil
import time

import numpy as np
import pytest
import torch

from napari_minenet.data import InputError, load_dataset
from napari_minenet.patches import Augmentation, ParallelSampler, PatchSampler
from napari_minenet.training import TrainConfig, object_sizes, run_to_end, train
from napari_minenet.zoo import load_model

NORM = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


@pytest.fixture(scope="module")
def two_folders(blob_dataset, tmp_path_factory):
    """The blob dataset split into two folders with distinct ids (a_img0.. / b_img3..)."""
    root = tmp_path_factory.mktemp("two")
    for name, ids in (("a", range(0, 3)), ("b", range(3, 6))):
        for sub, ext in (("images", "png"), ("masks", "png"), ("labels", "tif")):
            (root / name / sub).mkdir(parents=True)
            for i in ids:
                shutil.copy(blob_dataset / sub / f"img{i}.{ext}", root / name / sub / f"{name}_img{i}.{ext}")
    return root / "a", root / "b"


def _cfg(**kw):
    return TrainConfig(**{"task": "nuclei", "epochs": 1, "steps_per_epoch": 3, "batch_size": 2, "patch_size": 64,
                          "device": "cpu", "seed": 0, **kw})


def test_several_folders_hold_out_and_exclude(two_folders, tmp_path):
    a, b = two_folders
    out = tmp_path / "m"
    run_to_end(train([a, b], out, _cfg(), hold_out=["b_img3"], exclude=["a_img0", "b_img5"]))
    training = load_model(out.with_suffix(".safetensors")).card.training
    assert training["train_ids"] == ["a_img1", "a_img2", "b_img4"]
    assert training["val_ids"] == ["b_img3"]
    assert training["data"] == f"{a} + {b}"


def test_the_same_id_in_two_folders_is_refused(blob_dataset, tmp_path):
    with pytest.raises(InputError, match="more than one data folder: img0"):
        run_to_end(train([blob_dataset, blob_dataset], tmp_path / "m", _cfg()))


def test_excluding_everything_is_refused(blob_dataset, tmp_path):
    with pytest.raises(InputError, match="no training images left"):
        run_to_end(train(blob_dataset, tmp_path / "m", _cfg(), exclude=["img*"]))


def test_without_validation_the_last_step_is_kept(blob_dataset, tmp_path):
    out = tmp_path / "m"
    result = run_to_end(train(blob_dataset, out, _cfg(val_fraction=0.0, epochs=2)))
    assert result.best_epoch == 2  # "last": the final epoch's weights, not the lowest training loss
    assert load_model(out.with_suffix(".safetensors")).card.training["val_ids"] == []


def test_card_records_pixel_size_object_size_and_augmentation(blob_dataset, tmp_path):
    out = tmp_path / "m"
    run_to_end(train(blob_dataset, out, _cfg(pixel_size_um=0.5, stain=0.2, scale_range=(0.5, 2.0))))
    card = load_model(out.with_suffix(".safetensors")).card
    assert card.pixel_size_um == 0.5
    width, diameter = object_sizes([ex for ex in load_dataset(blob_dataset) if ex.id in card.training["train_ids"]])
    assert card.object_width_px == width and card.object_diameter_px == diameter
    assert 8 < diameter < 20  # the blobs' radii are 5-9 px
    assert card.training["augmentation"]["stain"] == 0.2 and card.training["augmentation"]["scale"] == [0.5, 2.0]


@pytest.mark.parametrize("kwargs, message", [({"workers": -1}, "workers"), ({"stain": 1.5}, "stain"),
                                             ({"scale_range": (2.0, 1.0)}, "scale range"),
                                             ({"pixel_size_um": 0.0}, "pixel size")])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _cfg(**kwargs).resolved()


def test_parallel_sampler_batches_match_and_workers_draw_different_patches(blob_dataset):
    examples = load_dataset(blob_dataset)
    base = PatchSampler(examples, patch_size=48, batch_size=3, normalization=NORM, contours=True,
                        augmentation=Augmentation(stain=0.05), seed=0)
    x0, y0 = base.sample()
    torch.manual_seed(0)
    parallel = ParallelSampler(base, 2)
    try:
        batches = [parallel.sample() for _ in range(4)]
        assert len(multiprocessing.active_children()) == 2
    finally:
        parallel.close()
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()  # close() stopped the workers
    for x, y in batches:
        assert x.shape == x0.shape and y.shape == y0.shape and x.dtype == torch.float32
        assert set(np.unique(y.numpy())) <= {0.0, 1.0}
    # batches alternate between the two workers; each worker has its own random stream
    assert not torch.equal(batches[0][0], batches[1][0])


def test_train_with_worker_processes(blob_dataset, tmp_path):
    out = tmp_path / "m"
    result = run_to_end(train(blob_dataset, out, _cfg(workers=1, steps_per_epoch=4)))
    assert result.steps == 4 and out.with_suffix(".safetensors").is_file()
    assert load_model(out.with_suffix(".safetensors")).card.training["config"]["workers"] == 1


def test_cli_passes_the_new_training_options(two_folders, tmp_path):
    from napari_minenet.cli import main

    a, b = two_folders
    out = tmp_path / "cli"
    code = main(["train", "--data", str(a), str(b), "--task", "nuclei", "-o", str(out), "--epochs", "1",
                 "--steps-per-epoch", "2", "--batch-size", "2", "--patch-size", "64", "--device", "cpu",
                 "--hold-out", "a_img*", "--exclude", "b_img5", "--stain-jitter", "0.1", "--scale-range", "0.6", "1.6",
                 "--pixel-size", "0.25"])
    assert code == 0
    card = load_model(out.with_suffix(".safetensors")).card
    assert card.training["val_ids"] == ["a_img0", "a_img1", "a_img2"]
    assert card.training["train_ids"] == ["b_img3", "b_img4"]
    assert card.pixel_size_um == 0.25
    assert card.training["config"]["stain"] == 0.1 and card.training["config"]["scale_range"] == [0.6, 1.6]
