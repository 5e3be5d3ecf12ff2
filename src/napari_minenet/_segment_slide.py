"""The Segment section's whole-slide actions: segment a slide block by block in a worker,
show its labels lazily, copy the visible part into an editable layer, write corrections back.

``SlideActions`` is a part of :class:`~napari_minenet._segment_panel.SegmentPanel` (a mixin:
it uses the panel's controls and state).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress

from . import _qt_common as common
from ._layer_data import image_region, layer_lead_shape
from ._segment_view import label_colormap
from .auto_size import unresampled_slide_note
from .data import InputError
from .errors import MinenetError
from .inference import Cancelled
from .segmentation import SegmentationResult
from .slide_engine import LABELS_PATH, SlideOptions, segment_slide
from .slides import slide_from_levels

logger = logging.getLogger(__name__)

#: what a worker turns into a notification instead of a traceback: this package's own errors
#: (MinenetError: bad input, unloadable model, cancelled) and the ones torch, numpy and the
#: file system raise for a run that cannot go on
EXPECTED_ERRORS = (MinenetError, RuntimeError, ValueError, MemoryError, OSError)


class SlideActions:
    """Whole-slide methods of the Segment panel."""

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
        scheduler = self.scheduler_edit.text().strip() or None  # None: this computer's threads
        cancel = threading.Event()
        self._cancel_event = cancel
        relay = common.Relay(self)
        relay.progressed.connect(self._on_progress)

        def job():
            try:
                return segment_slide(slide, model, out, options=options, progress=relay.progressed.emit,
                                     cancel=cancel.is_set, csv=out.with_name(f"{stem}_measurements.csv"),
                                     geojson=out.with_name(f"{stem}_{model.card.object_name}.geojson"),
                                     scheduler=scheduler)
            except EXPECTED_ERRORS as exc:
                return common.Failed(exc)

        self._progress_unit = "tissue blocks"
        self._running_layer = layer
        where = f" on the dask scheduler {scheduler}" if scheduler else ""
        self._set_running(True, f"segmenting the whole slide {layer.name} into {out}{where}")
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
        # (napari refuses a multiscale list of one level: a slide of at most 1,024 px)
        data = arrays if len(arrays) > 1 else arrays[0]
        target = self.viewer.add_labels(data, name=name, multiscale=len(arrays) > 1, **placement)
        instances = bool(self.model.card.instances) if self.model is not None else True
        target.colormap = label_colormap(instances)
        self.apply_display(target)  # outlines or filled, as the "Show" buttons say (as for any result)
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
        level0 = self.slide_layer.data[0] if self.slide_layer.multiscale else self.slide_layer.data
        labels = np.asarray(level0[y0 : y0 + h, x0 : x0 + w]).astype(np.uint32)
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
