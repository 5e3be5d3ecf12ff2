"""Regenerate the README screenshots in a real napari window.

Run under a display, e.g. ``xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py``.
Writes docs/images/segment.png (and finetune.png when --finetune is given).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_minenet._widget import MiniNetWidget
from napari_minenet.samples import SAMPLES, load_sample

DOCS = Path(__file__).resolve().parents[1] / "docs" / "images"


def wait_for(predicate, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while not predicate():
        QApplication.processEvents()
        time.sleep(0.02)
        if time.time() > end:
            raise TimeoutError("the widget did not finish in time")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sample", default="ihc")
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--out", default=str(DOCS / "segment.png"))
    parser.add_argument("--zoom", type=float, default=1.5,
                        help="zoom in this much after fitting the image (1.5: nuclei as a pathologist views them)")
    parser.add_argument("--finetune", help="also correct, add an example, fine-tune, and save this screenshot")
    parser.add_argument("--finetune-seconds", type=int, default=30)
    parser.add_argument("--examples", default="/tmp/minenet-screenshot-examples")
    args = parser.parse_args()

    viewer = napari.Viewer(title="napari-minenet")
    viewer.window._qt_window.resize(1500, 950)
    data = load_sample(args.sample)
    viewer.add_image(data, name=SAMPLES[args.sample][1].split(" (")[0].lower(), rgb=data.ndim == 3)
    widget = MiniNetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Mini-Net", area="right")
    panel = widget.segment_panel
    for i in range(panel.model_picker.count()):
        path = panel.model_picker.itemData(i)
        if path and Path(path).stem == args.model:
            panel.model_picker.setCurrentIndex(i)
    panel.run()
    wait_for(lambda: panel.worker is None and panel.labels_layer is not None)
    QApplication.processEvents()
    viewer.reset_view()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.zoom *= args.zoom
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(args.out, canvas_only=False, flash=False)
    print(f"wrote {args.out}: {panel.summary_label.text()}")
    if args.finetune:
        finetune_screenshot(viewer, widget, args)
    viewer.close()


def finetune_screenshot(viewer, widget, args) -> None:
    """A user's session: erase the two smallest objects (false ones), paint two missed
    nuclei (dark unlabelled spots), add the image as an example, fine-tune."""
    import shutil

    import numpy as np
    from scipy import ndimage as ndi

    panel, learn = widget.segment_panel, widget.learn_panel
    layer = panel.labels_layer
    data = layer.data
    ids, counts = np.unique(data[data > 0], return_counts=True)
    for ident in ids[np.argsort(counts)[:2]]:  # erase two objects
        layer.fill(tuple(int(v) for v in np.argwhere(layer.data == ident)[0]), 0)
    image = np.asarray(panel.source_layer.data, dtype=float)
    grey = ndi.uniform_filter(image.mean(axis=-1) if image.ndim == 3 else image, 9)
    room = ndi.distance_transform_edt(layer.data == 0)
    layer.brush_size = 10
    for _ in range(2):  # paint two missed ones, each with a new label
        candidates = np.where(room > 12, grey, np.inf)
        y, x = np.unravel_index(np.argmin(candidates), candidates.shape)
        layer.selected_label = int(layer.data.max()) + 1
        layer.paint((int(y), int(x)), layer.selected_label)
        room[max(0, y - 40): y + 40, max(0, x - 40): x + 40] = 0
    layer.mode = "paint"
    shutil.rmtree(args.examples, ignore_errors=True)
    learn.open_store(args.examples)
    learn.add_example()
    learn.resegment_check.setChecked(False)
    learn.budget_spin.setValue(args.finetune_seconds)
    learn.start_finetune()
    wait_for(lambda: learn.worker is None, timeout=args.finetune_seconds + 120)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    widget.scroll_area.ensureWidgetVisible(learn.loss_plot)
    QApplication.processEvents()
    viewer.screenshot(args.finetune, canvas_only=False, flash=False)
    print(f"wrote {args.finetune}: {learn.status_label.text()}")


if __name__ == "__main__":
    main()
