"""The Mini-Net dock widget: Segment, Correct & learn, Models, top to bottom as in the workflow.

Each section is its own class in its own module; this container only stacks them and
gives them one shared WidgetState (the sections read it and subscribe to its signals, never
each other). No model logic lives in the widget layer: every action calls the
headless core (segmentation, finetuning, zoo) in a napari thread worker.
"""

from __future__ import annotations

import napari
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication, QFrame, QScrollArea, QSizePolicy, QToolButton, QVBoxLayout, QWidget

from ._layer_data import warm_up_labels_layers
from ._learn_panel import LearnPanel
from ._models_panel import ModelsPanel
from ._segment_panel import SegmentPanel
from ._widget_state import WidgetState


class Section(QWidget):
    """A titled section whose body folds away with a click on the title (keeps the dock
    short enough for a 1000 px screen)."""

    def __init__(self, title: str, body: QWidget, expanded: bool = True, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.toggle.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.toggle.setStyleSheet("QToolButton { border: none; font-weight: bold; text-align: left; }")
        self.toggle.setToolTip("Show or hide this section")
        self.frame = QFrame()
        self.frame.setFrameShape(QFrame.StyledPanel)
        inner = QVBoxLayout(self.frame)
        inner.setContentsMargins(6, 4, 6, 6)
        inner.addWidget(body)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.toggle)
        layout.addWidget(self.frame)
        self.toggle.toggled.connect(self.set_expanded)
        self.toggle.setChecked(expanded)
        self.set_expanded(expanded)

    def set_expanded(self, expanded: bool) -> None:
        self.toggle.setChecked(expanded)
        self.toggle.setArrowType(Qt.DownArrow if expanded else Qt.RightArrow)
        self.frame.setVisible(expanded)

    def is_expanded(self) -> bool:
        return self.toggle.isChecked()


class MiniNetWidget(QWidget):
    """Segment an image layer, correct the labels with the brush, fine-tune on the corrections."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        warm_up_labels_layers()  # napari's first-layer cost off the GUI thread, before the first result
        #: what the sections share (image, model, result, region, labels layer), with signals
        self.state = WidgetState(self)
        self.segment_panel = SegmentPanel(napari_viewer, self, state=self.state)

        content = QWidget()
        layout = QVBoxLayout(content)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.setSpacing(6)
        self.learn_panel = LearnPanel(napari_viewer, self.state, self)
        self.models_panel = ModelsPanel(self.state, self)
        # the model list is needed least often: folded until a new version is saved
        self.sections = {
            "segment": Section("1. Segment", self.segment_panel),
            "learn": Section("2. Correct && learn", self.learn_panel),
            "models": Section("3. Models", self.models_panel, expanded=False),
        }
        for section in self.sections.values():
            layout.addWidget(section)
        layout.addStretch(1)
        self.learn_panel.finetuned.connect(
            lambda result: self.sections["models"].set_expanded(True) if getattr(result, "accepted", False) else None)
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
            segment_panel.cancel()
            learn_panel.cancel()

        self.destroyed.connect(stop_work)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(stop_work)
