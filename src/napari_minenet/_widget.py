"""The Mini-Net dock widget: Segment, Correct & learn, Models, top to bottom as in the workflow.

Each section is its own class in its own module; this container only stacks them and
connects their signals. No model logic lives in the widget layer: every action calls the
headless core (segmentation, finetuning, zoo) in a napari thread worker.
"""

from __future__ import annotations

import napari
from qtpy.QtWidgets import QApplication, QGroupBox, QScrollArea, QVBoxLayout, QWidget

from ._learn_panel import LearnPanel
from ._models_panel import ModelsPanel
from ._segment_panel import SegmentPanel


def _section(title: str, body: QWidget) -> QGroupBox:
    box = QGroupBox(title)
    layout = QVBoxLayout(box)
    layout.addWidget(body)
    return box


class MiniNetWidget(QWidget):
    """Segment an image layer, correct the labels with the brush, fine-tune on the corrections."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.segment_panel = SegmentPanel(napari_viewer, self)

        content = QWidget()
        layout = QVBoxLayout(content)
        self.learn_panel = LearnPanel(napari_viewer, self.segment_panel, self)
        self.models_panel = ModelsPanel(self.segment_panel, self)
        layout.addWidget(_section("1. Segment", self.segment_panel))
        layout.addWidget(_section("2. Correct && learn", self.learn_panel))
        layout.addWidget(_section("3. Models", self.models_panel))
        layout.addStretch(1)
        self.scroll_area = QScrollArea()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll_area)
        self.setMinimumWidth(340)

        # closing the viewer (or quitting) stops running work at the next tile / step;
        # nothing is saved half-way, so no file can be left damaged
        segment_panel, learn_panel = self.segment_panel, self.learn_panel

        def stop_work(*_) -> None:
            segment_panel._cancel_event.set()
            learn_panel._cancel_event.set()
            learn_panel._pause_event.clear()

        self.destroyed.connect(stop_work)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(stop_work)
