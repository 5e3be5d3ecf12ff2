"""Correct & learn section: corrected labels become examples on disk; fine-tune in a worker.

Only layers, controls and threads live here; the examples folder is
``napari_minenet.examples.ExampleStore`` and fine-tuning is ``finetuning.finetune``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QFileDialog, QListWidgetItem, QWidget

from . import _qt_common as common
from ._layer_data import full_plane, visible_box
from ._learn_view import build_controls
from ._loss_plot import LossPlot
from ._segment_slide import EXPECTED_ERRORS
from ._widget_state import WidgetState
from .data import InputError, working_scale
from .edits import changed_objects
from .examples import ExampleStore, default_examples_folder
from .finetuning import FinetuneConfig, FinetuneResult, finetune
from .inference import Cancelled

__all__ = ["LearnPanel", "LossPlot", "RECTANGLE_LAYER"]

RECTANGLE_LAYER = "Mini-Net example region"
#: the fine-tuning progress repaints at most this often (each repaint takes CPU from training)
UI_UPDATES_PER_S = 2.0


class LearnPanel(QWidget):
    """Controls of the "Correct & learn" section."""

    finetuned = Signal(object)  # FinetuneResult

    def __init__(self, viewer: napari.Viewer, state: WidgetState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.state = state  # read here, written by the Segment section
        self.store: ExampleStore | None = None
        #: the examples folder this panel suggested for the last image (None once the user
        #: chose one: then it stays, whatever image is segmented next)
        self._auto_folder: str | None = None
        self._watched_layers: weakref.WeakSet = weakref.WeakSet()
        self.worker = None
        self._cancel_event = threading.Event()
        self._pause_event = threading.Event()
        self._pbar = None
        self._budget = 60
        self._last_loss = self._last_val = None
        self._last_ui_update = 0.0
        self._last_record = None
        self._previous_labels = None  # labels before the re-segmentation that follows a kept version
        #: what fine-tuning starts from; the budget box and the device picker set their fields
        #: (scripting from napari's console can change the rest, e.g. the learning rate)
        self.settings = FinetuneConfig()

        build_controls(self)
        self._edit_timer = common.debounce(self, 300, self._update_edited)

        self.folder_button.clicked.connect(self._choose_folder)
        self.folder_edit.textEdited.connect(lambda _: setattr(self, "_auto_folder", None))  # typed by the user
        self.folder_edit.editingFinished.connect(lambda: self.open_store(self.folder_edit.text()))
        self.scope_combo.currentIndexChanged.connect(self._on_scope_changed)
        self.add_button.clicked.connect(self.add_example)
        self.remove_button.clicked.connect(self.remove_selected)
        self.finetune_button.clicked.connect(self.start_finetune)
        self.pause_button.toggled.connect(self._on_pause)
        self.cancel_button.clicked.connect(self.cancel)
        state.segmented.connect(self._on_segmented)
        state.segmented.connect(self._report_change)
        state.relabelled.connect(lambda _: self._update_edited())
        self._refresh_list()

    # ------------------------------------------------------------------ corrections

    def _on_segmented(self, layer) -> None:
        self.edited_label.setText("No corrections yet.")
        if layer not in self._watched_layers:  # a re-segmented image reuses its labels layer
            self._watched_layers.add(layer)
            layer.events.paint.connect(lambda _: self._edit_timer.start())
        image = self.state.image_layer
        source = getattr(getattr(image, "source", None), "path", None) if image is not None else None
        name = image.name if image is not None else "image"
        suggested = str(default_examples_folder(source, name))
        current = str(self.store.folder) if self.store is not None else self.folder_edit.text()
        if not current:
            self._auto_folder = suggested
            self.folder_edit.setText(suggested)
        elif current == self._auto_folder and suggested != current:
            # a different image, and the folder was only our suggestion for the previous one
            self._auto_folder = suggested
            self.store = None
            self.folder_edit.setText(suggested)
            if (Path(suggested) / "examples.json").is_file():
                self.open_store(suggested)  # lists the examples already made from this image
            else:
                self._refresh_list()
            common.notify_info(f"Examples of '{name}' now go to {suggested} (the earlier ones stay in {current}). "
                               "Choose a folder with '...' to keep every image's examples together.")

    def edited_pixels(self) -> int | None:
        """Pixels of the labels layer that differ from the prediction."""
        state = self.state
        layer, result = state.labels_layer, state.result
        if layer is None or result is None or layer not in self.viewer.layers:
            return None
        data = np.asarray(layer.data)
        predicted = full_plane(state.region, result.labels, np.uint32)
        if data.shape != predicted.shape:
            return None
        return int(np.count_nonzero((data > 0) != (predicted > 0)) + np.count_nonzero(
            (data > 0) & (predicted > 0) & (data != predicted)))

    def _update_edited(self) -> None:
        n = self.edited_pixels()
        if n is not None:
            self.edited_label.setText(f"You changed {n:,} pixels." if n else "No corrections yet.")

    # ------------------------------------------------------------------ examples

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for training examples", self.folder_edit.text())
        if folder:
            self._auto_folder = None  # chosen: it stays for the next images
            self.open_store(folder)

    def open_store(self, folder: str | Path) -> ExampleStore | None:
        if not str(folder):
            return None
        if str(folder) != self._auto_folder:  # a folder other than the one suggested
            self._auto_folder = None
        try:
            self.store = ExampleStore(folder)
        except InputError as exc:
            common.notify_error(str(exc))
            self.store = None
            return None
        self.folder_edit.setText(str(folder))
        self._refresh_list()
        return self.store

    def _on_scope_changed(self, *_: Any) -> None:
        if self.scope_combo.currentData() == "rectangle":
            layer = self._rectangle_layer(create=True)
            self.viewer.layers.selection.active = layer
            layer.mode = "add_rectangle"
            common.notify_info("Draw a rectangle around the corrected area, then click 'Add as training example'.")

    def _rectangle_layer(self, create: bool = False):
        if RECTANGLE_LAYER in self.viewer.layers:
            return self.viewer.layers[RECTANGLE_LAYER]
        if not create:
            return None
        return self.viewer.add_shapes(name=RECTANGLE_LAYER, edge_color="yellow", face_color="transparent",
                                      edge_width=3)

    def _crop_box(self, labels_layer, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) in the labels plane for the chosen scope."""
        h, w = shape
        scope = self.scope_combo.currentData()
        if scope == "view":
            return visible_box(labels_layer, h, w)
        if scope == "rectangle":
            shapes = self._rectangle_layer()
            if shapes is None or len(shapes.data) == 0:
                raise InputError("Draw a rectangle first (a Shapes layer named "
                                 f"'{RECTANGLE_LAYER}' was added for it).")
            # one corner at a time: given an (N, D) array, napari's data_to_world reads it as a
            # single position and returns its last D rows (two points for a rectangle)
            world = [shapes.data_to_world(corner) for corner in np.asarray(shapes.data[-1])]
            corners = np.array([labels_layer.world_to_data(p) for p in world], dtype=float)[:, -2:]
            y0, x0 = np.floor(corners.min(axis=0)).astype(int)
            y1, x1 = np.ceil(corners.max(axis=0)).astype(int)
            y0, x0, y1, x1 = max(0, y0), max(0, x0), min(h, y1), min(w, x1)
            if y1 - y0 < 32 or x1 - x0 < 32:
                raise InputError("The rectangle must cover at least 32 x 32 pixels of the labels.")
            return int(y0), int(y1), int(x0), int(x1)
        return 0, h, 0, w

    def add_example(self) -> None:
        """Save the corrected labels (whole / visible / rectangle) with the image pixels."""
        state = self.state
        layer, region = state.labels_layer, state.region
        if layer is None or layer not in self.viewer.layers or region is None:
            common.notify_error("Segment an image first, then correct the labels and add them.")
            return
        if self.store is None and self.open_store(self.folder_edit.text()) is None:
            common.notify_error("Choose a folder for the training examples first.")
            return
        labels = np.asarray(layer.data)
        plane_index = region.lead_index or tuple(
            int(s) for s in self.viewer.dims.current_step[: len(region.lead_shape)]
        )
        plane = labels[plane_index] if region.lead_shape else labels
        image = region.data if region.lead_index is not None else region.data[plane_index]
        card = state.model.card if state.model is not None else None
        level0 = state.image_layer.data[0] if state.image_layer.multiscale else state.image_layer.data
        full_hw = level0.shape[len(region.lead_shape): len(region.lead_shape) + 2]
        scale = working_scale(full_hw, card.working_long_side) if card and card.working_long_side else None
        if state.result is not None and abs(state.result.scale - 1.0) > 1e-3:
            # segmented at another scale (the pixel size, or the automatic size estimate):
            # fine-tuning must see the example on the grid the network saw it on
            scale = state.result.scale
        predicted = np.asarray(state.result.labels) if state.result is not None else None
        if predicted is not None and predicted.ndim > 2:  # a stack segmented slice by slice
            predicted = predicted[plane_index]
        try:
            y0, y1, x0, x1 = self._crop_box(layer, plane.shape)
            edited = self.edited_pixels()
            record = self.store.add(
                image[y0:y1, x0:x1], plane[y0:y1, x0:x1],
                source=state.image_layer.name if state.image_layer is not None else "",
                box=(y0 + region.offset[0], y1 + region.offset[0], x0 + region.offset[1], x1 + region.offset[1]),
                model=card.name if card else "", edited_pixels=edited, scale=scale,
                # what the model predicted: fine-tuning learns from where the user changed it
                before=predicted[y0:y1, x0:x1] if predicted is not None and predicted.shape == plane.shape else None,
            )
        except (InputError, OSError) as exc:
            common.notify_error(f"Could not add the example: {exc}")
            return
        if self.scope_combo.currentData() == "image":
            layer.metadata["minenet_edited"] = False  # every correction is now saved on disk
        self._refresh_list()
        note = "" if edited else " (note: the labels were not corrected, so the model learns little from it)"
        common.notify_info(f"Added example {record.id} ({y1 - y0} x {x1 - x0} px) to {self.store.folder}{note}")

    def remove_selected(self) -> None:
        item = self.examples_list.currentItem()
        if item is None or self.store is None:
            return
        self.store.remove(item.data(Qt.UserRole))
        self._refresh_list()

    def _refresh_list(self) -> None:
        self.examples_list.clear()
        records = self.store.records if self.store is not None else []
        for r in records:
            size = f"{r.shape[0]} x {r.shape[1]}"
            item = QListWidgetItem(f"{r.id}   {size}, {r.objects} objects")
            item.setData(Qt.UserRole, r.id)
            self.examples_list.addItem(item)
        self.count_label.setText(f"{len(records)} example{'s' if len(records) != 1 else ''}")
        self.finetune_button.setEnabled(bool(records) and self.worker is None)
        self.remove_button.setEnabled(bool(records))

    # ------------------------------------------------------------------ fine-tuning

    def start_finetune(self, max_seconds: float | None = None) -> None:
        """Fine-tune the selected model on the examples in a worker thread."""
        if self.worker is not None:
            return
        parent = self.state.model
        if parent is None:
            common.notify_error("Choose a model to fine-tune first.")
            return
        if self.store is None or len(self.store) == 0:
            common.notify_error("Add at least one corrected example first.")
            return
        try:
            examples = self.store.load()
        except (InputError, OSError) as exc:
            common.notify_error(f"Cannot read the examples: {exc}")
            return
        budget = float(max_seconds if max_seconds else self.budget_spin.value())
        cfg = dataclasses.replace(self.settings, max_seconds=budget,
                                  device=self.state.device)
        cancel, pause = threading.Event(), threading.Event()
        self._cancel_event, self._pause_event = cancel, pause
        sources = [f"{self.store.folder}/{r.id}" for r in self.store.records]

        def job():
            try:
                return (yield from finetune(parent, examples, cfg, cancel=cancel.is_set, pause=pause.is_set,
                                            example_sources=sources))
            except EXPECTED_ERRORS as exc:
                return common.Failed(exc)

        self._budget = budget
        self.loss_plot.clear()
        self._set_running(True)
        self._pbar = napari_progress(total=int(budget), desc=f"Mini-Net: fine-tuning {parent.card.name}")
        self.worker = create_worker(job)
        self.worker.yielded.connect(self._on_record)
        self.worker.returned.connect(self._on_returned)
        self.worker.finished.connect(self._on_finished)
        self.worker.start()

    def _on_record(self, rec) -> None:
        """Progress from the trainer. Every record is kept, but the panel repaints at most
        ``UI_UPDATES_PER_S`` times a second: repaints cost the trainer CPU time."""
        if rec.kind == "step" and rec.loss is not None:
            self.loss_plot.add_step(rec.loss, repaint=False)
            self._last_loss = rec.loss
        elif rec.kind == "validation" and rec.val_metrics and rec.val_loss is not None and np.isfinite(rec.val_loss):
            # (learning from corrections validates nothing during training: the judge comes after)
            self.loss_plot.add_held_out(rec.val_loss, repaint=False)
            self._last_val = rec.val_score
        self._last_record = rec
        now = time.monotonic()
        if rec.kind in ("step", "validation") and now - self._last_ui_update < 1.0 / UI_UPDATES_PER_S:
            return
        self._last_ui_update = now
        self._show_progress(rec)

    def _show_progress(self, rec) -> None:
        budget = int(self._budget)
        if rec.kind in ("setup", "checking"):  # not training: say what happens instead
            self.progress_bar.setFormat("preparing..." if rec.kind == "setup" else "checking...")
            self.status_label.setText(rec.message)
            return
        self.progress_bar.setMaximum(budget)
        self.progress_bar.setValue(min(int(rec.elapsed), budget))
        self.progress_bar.setFormat(f"training {rec.elapsed:.0f} / {budget} s")
        if self._pbar is not None:
            self._pbar.n = min(int(rec.elapsed), budget)
            self._pbar.refresh()
        self.loss_plot.update()
        parts = [f"step {rec.step}"]
        if self._last_loss is not None:
            parts.append(f"loss {self._last_loss:.3f}")
        if self._last_val is not None:
            parts.append(f"held-out F1 {self._last_val:.3f}")
        self.status_label.setText(" · ".join(parts))

    def _on_pause(self, paused: bool) -> None:
        if paused:
            self._pause_event.set()
            self.pause_button.setText("Resume")
        else:
            self._pause_event.clear()
            self.pause_button.setText("Pause")

    def cancel(self) -> None:
        """Stop fine-tuning at the next step (a paused run too); nothing is saved. Also safe
        while the widget is being destroyed (the controls may already be gone then)."""
        self._cancel_event.set()
        self._pause_event.clear()
        with contextlib.suppress(RuntimeError):  # wrapped C/C++ object deleted
            self.cancel_button.setEnabled(False)
            self.progress_bar.setFormat("cancelling...")

    def _set_running(self, running: bool) -> None:
        self.finetune_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.pause_button.setEnabled(running)
        self.add_button.setEnabled(not running)
        if not running:
            self.pause_button.setChecked(False)
        else:
            self._last_loss = self._last_val = None
            self._last_ui_update = 0.0
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat("preparing...")
            self.status_label.setText("reading the corrections and the current model's view of them...")

    def _on_finished(self) -> None:
        self.worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self._set_running(False)
        self._refresh_list()

    def _on_returned(self, out) -> None:
        if isinstance(out, common.Failed) and isinstance(out.error, Cancelled):
            self.progress_bar.setFormat("cancelled")
            common.notify_info("Fine-tuning cancelled; the selected model is unchanged.")
            return
        if isinstance(out, common.Failed) and isinstance(out.error, InputError):
            # the examples cannot be learnt from as they are (too few corrections, none at
            # all...): what to do, not a failure report
            self.progress_bar.setFormat("not started")
            common.notify_warning(f"Cannot fine-tune yet: {out}")
            return
        if isinstance(out, common.Failed):
            self.progress_bar.setFormat("failed")
            common.notify_error(f"Fine-tuning failed: {out}")
            return
        result: FinetuneResult = out
        self.progress_bar.setValue(self.progress_bar.maximum())
        timing = (f"{result.steps} training steps in {result.seconds:.0f} s "
                  f"({result.total_seconds:.0f} s with preparation and checks)")
        if not result.accepted:
            self.progress_bar.setFormat("kept the current model")
            common.notify_warning(f"The new version was not kept, the current model stays selected: {result.reason}")
            self.status_label.setText(f"Not kept, the current model stays: {result.reason}. {timing}.")
            self.finetuned.emit(result)
            return
        self.progress_bar.setFormat("new version saved")
        self.status_label.setText(f"Kept {result.model.card.name}: {result.reason}. {timing}.")
        common.notify_info(f"Saved and selected {result.model.card.name}: {result.reason}")
        self._previous_labels = self._current_labels()
        self.state.use_model(result.saved_to)
        self.finetuned.emit(result)
        if self.resegment_check.isChecked():
            self.state.segment_again()

    def _current_labels(self) -> np.ndarray | None:
        layer = self.state.labels_layer
        if layer is None or layer not in self.viewer.layers:
            return None
        return np.array(layer.data, copy=True)

    def _report_change(self, layer) -> None:
        """After the re-segmentation that follows a kept version: how many objects changed."""
        previous, self._previous_labels = self._previous_labels, None
        if previous is None or layer is None or previous.shape != np.shape(layer.data):
            return
        card = self.state.model.card if self.state.model is not None else None
        changed = changed_objects(previous, np.asarray(layer.data), instances=bool(card and card.instances))
        noun = card.object_name if card is not None else "objects"
        text = f"The new version changed {changed} {noun} on this image." if card and card.instances else (
            f"The new version changed {changed:,} pixels on this image.")
        self.status_label.setText(f"{self.status_label.text()} {text}")
        common.notify_info(text)
