"""The "Pixel size (um)" control in the dock widget (pytest-qt + make_napari_viewer; Xvfb)."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
from qtpy.QtCore import Qt

pytest.importorskip("napari")

from napari_minenet._widget import MiniNetWidget  # noqa: E402
from napari_minenet.zoo import load_model, save_model, user_models_dir  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def blob_model(trained_model_path):
    """The blob model, one label per blob, trained 'at' 0.5 um per pixel."""
    model = load_model(trained_model_path)
    model.card = dataclasses.replace(model.card, name="blobs_um", instances=True, pixel_size_um=0.5, min_size=8)
    return save_model(model, user_models_dir(create=True) / "blobs_um")


def _panel(make_napari_viewer, model_path, image, **layer_kwargs):
    viewer = make_napari_viewer(show=False)
    layer = viewer.add_image(image, name="tissue", rgb=True, **layer_kwargs)
    widget = MiniNetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Mini-Net")
    panel = widget.segment_panel
    panel.select_model(model_path)
    return viewer, panel, layer


def _run(qtbot, panel):
    qtbot.mouseClick(panel.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: panel.worker is None, timeout=60_000)


def test_auto_follows_the_layer_and_a_typed_value_resamples(make_napari_viewer, qtbot, blob_model, make_blobs,
                                                           tmp_path):
    image, truth = make_blobs(128, seed=11)
    viewer, panel, layer = _panel(make_napari_viewer, blob_model, image)
    control = panel.pixel_size_spin
    assert control.value() == 0 and control.specialValueText() == "auto (estimate)"
    assert control.pixel_size() == "auto"
    layer.scale = (0.5, 0.5)
    layer.units = ("um", "um")
    panel._update_stack_controls()
    assert control.pixel_size() == pytest.approx(0.5) and control.specialValueText() == "auto: 0.5 um (image)"

    _run(qtbot, panel)  # auto = the layer's 0.5 um = the model's: no resampling
    assert panel.result.scale == 1.0 and panel.result.pixel_size == pytest.approx(0.5)
    native = panel.result.count
    assert "um^2" in panel.summary_label.text()

    control.setValue(1.0)  # the user says: 1 um per pixel (twice as coarse as the model)
    assert control.pixel_size() == 1.0
    _run(qtbot, panel)
    result = panel.result
    assert result.scale == 2.0 and result.pixel_size == 1.0
    assert panel.labels_layer.data.shape == image.shape[:2] and abs(result.count - native) <= 3
    assert panel.min_size_spin.value() == result.min_size == 2  # 8 px of the model's grid = 2 px of this image
    path = tmp_path / "m.csv"
    panel.export_measurements(str(path))
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == result.count and float(rows[0]["area_um2"]) == pytest.approx(float(rows[0]["area"]))


def test_the_control_sits_in_the_segment_form(make_napari_viewer, blob_model, make_blobs):
    from qtpy.QtWidgets import QFormLayout, QLabel

    image, _ = make_blobs(64, seed=12)
    viewer, panel, _ = _panel(make_napari_viewer, blob_model, image)
    form = panel.layout().itemAt(0).layout()
    assert isinstance(form, QFormLayout)
    labels = [form.itemAt(i, QFormLayout.LabelRole).widget() for i in range(form.rowCount())]
    texts = [w.text() for w in labels if isinstance(w, QLabel)]
    assert "Pixel size (um)" in texts
    assert form.itemAt(texts.index("Pixel size (um)"), QFormLayout.FieldRole).widget() is panel.pixel_size_spin
    assert np.isclose(panel.pixel_size_spin.maximum(), 50.0)


def test_an_example_remembers_the_scale_it_was_segmented_at(make_napari_viewer, qtbot, blob_model, make_blobs,
                                                            tmp_path):
    """Fine-tuning must see a corrected example on the grid the network saw it on: an image
    segmented at 1 um for a 0.5 um model is stored with scale 2 (its "before" labels come
    from that scale)."""
    from napari_minenet.examples import ExampleStore

    image, _ = make_blobs(128, seed=11)
    viewer, panel, layer = _panel(make_napari_viewer, blob_model, image)
    panel.pixel_size_spin.setValue(1.0)
    _run(qtbot, panel)
    assert panel.result.scale == pytest.approx(2.0)
    widget = viewer.window._dock_widgets["Mini-Net"].widget()
    learn = widget.learn_panel
    learn.open_store(tmp_path / "examples")
    learn.scope_combo.setCurrentIndex(learn.scope_combo.findData("image"))
    learn.add_button.click()
    (record,) = ExampleStore(tmp_path / "examples").records
    assert record.scale == pytest.approx(2.0)
    (example,) = ExampleStore(tmp_path / "examples").load()
    assert example.scale == pytest.approx(2.0) and example.before is not None
