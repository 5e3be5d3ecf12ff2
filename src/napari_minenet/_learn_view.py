"""How the Correct & learn section looks: ``build_controls(panel)`` creates its controls as
attributes of the panel (``panel.add_button``, ``panel.budget_spin``, ...) and lays them out;
the panel wires them to what they do."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ._loss_plot import LossPlot

__all__ = ["build_controls"]


def build_controls(panel: QWidget) -> None:
    """Create the Correct & learn section's controls on ``panel`` and lay them out."""
    _controls(panel)
    _lay_out(panel)


def _controls(panel: QWidget) -> None:
    panel.hint = QLabel(
        "Brush in missed objects, erase wrong ones; then add the corrected area."
    )
    panel.hint.setWordWrap(True)
    panel.hint.setToolTip("The brush paints a new label by default; the eraser, or the fill tool with "
                         "label 0, removes an object. Each added example is saved to disk at once.")
    panel.edited_label = QLabel("No corrections yet.")
    panel.folder_edit = QLineEdit()
    panel.folder_edit.setPlaceholderText("examples folder (chosen when you add the first example)")
    panel.folder_button = QToolButton()
    panel.folder_button.setText("...")
    panel.scope_combo = QComboBox()
    panel.scope_combo.addItem("Whole image", "image")
    panel.scope_combo.addItem("Visible region", "view")
    panel.scope_combo.addItem("Drawn rectangle", "rectangle")
    panel.scope_combo.setToolTip("What to keep as the example: the whole image, the part on the canvas, "
                                "or a rectangle you draw")
    panel.add_button = QPushButton("Add as training example")
    panel.examples_list = QListWidget()
    panel.examples_list.setMaximumHeight(56)
    panel.count_label = QLabel("0 examples")
    panel.remove_button = QPushButton("Remove")
    panel.budget_spin = QSpinBox()
    panel.budget_spin.setRange(5, 3600)
    panel.budget_spin.setValue(60)
    panel.budget_spin.setSuffix(" s")
    panel.budget_spin.setMinimumWidth(88)
    panel.budget_spin.setMaximumWidth(120)
    panel.resegment_check = QCheckBox("Re-segment")
    panel.resegment_check.setToolTip("Segment the image again with the new version when it is kept")
    panel.resegment_check.setChecked(True)
    panel.finetune_button = QPushButton("Fine-tune")
    panel.finetune_button.setMinimumHeight(32)
    panel.pause_button = QPushButton("Pause")
    panel.pause_button.setCheckable(True)
    panel.pause_button.setEnabled(False)
    panel.cancel_button = QPushButton("Cancel")
    panel.cancel_button.setEnabled(False)
    panel.progress_bar = QProgressBar()
    panel.progress_bar.setFormat("ready")
    panel.progress_bar.setValue(0)
    panel.status_label = QLabel("")
    panel.status_label.setWordWrap(True)
    panel.loss_plot = LossPlot()


def _lay_out(panel: QWidget) -> None:
    layout = QVBoxLayout(panel)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(4)
    layout.addWidget(panel.hint)
    layout.addWidget(panel.edited_label)
    folder_row = QHBoxLayout()
    folder_row.addWidget(panel.folder_edit)
    folder_row.addWidget(panel.folder_button)
    form = QFormLayout()
    form.addRow("Folder", folder_row)
    form.addRow("Add", panel.scope_combo)
    layout.addLayout(form)
    layout.addWidget(panel.add_button)
    list_row = QHBoxLayout()
    list_row.addWidget(panel.count_label)
    list_row.addStretch(1)
    list_row.addWidget(panel.remove_button)
    layout.addWidget(panel.examples_list)
    layout.addLayout(list_row)
    tune_row = QHBoxLayout()
    tune_row.addWidget(QLabel("Time budget"))
    tune_row.addWidget(panel.budget_spin)
    tune_row.addWidget(panel.resegment_check, 1)
    layout.addLayout(tune_row)
    buttons = QHBoxLayout()
    buttons.addWidget(panel.finetune_button, 2)
    buttons.addWidget(panel.pause_button, 1)
    buttons.addWidget(panel.cancel_button, 1)
    layout.addLayout(buttons)
    layout.addWidget(panel.progress_bar)
    layout.addWidget(panel.status_label)
    layout.addWidget(panel.loss_plot)
