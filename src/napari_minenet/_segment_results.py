"""The Segment section's results: live threshold and minimum size (re-thresholding the
cached probabilities in a worker), the summary line, and per-object measurements to CSV.

``ResultActions`` is a part of :class:`~napari_minenet._segment_panel.SegmentPanel` (a mixin:
it uses the panel's controls and state).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtWidgets import QFileDialog

from . import _qt_common as common
from ._layer_data import full_plane
from .data import InputError
from .files import atomic_write_bytes
from .segmentation import StackResult, measure, summarize


class ResultActions:
    """Live post-processing and measurement methods of the Segment panel."""

    def _set_threshold(self, value: float) -> None:
        self.threshold_slider.blockSignals(True)
        self.threshold_slider.setValue(int(round(value * 100)))
        self.threshold_slider.blockSignals(False)
        self.threshold_label.setText(f"{value:.2f}")

    def _on_threshold_moved(self, value: int) -> None:
        self.threshold_label.setText(f"{value / 100:.2f}")
        self._relabel_timer.start()

    def relabel(self) -> None:
        """Re-threshold the cached probabilities (no network run) in a worker; latest wins."""
        if self.result is None or self.labels_layer is None:
            return
        if getattr(self.result, "probability", None) is None:  # a region of a whole slide: no probabilities
            common.notify_info("A whole slide keeps no probabilities: segment it again to use another threshold "
                               "or minimum size.")
            return
        if self.relabel_worker is not None:
            self._pending_relabel = True
            return
        if self.labels_layer.metadata.get("minenet_edited") and not common.confirm(
            self, "Discard corrections?", "Changing the threshold recomputes the labels and discards your edits."
        ):
            self._set_threshold(self.result.threshold)
            return
        threshold = self.threshold_slider.value() / 100
        min_size = self.min_size_spin.value()
        instances = self.instances_check.isChecked()
        result = self.result

        def job():
            return result.relabel(threshold=threshold, min_size=min_size, instances=instances)

        self.relabel_worker = create_worker(job)
        self.relabel_worker.returned.connect(self._on_relabelled)
        self.relabel_worker.finished.connect(self._on_relabel_finished)
        self.relabel_worker.start()

    def _on_relabelled(self, labels: np.ndarray) -> None:
        layer = self.labels_layer
        if layer is None or layer not in self.viewer.layers:
            return
        layer.data = full_plane(self.region, labels, np.uint32)
        layer.metadata["minenet_edited"] = False
        self._select_new_label(layer, bool(self.result is not None and self.result.instances))
        self._update_summary()
        self.relabelled.emit(layer)

    def _on_relabel_finished(self) -> None:
        self.relabel_worker = None
        if self._pending_relabel:
            self._pending_relabel = False
            self.relabel()

    # ------------------------------------------------------------------ results

    def _update_summary(self) -> None:
        if self.result is None:
            return
        card = self.result.card
        pixel_size = getattr(self.result, "pixel_size", None)
        note = getattr(self.result.planes[0] if isinstance(self.result, StackResult) else self.result, "size_note", "")
        self.summary_label.setVisible(True)
        self.summary_label.setText(summarize(self.result.labels, card.object_name, self.result.instances, pixel_size)
                                   + (f"\n{note}" if note else ""))
        self.export_button.setEnabled(True)

    def _measurement_planes(self, layer) -> list[tuple[tuple[int, ...], np.ndarray, np.ndarray | None]]:
        """(slice index, 2-D labels, matching image plane or None) for every segmented plane."""
        labels = np.asarray(layer.data)
        region = self.region
        image = np.asarray(region.data) if region is not None else None
        if region is None or not region.lead_shape:
            if labels.ndim != 2:
                raise InputError(f"the labels layer has shape {labels.shape}; measurements need one 2-D plane")
            ok = image is not None and image.shape[:2] == labels.shape
            return [((), labels, image if ok else None)]
        if labels.shape != region.labels_shape:
            raise InputError(f"the labels layer has shape {labels.shape}, the segmented image "
                             f"{region.labels_shape}: segment the image again")
        if region.lead_index is not None:  # one slice segmented
            ok = image is not None and image.shape[:2] == region.plane_shape
            return [(region.lead_index, labels[region.lead_index], image if ok else None)]
        return [(index, labels[index], image[index] if image is not None else None)
                for index in np.ndindex(*region.lead_shape)]

    def _default_export_path(self, layer) -> Path:
        """Beside the image file when the image came from one, else in the home folder."""
        image = self.source_layer
        source = getattr(getattr(image, "source", None), "path", None) if image is not None else None
        folder = Path.home()
        if source:
            p = Path(source)
            folder = p.parent if p.suffix or p.is_file() else p
        return folder / f"{layer.name.replace(' ', '_')}_measurements.csv"

    def export_measurements(self, path: str | None = None) -> None:
        """Per-object measurements of the current labels layer (with the user's edits) to CSV;
        for a stack segmented slice by slice, one row per object and slice (``slice`` column)."""
        layer = self.labels_layer
        if layer is None or layer not in self.viewer.layers:
            common.notify_error("Segment an image first: there are no labels to measure.")
            return
        try:  # anything that cannot be measured is said before the save dialog opens
            planes = self._measurement_planes(layer)
        except InputError as exc:
            common.notify_error(f"Cannot export measurements: {exc}")
            return
        if not path:
            default = str(self._default_export_path(layer))
            path, _ = QFileDialog.getSaveFileName(self, "Export measurements", default, "CSV (*.csv)")
            if not path:
                return
        region = self.region
        index_names: list[str] = []
        if region is not None and region.lead_shape:
            n_lead = len(region.lead_shape)
            index_names = ["slice"] if n_lead == 1 else [f"slice_{k}" for k in range(n_lead)]
        try:
            buf = io.StringIO()
            writer = csv.writer(buf)
            n, header = 0, False
            for index, labels, image in planes:
                table = measure(labels, image, getattr(self.result, "pixel_size", None))
                columns = list(table)
                if not header:
                    writer.writerow(index_names + columns)
                    header = True
                for i in range(len(table[columns[0]]) if columns else 0):
                    writer.writerow(list(index) + [table[c][i].item() if hasattr(table[c][i], "item") else table[c][i]
                                                   for c in columns])
                    n += 1
            atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
        except (OSError, ValueError, InputError) as exc:
            common.notify_error(f"Could not write {path}: {exc}")
            return
        where = f" in {len(planes)} slices" if len(planes) > 1 else ""
        common.notify_info(f"Saved measurements of {n} objects{where} to {path}")
