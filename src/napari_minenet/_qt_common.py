"""Small Qt pieces shared by the widget's panels: notifications, progress relay, pickers."""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QMessageBox, QWidget

from .zoo import ModelInfo, list_models

__all__ = ["Failed", "Relay", "notify_error", "notify_info", "notify_warning", "ModelPicker", "confirm", "LOAD_FROM_FILE"]

LOAD_FROM_FILE = "Load from file..."


class Failed:
    """What a worker returns instead of raising an expected error (superqt re-raises a
    returned exception, so it travels wrapped)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __str__(self) -> str:
        return str(self.error)


class Relay(QObject):
    """Carries progress from a worker thread to the GUI thread (queued signal)."""

    progressed = Signal(int, int)


def notify_error(message: str) -> None:
    show_error(message)


def notify_warning(message: str) -> None:
    show_warning(message)


def notify_info(message: str) -> None:
    show_info(message)


def confirm(parent: QWidget, title: str, question: str) -> bool:
    """Ask a yes/no question in a dialog; True for Yes."""
    answer = QMessageBox.question(parent, title, question, QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
    return answer == QMessageBox.Yes


def describe(info: ModelInfo) -> str:
    """Text shown in the model picker."""
    if info.source == "builtin":
        return info.display_name
    score = ""
    for values in (info.metrics or {}).values():
        if isinstance(values, dict) and "f1" in values:
            score = f", F1 {values['f1']:.2f}"
            break
    return f"{info.display_name}: {info.name}{score}"


class ModelPicker(QComboBox):
    """Built-in models by display name, then user models, then "Load from file...".

    Each item's data is the model's weights path (a string), so user models with the same
    display name stay distinct.
    """

    model_selected = Signal(str)  # weights path

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._extra: list[Path] = []
        self._last_index = 0
        self.refresh()
        self.activated.connect(self._on_activated)
        self.currentIndexChanged.connect(self._on_changed)

    def refresh(self, select: str | Path | None = None) -> None:
        current = str(select) if select is not None else self.current_path()
        self.blockSignals(True)
        self.clear()
        seen = set()
        for info in list_models():
            self.addItem(describe(info), str(info.path))
            seen.add(str(info.path))
        for path in self._extra:
            if str(path) not in seen:
                self.addItem(f"File: {path.name}", str(path))
        self.addItem(LOAD_FROM_FILE, None)
        index = self.findData(current) if current else -1
        self.setCurrentIndex(index if index >= 0 else 0)
        self._last_index = self.currentIndex()
        self.blockSignals(False)
        if select is not None or index < 0:
            self._on_changed(self.currentIndex())

    def current_path(self) -> str | None:
        data = self.currentData()
        return str(data) if data else None

    def add_file(self, path: str | Path) -> None:
        path = Path(path)
        if path not in self._extra:
            self._extra.append(path)
        self.refresh(select=path.with_suffix(".safetensors") if path.suffix != ".safetensors" else path)

    def _on_activated(self, index: int) -> None:
        if self.itemText(index) == LOAD_FROM_FILE:
            filename, _ = QFileDialog.getOpenFileName(self, "Load a Mini-Net model", "", "Mini-Net weights (*.safetensors)")
            if filename:
                self.add_file(filename)
            else:
                self.setCurrentIndex(self._last_index)

    def _on_changed(self, index: int) -> None:
        data = self.itemData(index)
        if data:
            self._last_index = index
            self.model_selected.emit(str(data))


def debounce(parent: QObject, milliseconds: int, slot) -> QTimer:
    """A single-shot timer: call ``.start()`` on every change, ``slot`` runs once they stop."""
    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(milliseconds)
    timer.timeout.connect(slot)
    return timer
