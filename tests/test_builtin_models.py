"""The shipped models load, describe themselves, and segment bundled images sensibly."""

from __future__ import annotations

import numpy as np
import pytest

from napari_minenet.metrics import pixel_metrics
from napari_minenet.samples import load_sample
from napari_minenet.segmentation import segment
from napari_minenet.zoo import builtin_weights_dir, list_models, load_model

BUILTIN = ("nuclei", "vessels", "lesion")


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MINENET_HOME", str(tmp_path / "home"))


def test_registry_lists_the_three_builtin_models_with_metrics():
    models = {m.name: m for m in list_models() if m.source == "builtin"}
    assert set(BUILTIN) <= set(models), f"weights/ holds {sorted(models)} ({builtin_weights_dir()})"
    for name in BUILTIN:
        info = models[name]
        assert info.metrics, f"{name} has no metrics in its card"
        card = load_model(name).card
        assert card.training.get("command", "").startswith("napari-minenet train")
        assert card.training.get("data") and card.training.get("hardware")
        assert card.licence, f"{name}'s card must name its training data's licence"


def test_nuclei_model_finds_nuclei_in_the_ihc_sample():
    image = load_sample("ihc")
    result = segment(image, "nuclei", device="cpu")
    assert result.instances
    n = result.count
    areas = np.bincount(result.labels.ravel())[1:]
    areas = areas[areas > 0]
    # ihc.png (512 x 512) shows a few hundred haematoxylin-stained nuclei
    assert 50 <= n <= 1500, n
    assert 20 <= np.median(areas) <= 1500, np.median(areas)
    # nuclei are blue-ish (haematoxylin): darker and bluer than the average pixel
    fg = result.labels > 0
    assert 0.03 < fg.mean() < 0.6
    blue_minus_red = image[..., 2].astype(float) - image[..., 0]
    assert blue_minus_red[fg].mean() > blue_minus_red[~fg].mean()


def test_vessels_model_finds_vessels_in_the_retina_sample():
    image = load_sample("retina")
    result = segment(image, "vessels", device="cpu")
    fraction = (result.labels > 0).mean()
    assert 0.02 < fraction < 0.25, fraction
    # vessels are darker than the retina around them in the green channel
    green = image[..., 1].astype(float)
    retina = green > 20
    fg = (result.labels > 0) & retina
    assert green[fg].mean() < green[retina & ~fg].mean()


def test_lesion_model_segments_a_synthetic_dermoscopy_like_lesion():
    from skimage.draw import ellipse
    from skimage.filters import gaussian

    rng = np.random.default_rng(0)
    h, w = 384, 512
    skin = np.empty((h, w, 3), np.float32)
    skin[:] = (205, 160, 140)
    truth = np.zeros((h, w), bool)
    rr, cc = ellipse(190, 260, 110, 150, shape=truth.shape, rotation=0.4)
    truth[rr, cc] = True
    lesion = np.array((110, 70, 60), np.float32)
    skin[truth] = lesion + rng.normal(0, 12, (truth.sum(), 3))
    skin = gaussian(skin, sigma=3, channel_axis=-1, preserve_range=True) + rng.normal(0, 4, skin.shape)
    image = np.clip(skin, 0, 255).astype(np.uint8)
    result = segment(image, "lesion", device="cpu")
    scores = pixel_metrics(result.labels > 0, truth)
    assert scores["jaccard"] > 0.7, scores
