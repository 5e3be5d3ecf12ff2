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
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(args.out, canvas_only=False, flash=False)
    print(f"wrote {args.out}: {panel.summary_label.text()}")
    viewer.close()


if __name__ == "__main__":
    main()
