"""Shared fixtures for the headless core tests.

Everything here is synthetic or ships with scikit-image: the tests need neither
``../shared`` nor the network, and never touch the real user folder
(``NAPARI_MINENET_HOME`` points to a temporary folder in every test).

* ``make_blobs(n, seed, rgb=True)``: dark discs on a light, noisy background, with the
  true instance labels;
* ``tiny_model_path`` / ``tiny_model``: an *untrained* 2-output nuclei model saved with
  ``zoo.save_model`` (deterministic: fixed torch seed);
* ``blob_dataset``: a dataset folder (images/, masks/, labels/) of six 96 x 96 images;
* ``trained_model_path``: a tiny model trained for 40 steps on ``blob_dataset`` (about two
  seconds); it segments the synthetic blobs almost perfectly, which the tests that need a
  model that "works" (instance counts, CLI, evaluation) rely on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # a background job shares the CPU; keep the suite light


# --------------------------------------------------------------------------- user folder


@pytest.fixture(scope="session", autouse=True)
def _session_home(tmp_path_factory):
    """Session fixtures (training) also run with a temporary user folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NAPARI_MINENET_HOME", str(tmp_path_factory.mktemp("session_home")))
        yield


@pytest.fixture(autouse=True)
def user_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty user folder."""
    home = tmp_path / "minenet_home"
    monkeypatch.setenv("NAPARI_MINENET_HOME", str(home))
    return home


@pytest.fixture
def notes(monkeypatch):
    """Every notification the widget shows, by kind (widget tests; imports Qt only when used)."""
    import napari_minenet._qt_common as common

    seen = {"error": [], "warning": [], "info": []}
    monkeypatch.setattr(common, "show_error", lambda m: seen["error"].append(str(m)))
    monkeypatch.setattr(common, "show_warning", lambda m: seen["warning"].append(str(m)))
    monkeypatch.setattr(common, "show_info", lambda m: seen["info"].append(str(m)))
    return seen


# --------------------------------------------------------------------------- synthetic images


def _blob_image(n: int | tuple[int, int], seed: int = 0, rgb: bool = True, radius=(5, 9), max_objects=None):
    """(image uint8, labels uint16): separated dark discs on a light noisy background."""
    from skimage.draw import disk

    h, w = (n, n) if isinstance(n, int) else n
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), np.uint16)
    target = max_objects if max_objects is not None else max(1, h * w // 900)
    k = 0
    for _ in range(500):
        r = int(rng.integers(radius[0], radius[1]))
        cy = int(rng.integers(r + 1, h - r - 1))
        cx = int(rng.integers(r + 1, w - r - 1))
        rr, cc = disk((cy, cx), r + 3, shape=(h, w))
        if labels[rr, cc].any():
            continue
        k += 1
        labels[disk((cy, cx), r, shape=(h, w))] = k
        if k >= target:
            break
    grey = np.where(labels > 0, 70.0, 210.0) + rng.normal(0, 12, (h, w))
    grey = np.clip(grey, 0, 255).astype(np.uint8)
    if not rgb:
        return grey, labels
    image = np.stack(
        [grey, (grey * 0.8).astype(np.uint8), np.clip(grey.astype(int) + 20, 0, 255).astype(np.uint8)], axis=-1
    )
    return image, labels


@pytest.fixture(scope="session")
def make_blobs():
    """Factory: ``make_blobs(n, seed=0, rgb=True)`` -> (image, true instance labels)."""
    return _blob_image


def _write_dataset(root: Path, n_images: int = 6, size: int = 96) -> Path:
    import imageio.v3 as iio
    import tifffile

    for sub in ("images", "masks", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        image, labels = _blob_image(size, seed=100 + i)
        iio.imwrite(root / "images" / f"img{i}.png", image)
        iio.imwrite(root / "masks" / f"img{i}.png", ((labels > 0) * 255).astype(np.uint8))
        tifffile.imwrite(root / "labels" / f"img{i}.tif", labels)
    return root


@pytest.fixture(scope="session")
def blob_dataset(tmp_path_factory) -> Path:
    """``<dir>/images/img{0..5}.png``, ``masks/`` (0/255) and ``labels/`` (uint16), 96 x 96."""
    return _write_dataset(tmp_path_factory.mktemp("blob_dataset"))


# --------------------------------------------------------------------------- models


def _tiny_card(**overrides):
    from napari_minenet.zoo import ModelCard

    kwargs = dict(name="tiny", task="nuclei", out_channels=2, instances=True, tile_size=256, tile_overlap=64)
    kwargs.update(overrides)
    return ModelCard(**kwargs)


@pytest.fixture(scope="session")
def tiny_card():
    """Factory for the tiny test card (keyword overrides allowed)."""
    return _tiny_card


@pytest.fixture
def tiny_model_path(tmp_path) -> Path:
    """An untrained 3-in / 2-out nuclei model saved as ``<tmp>/models/tiny.safetensors/.json``."""
    from napari_minenet.zoo import SegmentationModel, save_model

    torch.manual_seed(0)
    model = SegmentationModel.new(_tiny_card())
    return save_model(model, tmp_path / "models" / "tiny")


@pytest.fixture
def tiny_model(tiny_model_path):
    from napari_minenet.zoo import load_model

    return load_model(tiny_model_path)


@pytest.fixture(scope="session")
def trained_model_path(blob_dataset, tmp_path_factory) -> Path:
    """A custom model trained for 40 steps on the synthetic blobs (deterministic, ~2 s)."""
    from napari_minenet.training import TrainConfig, train

    out = tmp_path_factory.mktemp("trained") / "blobnet"
    cfg = TrainConfig(task="custom", epochs=1, steps_per_epoch=40, batch_size=4, patch_size=64, lr=3e-3,
                      device="cpu", seed=0)
    records = list(train(blob_dataset, out, cfg))
    assert records[-1].kind == "done"
    weights = out.with_name(out.name + ".safetensors")
    assert weights.is_file()
    return weights


@pytest.fixture
def trained_model(trained_model_path):
    from napari_minenet.zoo import load_model

    return load_model(trained_model_path)


@pytest.fixture
def bn_net():
    """A factory of MiniNets whose BatchNorms are far from the identity, so that folding them and
    merging the branches (``model.fuse_for_inference``, ``inference_graph``) is really tested."""
    import torch
    from torch import nn

    from napari_minenet.model import MiniNet

    def make(in_channels: int = 3, out_channels: int = 2, width: int = 8, seed: int = 0) -> MiniNet:
        torch.manual_seed(seed)
        net = MiniNet(in_channels, out_channels, width=width)
        g = torch.Generator().manual_seed(seed + 1)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                with torch.no_grad():
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.1)
        return net

    return make
