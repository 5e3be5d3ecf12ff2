"""Models section: every version with its score and parent; use, revert, export."""

from __future__ import annotations

from pathlib import Path

from napari.qt.threading import create_worker
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QPushButton, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

from . import _qt_common as common
from ._widget_state import WidgetState
from .zoo import ModelInfo, list_models


def _score(info: ModelInfo) -> str:
    for split, values in (info.metrics or {}).items():
        if not isinstance(values, dict):
            continue
        for key in ("aji", "f1", "jaccard"):
            if key in values:
                return f"{key.upper()} {values[key]:.3f} ({split})"
    return ""


class ModelsPanel(QWidget):
    def __init__(self, state: WidgetState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state  # read here, written by the Segment section
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Model", "Score", "Parent"])
        self.tree.setRootIsDecorated(False)
        self.tree.setMaximumHeight(96)
        self.use_button = QPushButton("Use")
        self.revert_button = QPushButton("Revert to parent")
        self.export_button = QPushButton("Export ONNX...")
        self.export_worker = None
        row = QHBoxLayout()
        for button in (self.use_button, self.revert_button, self.export_button):
            row.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tree)
        layout.addLayout(row)
        self.use_button.clicked.connect(self.use_selected)
        self.revert_button.clicked.connect(self.revert)
        self.export_button.clicked.connect(self.export_selected)
        self.tree.itemDoubleClicked.connect(lambda *_: self.use_selected())
        state.model_changed.connect(lambda _: self.refresh())
        self.refresh()

    def refresh(self) -> None:
        current = self.state.model_path
        self.tree.clear()
        for info in list_models():
            item = QTreeWidgetItem([info.name, _score(info), info.parent or ""])
            item.setData(0, Qt.UserRole, str(info.path))
            item.setToolTip(0, f"{info.display_name}\n{info.path}\ncreated {info.created}")
            if str(info.path) == current:
                font = item.font(0)
                font.setBold(True)
                item.setFont(0, font)
            self.tree.addTopLevelItem(item)
        self.tree.resizeColumnToContents(0)
        model = self.state.model
        self.revert_button.setEnabled(bool(model and model.card.parent))

    def selected_path(self) -> str | None:
        item = self.tree.currentItem()
        return item.data(0, Qt.UserRole) if item is not None else None

    def use_selected(self) -> None:
        path = self.selected_path()
        if path:
            self.state.use_model(path)

    def revert(self) -> None:
        """Select the parent of the current model (one step back in its history)."""
        model = self.state.model
        if model is None or not model.card.parent:
            common.notify_info("This model has no parent to revert to.")
            return
        for info in list_models():
            if info.name == model.card.parent:
                self.state.use_model(info.path)
                common.notify_info(f"Reverted to {info.name}.")
                return
        common.notify_error(f"The parent model '{model.card.parent}' is no longer installed.")

    def export_selected(self, path: str | None = None) -> None:
        """Export the selected (or current) model to ONNX in a worker."""
        source = self.selected_path() or self.state.model_path
        if not source:
            common.notify_error("Select a model to export.")
            return
        if not path:
            default = str(Path.home() / (Path(source).stem + ".onnx"))
            path, _ = QFileDialog.getSaveFileName(self, "Export to ONNX", default, "ONNX model (*.onnx)")
            if not path:
                return
        from .export import export_onnx

        def job():
            try:
                return export_onnx(source, path)
            except (ImportError, OSError, RuntimeError, ValueError) as exc:
                return common.Failed(exc)

        def done(out) -> None:
            if isinstance(out, common.Failed):
                common.notify_error(f"ONNX export failed: {out}")
            else:
                common.notify_info(f"Exported {Path(source).stem} to {out}")

        self.export_worker = create_worker(job)
        self.export_worker.returned.connect(done)
        self.export_worker.finished.connect(lambda: setattr(self, "export_worker", None))
        self.export_worker.start()
