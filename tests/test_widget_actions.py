"""Widget actions the other GUI tests do not reach: examples from the visible region, pausing
and resuming fine-tuning, ONNX export from the Models section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytest.importorskip("qtpy")

from napari_minenet._widget import MiniNetWidget  # noqa: E402
from napari_minenet.finetuning import FinetuneConfig  # noqa: E402
from napari_minenet.zoo import ModelCard, SegmentationModel, save_model, user_models_dir  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def user_home(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MINENET_HOME", str(tmp_path / "home"))
    torch.set_num_threads(1)


def _model(name: str = "testnuclei") -> Path:
    torch.manual_seed(0)
    card = {"task": "nuclei", "out_channels": 2, "instances": True, "tile_size": 256, "tile_overlap": 64}
    return save_model(SegmentationModel.new(ModelCard(name=name, **card)), user_models_dir(create=True) / name)


def _blobs(size: int, seed: int = 3) -> np.ndarray:
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), (235, 215, 230), np.uint8)
    for _ in range(size * size // 900):
        r, c = rng.integers(10, size - 10, 2)
        rr, cc = disk((r, c), int(rng.integers(5, 9)), shape=img.shape[:2])
        img[rr, cc] = (90, 60, 150)
    return img


def _segmented(make_napari_viewer, qtbot, size: int = 192, show: bool = False):
    viewer = make_napari_viewer(show=show)
    viewer.add_image(_blobs(size), name="tissue", rgb=True)
    widget = MiniNetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Mini-Net")
    widget.state.use_model(_model())
    widget.segment_panel.run()
    qtbot.waitUntil(lambda: widget.segment_panel.worker is None and widget.state.labels_layer is not None,
                    timeout=60_000)
    return viewer, widget


def test_visible_region_adds_only_what_is_on_the_canvas(make_napari_viewer, qtbot, tmp_path, notes):
    viewer, widget = _segmented(make_napari_viewer, qtbot, size=400, show=True)  # a canvas with a size
    learn = widget.learn_panel
    learn.open_store(tmp_path / "examples")
    learn.scope_combo.setCurrentIndex(learn.scope_combo.findData("view"))
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (150, 250)
    camera.zoom = 12  # a small part of the 400 x 400 image is on the canvas
    qtbot.wait(200)
    learn.add_example()
    assert not notes["error"], notes["error"]
    record = learn.store.records[-1]
    y0, y1, x0, x1 = record.box
    assert 0 < y0 < 150 < y1 < 400 and 0 < x0 < 250 < x1 < 400  # around the centre, inside the image
    assert (y1 - y0) * (x1 - x0) < 400 * 400 / 4
    assert tuple(record.shape[:2]) == (y1 - y0, x1 - x0)
    # the whole image, for comparison
    learn.scope_combo.setCurrentIndex(learn.scope_combo.findData("image"))
    learn.add_example()
    assert tuple(learn.store.records[-1].box) == (0, 400, 0, 400)


def test_pause_stops_the_steps_and_resume_continues(make_napari_viewer, qtbot, tmp_path, notes):
    viewer, widget = _segmented(make_napari_viewer, qtbot)
    learn = widget.learn_panel
    layer = widget.state.labels_layer
    layer.brush_size = 6
    layer.paint((40, 40), int(layer.data.max()) + 1)
    learn.open_store(tmp_path / "examples")
    learn.add_example()
    learn.settings = FinetuneConfig(batch_size=2, patch_size=96, min_corrections=1)  # untrained: 1 correction
    learn.start_finetune(max_seconds=300)
    qtbot.waitUntil(lambda: len(learn.loss_plot.train) >= 1, timeout=60_000)
    assert learn.pause_button.isEnabled()
    learn.pause_button.click()
    assert learn.pause_button.text() == "Resume"
    qtbot.wait(1500)  # a step in flight finishes and reports
    paused_at = len(learn.loss_plot.train)
    qtbot.wait(2000)
    assert len(learn.loss_plot.train) == paused_at, "steps ran while paused"
    assert learn.worker is not None  # paused, not stopped
    learn.pause_button.click()
    assert learn.pause_button.text() == "Pause"
    qtbot.waitUntil(lambda: len(learn.loss_plot.train) > paused_at, timeout=60_000)
    learn.cancel()
    qtbot.waitUntil(lambda: learn.worker is None, timeout=60_000)
    assert not list(user_models_dir().glob("testnuclei-ft-*"))  # cancelled: nothing saved


def test_models_section_exports_onnx(make_napari_viewer, qtbot, tmp_path, notes):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    viewer, widget = _segmented(make_napari_viewer, qtbot, size=96)
    models = widget.models_panel
    target = tmp_path / "exported.onnx"
    models.export_selected(str(target))  # nothing selected in the list: the model in use
    qtbot.waitUntil(lambda: models.export_worker is None, timeout=120_000)
    assert not notes["error"], notes["error"]
    assert target.is_file() and any(str(target) in m for m in notes["info"])
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 64, 64), np.float32)})[0]
    assert out.shape[-2:] == (64, 64)
