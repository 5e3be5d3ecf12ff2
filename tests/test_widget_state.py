"""The dock widget's sections share one WidgetState and never reach into each other."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytest.importorskip("qtpy")

import napari_minenet  # noqa: E402
from napari_minenet._widget import MiniNetWidget  # noqa: E402
from napari_minenet.zoo import ModelCard, SegmentationModel, save_model, user_models_dir  # noqa: E402

pytestmark = pytest.mark.gui

PACKAGE = Path(napari_minenet.__file__).parent


@pytest.fixture(autouse=True)
def user_home(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MINENET_HOME", str(tmp_path / "home"))
    torch.set_num_threads(1)


def _model(name: str, **card) -> Path:
    torch.manual_seed(0)
    card = {"task": "nuclei", "out_channels": 2, "instances": True, "tile_size": 256, "tile_overlap": 64, **card}
    return save_model(SegmentationModel.new(ModelCard(name=name, **card)), user_models_dir(create=True) / name)


def test_no_section_reaches_into_another():
    """No widget module touches another object's private attribute through a panel, and the
    cancel / pause events are only used by the panel that owns them."""
    widget_modules = sorted(PACKAGE.glob("_*.py"))
    assert len(widget_modules) > 8
    for path in widget_modules:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\b\w*panel\._[a-z]\w*", text), f"{path.name} uses a panel's private attribute"
        for event in ("_cancel_event", "_pause_event"):
            if event in text:
                assert path.name in ("_segment_panel.py", "_segment_slide.py", "_learn_panel.py"), path.name
    for name in ("_learn_panel.py", "_models_panel.py"):
        assert "segment_panel" not in (PACKAGE / name).read_text(encoding="utf-8"), name


def test_sections_share_one_state(make_napari_viewer, qtbot):
    first, second = _model("firstnuclei"), _model("secondnuclei")
    viewer = make_napari_viewer(show=False)
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8), name="tissue", rgb=True)
    widget = MiniNetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Mini-Net")
    state, seg = widget.state, widget.segment_panel
    assert seg.state is state and widget.learn_panel.state is state and widget.models_panel.state is state

    # a section asks for a model through the state; the Segment section loads it and says so
    changed = []
    state.model_changed.connect(changed.append)
    state.use_model(second)
    assert state.model is seg.model and seg.model.card.name == "secondnuclei"
    assert state.model_path == str(second) and changed and changed[-1] is state.model
    state.use_model(first)
    assert seg.model.card.name == "firstnuclei"

    # the device the learn section fine-tunes on is the one chosen in the Segment section
    seg.device_combo.setCurrentIndex(seg.device_combo.findData("cpu"))
    assert state.device == "cpu"

    # a segmentation fills the state, and its signal reaches the other sections
    shown = []
    state.segmented.connect(shown.append)
    state.segment_again()
    qtbot.waitUntil(lambda: seg.worker is None and bool(shown), timeout=60_000)
    assert shown[-1] is state.labels_layer is seg.labels_layer
    assert state.image_layer is viewer.layers["tissue"] and state.result is seg.result
    assert state.region is seg.region and state.result.labels.shape == (96, 96)
    assert widget.learn_panel.edited_pixels() == 0
    layer = state.labels_layer
    layer.data = np.where(layer.data > 0, 0, 1).astype(layer.data.dtype)  # every pixel changed
    assert widget.learn_panel.edited_pixels() == 96 * 96


def test_public_cancel_stops_work_and_a_paused_fine_tune(make_napari_viewer):
    viewer = make_napari_viewer(show=False)
    widget = MiniNetWidget(viewer)
    seg, learn = widget.segment_panel, widget.learn_panel
    learn._pause_event.set()
    seg.cancel()
    learn.cancel()
    assert seg._cancel_event.is_set() and learn._cancel_event.is_set()
    assert not learn._pause_event.is_set()  # a paused run wakes up to stop
    assert learn.progress_bar.format() == "cancelling..."


def test_gui_demo_segments_the_sample_with_its_model(monkeypatch, qtbot):
    """`napari-minenet demo` with a display: the sample, the widget, the sample's built-in
    model selected (not the first in the list), and one segmentation."""
    import napari

    from napari_minenet import _demo

    viewers = []

    class Viewer(napari.Viewer):
        def __init__(self, *args, **kwargs):
            kwargs["show"] = False
            super().__init__(*args, **kwargs)
            viewers.append(self)

    monkeypatch.setattr(napari, "Viewer", Viewer)
    monkeypatch.setattr(napari, "run", lambda *a, **k: None)
    try:
        assert _demo.run_gui_demo("retina") == 0
        viewer = viewers[0]
        widget = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, MiniNetWidget))
        seg = widget.segment_panel
        assert seg.model.card.name == "vessels"  # the retina sample's model, not the first (nuclei)
        qtbot.waitUntil(lambda: seg.worker is None and seg.labels_layer is not None, timeout=180_000)
        assert seg.labels_layer.data.shape == viewer.layers[0].data.shape[:2]
    finally:
        for viewer in viewers:
            viewer.close()
