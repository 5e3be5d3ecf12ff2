"""Segment section of the dock widget: pick image and model, segment in a worker, live threshold.

Only layers, controls and threads live here; segmentation itself is
``napari_minenet.segmentation.segment`` / ``segment_stack``.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from qtpy.QtWidgets import QWidget

from . import _qt_common as common
from ._layer_data import ImageRegion, full_plane, image_region, layer_lead_shape, placement
from ._segment_results import ResultActions
from ._segment_slide import EXPECTED_ERRORS, SlideActions
from ._segment_view import (
    BRIGHT_COLOURS,
    FILLED_OPACITY,
    OUTLINE_OPACITY,
    OUTLINE_WIDTH,
    build_controls,
    label_colormap,
)
from ._widget_state import WidgetState
from .data import GreyImageWarning, InputError
from .inference import Cancelled
from .segmentation import segment, segment_stack
from .slide_engine import SlideResult
from .zoo import ModelLoadError, SegmentationModel, load_model

__all__ = ["SegmentPanel", "EXPECTED_ERRORS", "BRIGHT_COLOURS", "label_colormap"]


def _shared(name: str, doc: str) -> property:
    """An attribute of the panel that is a field of its WidgetState."""
    return property(lambda self: getattr(self.state, name), lambda self, value: setattr(self.state, name, value),
                    doc=doc)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 99.5 else f"{seconds / 60:.0f} min"



class SegmentPanel(SlideActions, ResultActions, QWidget):
    """Controls of the "Segment" section; emits ``segmented`` with the labels layer.

    This module runs a segmentation and shows its layers; the controls are built in
    ``_segment_view``, whole slides are ``_segment_slide``, live threshold and measurements
    ``_segment_results``.
    """

    # what this section shares with the others lives in the widget state (read and written
    # here under the names the section always had)
    result = _shared("result", "the last SegmentationResult / StackResult")
    labels_layer = _shared("labels_layer", "the editable Labels layer of the result")
    source_layer = _shared("image_layer", "the image layer the result came from")
    region = _shared("region", "the ImageRegion the result covers")
    model = _shared("model", "the SegmentationModel in use")

    @property
    def segmented(self):
        """Signal: a new segmentation is shown (the Labels layer)."""
        return self.state.segmented

    @property
    def relabelled(self):
        """Signal: the labels were recomputed from the cached probabilities (the Labels layer)."""
        return self.state.relabelled

    @property
    def model_changed(self):
        """Signal: the model in use changed (SegmentationModel)."""
        return self.state.model_changed

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None, *,
                 state: WidgetState | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.state = state if state is not None else WidgetState(self)
        self.worker = None
        self.relabel_worker = None
        self._cancel_event = threading.Event()
        self._pbar = None
        self._pending_relabel = False
        self._progress_unit = "tiles"
        self._rate_start: tuple[int, float] | None = None  # (done, time) of the first progress report
        self._running_layer = None  # the image being segmented
        self.slide_result: SlideResult | None = None
        self.slide_layer = None  # the lazy multiscale labels of the last whole slide
        build_controls(self)
        self._relabel_timer = common.debounce(self, 120, self.relabel)

        # --- wiring
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.model_picker.model_selected.connect(self._on_model_selected)
        self.threshold_slider.valueChanged.connect(self._on_threshold_moved)
        self.min_size_spin.valueChanged.connect(lambda _: self._relabel_timer.start())
        self.export_button.clicked.connect(lambda: self.export_measurements())
        self.edit_region_button.clicked.connect(lambda: self.correct_visible_region())
        self.save_region_button.clicked.connect(lambda: self.save_corrections_to_slide())
        self.display_group.buttonClicked.connect(lambda _: self._apply_display_everywhere())
        self.image_combo.currentIndexChanged.connect(self._update_stack_controls)
        self.device_combo.currentIndexChanged.connect(self._on_device_changed)
        self.state.model_requested.connect(self.select_model)
        self.state.segment_requested.connect(self._segment_again)
        self._on_device_changed()
        viewer.layers.events.inserted.connect(self._refresh_images)
        viewer.layers.events.removed.connect(self._refresh_images)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.layers.events.moved.connect(self._refresh_images)
        viewer.layers.selection.events.active.connect(self._follow_active)
        self._refresh_images()
        self._on_model_selected(self.model_picker.current_path())

    # ------------------------------------------------------------------ layers

    def _image_layers(self) -> list:
        return [layer for layer in self.viewer.layers if isinstance(layer, napari.layers.Image)]

    def _refresh_images(self, event: Any = None) -> None:
        current = self.image_combo.currentText()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        for layer in self._image_layers():
            self.image_combo.addItem(layer.name)
        index = self.image_combo.findText(current)
        active = self.viewer.layers.selection.active
        if isinstance(active, napari.layers.Image):
            index = self.image_combo.findText(active.name)
        self.image_combo.setCurrentIndex(max(0, index))
        self.image_combo.blockSignals(False)
        for layer in self._image_layers():
            try:
                layer.events.name.disconnect(self._refresh_images)
            except (TypeError, ValueError, RuntimeError):
                pass
            layer.events.name.connect(self._refresh_images)
        self._update_stack_controls()

    def _follow_active(self, event: Any = None) -> None:
        active = self.viewer.layers.selection.active
        if isinstance(active, napari.layers.Image):
            index = self.image_combo.findText(active.name)
            if index >= 0:
                self.image_combo.setCurrentIndex(index)

    def _on_layer_removed(self, event: Any = None) -> None:
        """The image being segmented was removed: stop at the next tile (the result is discarded)."""
        if self.worker is not None and getattr(event, "value", None) is self._running_layer:
            self._cancel_event.set()

    def image_layer(self):
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _update_stack_controls(self, *_: Any) -> None:
        layer = self.image_layer()
        has_stack = bool(layer is not None and layer_lead_shape(layer))
        self.slices_combo.setEnabled(has_stack)
        self.pixel_size_spin.set_layer(layer)

    # ------------------------------------------------------------------ model

    def _on_device_changed(self, *_: Any) -> None:
        self.state.device = self.device_combo.currentData()

    def _segment_again(self) -> None:
        if self.image_layer() is not None:
            self.run()

    def _on_model_selected(self, path: str | None) -> None:
        if not path:
            return
        self.state.model_path = path
        try:
            self.model = load_model(path)
        except ModelLoadError as exc:
            self.model = None
            self.run_button.setText("Segment")
            self.run_button.setEnabled(False)
            common.notify_error(f"Cannot use this model: {exc}")
            return
        card = self.model.card
        self.run_button.setEnabled(self.worker is None)
        self.run_button.setText(card.button_text)
        self.instances_check.setChecked(card.instances)
        # objects read best as outlines; a vessel tree or a lesion as a filled area
        (self.outlines_button if card.instances else self.filled_button).setChecked(True)
        self.min_size_spin.blockSignals(True)
        self.min_size_spin.setValue(card.min_size)
        self.min_size_spin.blockSignals(False)
        self._set_threshold(card.default_threshold)
        self.model_changed.emit(self.model)

    def select_model(self, path: str | Path) -> None:
        """Select a model by weights path (used by the fine-tune and models sections)."""
        self.model_picker.refresh(select=str(path))

    # ------------------------------------------------------------------ running

    def _output_name(self, layer, model: SegmentationModel) -> str:
        return f"{layer.name} {model.card.object_name}"

    def run(self) -> None:
        """Segment the chosen image with the chosen model in a worker thread."""
        if self.worker is not None:
            return
        layer = self.image_layer()
        if layer is None:
            common.notify_error("Open an image first: there is no image layer to segment.")
            return
        if self.model is None:
            common.notify_error("Choose a model that loads without errors first.")
            return
        self.pixel_size_spin.set_layer(layer)  # the layer's scale may have changed since it was chosen
        if self.region_combo.currentData() == "slide":
            self.run_slide(layer)
            return
        try:
            region = image_region(layer, self.viewer, all_slices=bool(self.slices_combo.currentData()),
                                  visible_only=bool(self.region_combo.currentData()))
        except InputError as exc:
            common.notify_error(str(exc))
            return
        name = self._output_name(layer, self.model)
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        if existing is not None and existing.metadata.get("minenet_edited") and not common.confirm(
            self, "Replace edited labels?", f"'{name}' has your corrections. Replace it with a new segmentation?"
        ):
            return

        model, device = self.model, self.device_combo.currentData()
        instances, pixel_size = self.instances_check.isChecked(), self.pixel_size_spin.pixel_size()
        cancel = threading.Event()
        self._cancel_event = cancel
        relay = common.Relay(self)
        relay.progressed.connect(self._on_progress)
        stack = region.lead_index is None and bool(region.lead_shape)

        caught: list[str] = []  # written by the worker before it returns, read after

        def job():
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always", GreyImageWarning)
                try:
                    data = region.load()
                    if stack:
                        return segment_stack(data, model, rgb=region.rgb, progress=relay.progressed.emit,
                                             cancel=cancel.is_set, device=device, instances=instances,
                                             pixel_size=pixel_size, keep_maps=True)
                    # (the maps stay for the threshold and minimum-size controls, whatever the size)
                    return segment(data, model, progress=relay.progressed.emit, cancel=cancel.is_set,
                                   device=device, instances=instances, pixel_size=pixel_size, keep_maps=True)
                except EXPECTED_ERRORS as exc:
                    return common.Failed(exc)
                finally:
                    caught.extend(str(w.message) for w in seen if issubclass(w.category, GreyImageWarning))

        self._progress_unit = "slices" if stack else "tiles"
        self._running_layer = layer
        self._set_running(True, f"segmenting {layer.name} ({region.description})")
        self._pbar = napari_progress(total=0, desc=f"Mini-Net: {model.card.button_text.lower()} in {layer.name}")
        self.worker = create_worker(job)
        self.worker.returned.connect(lambda _: caught and common.notify_warning(
            f"{caught[0]} The result is unreliable: use a model trained on grey images, or the colour image."))
        self.worker.returned.connect(lambda out: self._on_returned(out, layer, region, model, name))
        self.worker.finished.connect(self._on_finished)
        self.worker.start()

    def cancel(self) -> None:
        """Stop the running segmentation after the current tile (also while the widget is
        being destroyed: the controls may already be gone then)."""
        self._cancel_event.set()
        with contextlib.suppress(RuntimeError):  # wrapped C/C++ object deleted
            self.cancel_button.setEnabled(False)
            self.progress_bar.setFormat("cancelling...")

    def _on_progress(self, done: int, total: int) -> None:
        """"12 / 169 tiles, ~40 s left": the time left from the rate since the first report
        (which the core sends before the first tile, so model loading does not count)."""
        now = time.monotonic()
        if self._rate_start is None or done < self._rate_start[0]:
            self._rate_start = (done, now)
        done0, t0 = self._rate_start
        self.progress_bar.setMaximum(max(1, total))
        self.progress_bar.setValue(min(done, max(1, total)))
        text = f"{done} / {total} {self._progress_unit}"
        if done >= total:
            text += ", finishing..."
        elif done > done0 and now > t0:
            text += f", ~{_duration((now - t0) / (done - done0) * (total - done))} left"
        else:
            text += ", estimating time left..."
        self.progress_bar.setFormat(text)
        if self._pbar is not None:
            if self._pbar.total != total:
                self._pbar.total = total
            self._pbar.n = done
            self._pbar.refresh()

    def _set_running(self, running: bool, message: str = "") -> None:
        self.run_button.setEnabled(not running and self.model is not None)
        self.cancel_button.setEnabled(running)
        if running:
            # not a busy bar: Qt shows no text on one; this text stays until the first tile reports
            self._rate_start = None
            self.progress_bar.setMaximum(1)
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat(f"starting: {message}")
            self.progress_bar.setToolTip(message)

    def _on_finished(self) -> None:
        self.worker = None
        self._running_layer = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self._set_running(False)

    def _on_returned(self, out, layer, region: ImageRegion, model: SegmentationModel, name: str) -> None:
        self.progress_bar.setMaximum(100)
        if layer not in self.viewer.layers:  # the image was removed while it was being segmented
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat("image removed")
            common.notify_warning(f"'{layer.name}' was removed during segmentation; the result was discarded.")
            return
        if isinstance(out, common.Failed) and isinstance(out.error, Cancelled):
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat("cancelled")
            common.notify_info("Segmentation cancelled; nothing was changed.")
            return
        if isinstance(out, common.Failed):
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat("failed")
            common.notify_error(f"Segmentation failed: {out}")
            return
        self.progress_bar.setValue(100)
        self.progress_bar.setFormat("done")
        self.result, self.region, self.source_layer = out, region, layer
        self._set_threshold(out.threshold)
        self.min_size_spin.blockSignals(True)
        self.min_size_spin.setValue(out.min_size)  # pixels of this image (the card's are the model's)
        self.min_size_spin.blockSignals(False)
        self._show_labels(layer, region, name, out.labels)
        if self.probability_check.isChecked():
            self._show_probability(layer, region, name, out.probability)
        self._update_summary()
        self.segmented.emit(self.labels_layer)

    # ------------------------------------------------------------------ output layers

    def _show_labels(self, layer, region: ImageRegion, name: str, labels: np.ndarray) -> None:
        data = full_plane(region, labels, np.uint32)
        where = placement(layer, region)
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], napari.layers.Labels):
            target = self.viewer.layers[name]
            target.data = data
            target.scale, target.translate = where["scale"], where["translate"]
        else:
            target = self.viewer.add_labels(data, name=name, **where)
            target.events.paint.connect(lambda event, t=target: t.metadata.__setitem__("minenet_edited", True))
            target.events.contour.connect(lambda event, t=target: self._sync_display_buttons(t))
        instances = self.result is not None and self.result.instances
        target.colormap = label_colormap(instances)
        self.apply_display(target)
        self._select_new_label(target, instances)
        target.metadata["minenet_edited"] = False
        target.metadata["minenet_model"] = str(self.model.path) if self.model and self.model.path else ""
        target.metadata["minenet_image"] = layer.name
        target.metadata["minenet_offset"] = tuple(int(v) for v in region.offset)
        target.metadata["minenet_slice"] = region.lead_index
        self.labels_layer = target
        self.viewer.layers.selection.active = target

    def apply_display(self, layer=None) -> None:
        """Outlines or filled, as chosen with the "Show" buttons, on ``layer`` (default: the
        current labels layer). Only the display changes: the ids in the data stay distinct."""
        layer = layer if layer is not None else self.labels_layer
        if layer is None or layer not in self.viewer.layers:
            return
        outlines = self.outlines_button.isChecked()
        layer.contour = OUTLINE_WIDTH if outlines else 0
        layer.opacity = OUTLINE_OPACITY if outlines else FILLED_OPACITY

    def _apply_display_everywhere(self) -> None:
        """The "Show" buttons act on the labels layer and on a whole slide's labels."""
        self.apply_display()
        if self.slide_layer is not None:
            self.apply_display(self.slide_layer)

    def _sync_display_buttons(self, layer) -> None:
        """The contour spin box of napari's layer controls moves the "Show" buttons too."""
        if layer is self.labels_layer:
            (self.outlines_button if layer.contour > 0 else self.filled_button).setChecked(True)

    @staticmethod
    def _select_new_label(layer, instances: bool) -> None:
        """The brush paints a new object (a new id) by default; the foreground for masks."""
        layer.selected_label = int(np.max(layer.data, initial=0)) + 1 if instances else 1

    def _show_probability(self, layer, region: ImageRegion, name: str, probability: np.ndarray) -> None:
        data = full_plane(region, probability, np.float32)
        pname = f"{name} probability"
        if pname in self.viewer.layers:
            self.viewer.layers[pname].data = data
        else:
            self.viewer.add_image(data, name=pname, colormap="magma", opacity=0.6, blending="additive",
                                  contrast_limits=(0.0, 1.0), visible=True, **placement(layer, region))
            if self.labels_layer is not None:
                self.viewer.layers.selection.active = self.labels_layer
