"""Segment section of the dock widget: pick image and model, segment in a worker, live threshold.

Only layers, controls and threads live here; segmentation itself is
``napari_minenet.segmentation.segment`` / ``segment_stack``.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import _qt_common as common
from ._layer_data import ImageRegion, image_region, layer_lead_shape
from ._pixel_size_control import PixelSizeControl
from .auto_size import unresampled_slide_note
from .data import GreyImageWarning, InputError
from .errors import MinenetError
from .files import atomic_write_bytes
from .inference import Cancelled, device_report
from .segmentation import SegmentationResult, StackResult, measure, segment, segment_stack, summarize
from .slide_engine import LABELS_PATH, SlideOptions, SlideResult, segment_slide
from .slides import slide_from_levels
from .zoo import ModelLoadError, SegmentationModel, load_model

logger = logging.getLogger(__name__)

#: what a worker turns into a notification instead of a traceback: this package's own errors
#: (MinenetError: bad input, unloadable model, cancelled) and the ones torch, numpy and the
#: file system raise for a run that cannot go on
EXPECTED_ERRORS = (MinenetError, Cancelled, RuntimeError, ValueError, MemoryError, OSError)

#: label colours: bright and saturated, readable on pink/purple H&E, brown/blue IHC and
#: dark fundus backgrounds alike (never the dark blues and purples of napari's random map)
BRIGHT_COLOURS = ("#ffff00", "#00ff40", "#00ffff")
OUTLINE_WIDTH = 2  # px of the data: 3 screen px at zoom 1.5
OUTLINE_OPACITY = 0.9
FILLED_OPACITY = 0.55


def label_colormap(instances: bool):
    """Cyclic map: 0 transparent, every other id one of the bright colours (a new id painted
    with the brush gets one too); semantic labels are all cyan."""
    from napari.utils.colormaps import CyclicLabelColormap

    colours = BRIGHT_COLOURS if instances else ("#00ffff",)
    return CyclicLabelColormap(colors=["transparent", *colours], name="minenet-bright")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 99.5 else f"{seconds / 60:.0f} min"


class SegmentPanel(QWidget):
    """Controls of the "Segment" section; emits ``segmented`` with the labels layer."""

    segmented = Signal(object)  # the Labels layer
    relabelled = Signal(object)  # the Labels layer, recomputed from the cached probabilities
    model_changed = Signal(object)  # SegmentationModel

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.worker = None
        self.relabel_worker = None
        self.result: SegmentationResult | StackResult | None = None
        self.labels_layer: napari.layers.Labels | None = None
        self.source_layer: napari.layers.Image | None = None
        self.region: ImageRegion | None = None
        self.model: SegmentationModel | None = None
        self._cancel_event = threading.Event()
        self._pbar = None
        self._pending_relabel = False
        self._progress_unit = "tiles"
        self._rate_start: tuple[int, float] | None = None  # (done, time) of the first progress report
        self._running_layer = None  # the image being segmented

        # --- inputs
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("Image layer to segment (follows the selected layer)")
        self.model_picker = common.ModelPicker()
        self.model_picker.setToolTip("Built-in models, your fine-tuned versions, or a model file")
        self.device_combo = QComboBox()
        found = device_report()
        self.device_combo.addItem(f"Auto ({found.get('cuda', found.get('mps', found['cpu']))})", "auto")
        self.device_combo.addItem(found["cpu"], "cpu")
        if "cuda" in found:
            self.device_combo.addItem(found["cuda"], "cuda")
        if "mps" in found:
            self.device_combo.addItem(found["mps"], "mps")
        self.slices_combo = QComboBox()
        self.slices_combo.addItem("Current slice", False)
        self.slices_combo.addItem("All slices", True)
        self.region_combo = QComboBox()
        self.region_combo.addItem("Whole image", False)
        self.region_combo.addItem("Visible region", True)
        self.region_combo.addItem("Whole slide (blocks, to disk)", "slide")
        self.region_combo.setToolTip("The whole full-resolution image (in tiles); for very large images, only what "
                                     "is on the canvas; or a whole slide block by block, glass skipped, the labels "
                                     "written to an OME-Zarr beside the image and shown lazily")
        self.pixel_size_spin = PixelSizeControl()
        self.instances_check = QCheckBox("One label per object")
        self.probability_check = QCheckBox("Probability map")
        self.probability_check.setToolTip("Also show the probability map as an image layer")

        # --- run
        self.run_button = QPushButton("Segment")
        self.run_button.setMinimumHeight(36)
        font = self.run_button.font()
        font.setBold(True)
        font.setPointSize(font.pointSize() + 1)
        self.run_button.setFont(font)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setFormat("ready")
        self.progress_bar.setValue(0)

        # --- live post-processing
        self.threshold_slider = QSlider(Qt.Horizontal)
        self.threshold_slider.setRange(1, 99)
        self.threshold_slider.setValue(50)
        self.threshold_label = QLabel("0.50")
        self.threshold_label.setMinimumWidth(32)
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(0, 100_000)
        self.min_size_spin.setSuffix(" px")
        self.min_size_spin.setToolTip("Objects smaller than this are removed")
        self.summary_label = QLabel("")
        self.summary_label.setWordWrap(True)
        self.summary_label.setVisible(False)  # until there is a result: the dock stays short
        self.export_button = QPushButton("Export measurements...")
        self.export_button.setEnabled(False)
        self.edit_region_button = QPushButton("Correct visible region")
        self.edit_region_button.setToolTip("Whole slides: copy the slide's labels on the canvas into an editable "
                                           "layer (brush, eraser, 'Add as training example'); 'Save corrections "
                                           "to slide' writes them back")
        self.edit_region_button.setEnabled(False)
        self.save_region_button = QPushButton("Save corrections to slide")
        self.save_region_button.setEnabled(False)
        self.slide_result: SlideResult | None = None
        self.slide_layer = None  # the lazy multiscale labels of the last whole slide

        # --- display: outlines (readable on tissue, default for objects) or filled
        self.outlines_button = QRadioButton("outlines")
        self.filled_button = QRadioButton("filled")
        self.display_group = QButtonGroup(self)
        self.display_group.setExclusive(True)
        for button in (self.outlines_button, self.filled_button):
            self.display_group.addButton(button)
        self.outlines_button.setChecked(True)
        self.outlines_button.setToolTip(f"Draw each object's outline ({OUTLINE_WIDTH} px, bright colours)")
        self.filled_button.setToolTip("Fill each object with a semi-transparent colour")

        for combo in (self.image_combo, self.model_picker, self.device_combo, self.slices_combo, self.region_combo):
            # long layer or model names must not widen the dock past the screen
            combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(8)
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_picker)
        form.addRow("Device", self.device_combo)
        form.addRow("Pixel size (um)", self.pixel_size_spin)
        where_row = QHBoxLayout()  # stack: which slices; large images: whole or visible region
        where_row.addWidget(self.slices_combo)
        where_row.addWidget(self.region_combo)
        checks_row = QHBoxLayout()
        checks_row.addWidget(self.instances_check)
        checks_row.addWidget(self.probability_check)
        checks_row.addStretch(1)
        run_row = QHBoxLayout()
        run_row.addWidget(self.run_button, 3)
        run_row.addWidget(self.cancel_button, 1)
        thr_row = QHBoxLayout()
        thr_row.addWidget(self.threshold_slider)
        thr_row.addWidget(self.threshold_label)
        show_row = QHBoxLayout()
        show_row.addWidget(self.outlines_button)
        show_row.addWidget(self.filled_button)
        show_row.addStretch(1)
        post = QFormLayout()
        post.addRow("Threshold", thr_row)
        post.addRow("Minimum size", self.min_size_spin)
        post.addRow("Show", show_row)
        self.slices_combo.setToolTip("Stacks and time series: the slice on the canvas, or every slice")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addLayout(form)
        layout.addLayout(where_row)
        layout.addLayout(checks_row)
        layout.addLayout(run_row)
        layout.addWidget(self.progress_bar)
        layout.addLayout(post)
        layout.addWidget(self.summary_label)
        layout.addWidget(self.export_button)
        self.slide_row = QWidget()  # shown once a whole slide is segmented (the dock stays short)
        slide_row = QHBoxLayout(self.slide_row)
        slide_row.setContentsMargins(0, 0, 0, 0)
        slide_row.addWidget(self.edit_region_button)
        slide_row.addWidget(self.save_region_button)
        self.slide_row.setVisible(False)
        layout.addWidget(self.slide_row)

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
        self.display_group.buttonClicked.connect(lambda _: self.apply_display())
        self.image_combo.currentIndexChanged.connect(self._update_stack_controls)
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

    def _on_model_selected(self, path: str | None) -> None:
        if not path:
            return
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
                                             pixel_size=pixel_size)
                    return segment(data, model, progress=relay.progressed.emit, cancel=cancel.is_set,
                                   device=device, instances=instances, pixel_size=pixel_size)
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

    # ------------------------------------------------------------------ whole slides

    def _slide_output(self, layer) -> Path:
        """``<image folder>/<image stem>.minenet/<stem>.zarr`` beside the slide file when the
        folder is writable, else in the user folder (``slides/``)."""
        source = getattr(getattr(layer, "source", None), "path", None) or layer.metadata.get("minenet_slide")
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in layer.name) or "slide"
        if source:
            folder = Path(source).parent / f"{Path(source).name.split('.')[0]}.minenet"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                return folder / f"{stem}.zarr"
            except OSError as exc:
                logger.info("cannot write beside the slide (%s); the labels go to the user folder", exc)
        from .zoo import user_models_dir

        folder = user_models_dir().parent / "slides"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{stem}.zarr"

    def run_slide(self, layer) -> None:
        """Segment the whole full-resolution level block by block in a worker (the slide
        engine); the labels are written to an OME-Zarr and shown as a lazy multiscale layer."""
        if layer_lead_shape(layer):
            common.notify_error("Whole slides are 2-D images; this layer is a stack.")
            return
        levels = list(layer.data) if layer.multiscale else [layer.data]
        mpp = self.pixel_size_spin.known_pixel_size()
        source = getattr(getattr(layer, "source", None), "path", None) or layer.metadata.get("minenet_slide")
        try:
            slide = slide_from_levels(levels, mpp, layer.name, Path(source) if source else None)
            out = self._slide_output(layer)
        except (InputError, OSError) as exc:
            common.notify_error(f"Cannot segment '{layer.name}' as a whole slide: {exc}")
            return
        model, name = self.model, f"{layer.name} {self.model.card.object_name} (whole slide)"
        options = SlideOptions(device=self.device_combo.currentData(), instances=self.instances_check.isChecked(),
                               threshold=self.threshold_slider.value() / 100, min_size=self.min_size_spin.value())
        stem = out.name.removesuffix(".zarr")
        cancel = threading.Event()
        self._cancel_event = cancel
        relay = common.Relay(self)
        relay.progressed.connect(self._on_progress)

        def job():
            try:
                return segment_slide(slide, model, out, options=options, progress=relay.progressed.emit,
                                     cancel=cancel.is_set, csv=out.with_name(f"{stem}_measurements.csv"),
                                     geojson=out.with_name(f"{stem}_{model.card.object_name}.geojson"))
            except EXPECTED_ERRORS as exc:
                return common.Failed(exc)

        self._progress_unit = "tissue blocks"
        self._running_layer = layer
        self._set_running(True, f"segmenting the whole slide {layer.name} into {out}")
        self._pbar = napari_progress(total=0, desc=f"Mini-Net: whole slide {layer.name}")
        self.worker = create_worker(job)
        self.worker.returned.connect(lambda res: self._on_slide_returned(res, layer, name))
        self.worker.finished.connect(self._on_finished)
        self.worker.start()

    def _on_slide_returned(self, out, layer, name: str) -> None:
        self.progress_bar.setMaximum(100)
        if isinstance(out, common.Failed):
            self.progress_bar.setValue(0)
            if isinstance(out.error, Cancelled):
                self.progress_bar.setFormat("cancelled")
                common.notify_info("Whole-slide segmentation cancelled; the finished blocks are kept and the next "
                                   "run resumes from them.")
            else:
                self.progress_bar.setFormat("failed")
                common.notify_error(f"Whole-slide segmentation failed: {out}")
            return
        if layer not in self.viewer.layers:
            self.progress_bar.setFormat("image removed")
            return
        import zarr

        group = zarr.open_group(str(out.zarr_path / LABELS_PATH), mode="r")
        arrays = [group[d["path"]] for d in group.attrs["multiscales"][0]["datasets"]]
        placement = {"scale": np.asarray(layer.scale, dtype=float)[-2:],
                     "translate": np.asarray(layer.translate, dtype=float)[-2:]}
        if getattr(layer, "units", None) is not None:
            placement["units"] = tuple(layer.units)[-2:]
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        target = self.viewer.add_labels(arrays, name=name, multiscale=True, **placement)
        instances = bool(self.model.card.instances) if self.model is not None else True
        target.colormap = label_colormap(instances)
        target.opacity = OUTLINE_OPACITY if self.outlines_button.isChecked() else FILLED_OPACITY
        target.metadata.update(minenet_zarr=str(out.zarr_path), minenet_image=layer.name)
        self.slide_result, self.slide_layer, self.source_layer = out, target, layer
        self.edit_region_button.setEnabled(True)
        self.slide_row.setVisible(True)
        self.progress_bar.setValue(100)
        self.progress_bar.setFormat("done")
        resumed = f", {out.blocks_resumed} blocks from an earlier run" if out.blocks_resumed else ""
        note = unresampled_slide_note(self.model.card, out.mpp) if self.model is not None else None
        if note:
            common.notify_warning(note[0].upper() + note[1:])
        self.summary_label.setVisible(True)
        self.summary_label.setText(f"{out.count} {self.model.card.object_name if self.model else 'objects'} in "
                                   f"{out.blocks_tissue} tissue blocks ({out.tissue_fraction:.0%} tissue{resumed}); "
                                   f"saved in {out.zarr_path.parent}")

    def correct_visible_region(self) -> None:
        """Copy the whole slide's labels on the canvas into an editable layer (a crop), which
        then works like any segmentation: brush, eraser, 'Add as training example'."""
        if self.slide_result is None or self.slide_layer not in self.viewer.layers:
            common.notify_error("Segment a whole slide first.")
            return
        image = self.source_layer
        try:
            region = image_region(image, self.viewer, visible_only=True)
        except InputError as exc:
            common.notify_error(str(exc))
            return
        (y0, x0), (h, w) = region.offset, region.plane_shape
        if h * w > 16_000_000:
            common.notify_error(f"The visible region is {h:,} x {w:,} px: zoom in to at most 4,000 x 4,000 px "
                                "to correct it.")
            return
        labels = np.asarray(self.slide_layer.data[0][y0 : y0 + h, x0 : x0 + w]).astype(np.uint32)
        region.load()
        card = self.model.card
        self.result = SegmentationResult(labels.copy(), None, None, card, card.default_threshold,  # type: ignore[arg-type]
                                         card.instances, card.min_size)
        self.region = region
        name = f"{image.name} {card.object_name} (correction)"
        self._show_labels(image, region, name, labels)
        self.labels_layer.selected_label = int(self.slide_result.count) + 1
        self.save_region_button.setEnabled(True)
        self._update_summary()
        self.segmented.emit(self.labels_layer)

    def save_corrections_to_slide(self) -> None:
        """Write the corrected region back into the slide's labels (all pyramid levels)."""
        from .slide_engine import write_region

        layer, region = self.labels_layer, self.region
        if self.slide_result is None or layer is None or region is None or layer not in self.viewer.layers:
            common.notify_error("Correct a region of a whole slide first.")
            return
        try:
            write_region(self.slide_result.zarr_path, region.offset, np.asarray(layer.data))
        except (OSError, ValueError) as exc:
            common.notify_error(f"Could not save the corrections: {exc}")
            return
        if self.slide_layer in self.viewer.layers:
            self.slide_layer.refresh()
        layer.metadata["minenet_edited"] = False
        common.notify_info(f"Saved the corrected region to {self.slide_result.zarr_path}")

    def cancel(self) -> None:
        """Stop the running segmentation after the current tile."""
        self._cancel_event.set()
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

    def _full_plane(self, region: ImageRegion, plane: np.ndarray, dtype) -> np.ndarray:
        """Labels for the whole layer shape, with ``plane`` in the segmented slice."""
        if region.lead_index is None or not region.lead_shape:
            return plane.astype(dtype, copy=True)  # the layer is edited; the prediction stays as it was
        full = np.zeros(region.labels_shape, dtype)
        full[region.lead_index] = plane
        return full

    def _placement(self, layer, region: ImageRegion) -> dict:
        scale = np.asarray(layer.scale)[-len(region.labels_shape):] if layer.scale is not None else None
        translate = np.asarray(layer.translate, dtype=float)[-len(region.labels_shape):].copy()
        if scale is not None:
            translate[-2:] += np.asarray(region.offset) * scale[-2:]
        placement = {"scale": scale, "translate": translate}
        units = getattr(layer, "units", None)  # um for slides: napari renders in units only when all agree
        if units is not None:
            placement["units"] = tuple(units)[-len(region.labels_shape):]
        return placement

    def _show_labels(self, layer, region: ImageRegion, name: str, labels: np.ndarray) -> None:
        data = self._full_plane(region, labels, np.uint32)
        placement = self._placement(layer, region)
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], napari.layers.Labels):
            target = self.viewer.layers[name]
            target.data = data
            target.scale, target.translate = placement["scale"], placement["translate"]
        else:
            target = self.viewer.add_labels(data, name=name, **placement)
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

    def _sync_display_buttons(self, layer) -> None:
        """The contour spin box of napari's layer controls moves the "Show" buttons too."""
        if layer is self.labels_layer:
            (self.outlines_button if layer.contour > 0 else self.filled_button).setChecked(True)

    @staticmethod
    def _select_new_label(layer, instances: bool) -> None:
        """The brush paints a new object (a new id) by default; the foreground for masks."""
        layer.selected_label = int(np.max(layer.data, initial=0)) + 1 if instances else 1

    def _show_probability(self, layer, region: ImageRegion, name: str, probability: np.ndarray) -> None:
        data = self._full_plane(region, probability, np.float32)
        pname = f"{name} probability"
        if pname in self.viewer.layers:
            self.viewer.layers[pname].data = data
        else:
            self.viewer.add_image(data, name=pname, colormap="magma", opacity=0.6, blending="additive",
                                  contrast_limits=(0.0, 1.0), visible=True, **self._placement(layer, region))
            if self.labels_layer is not None:
                self.viewer.layers.selection.active = self.labels_layer

    # ------------------------------------------------------------------ live threshold / min size

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
        layer.data = self._full_plane(self.region, labels, np.uint32)
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
