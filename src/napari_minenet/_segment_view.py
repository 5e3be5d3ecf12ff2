"""How the Segment section looks: its controls, their layout, and the label colours.

``build_controls(panel)`` creates the controls as attributes of the panel (``panel.run_button``,
``panel.threshold_slider``, ...) and lays them out; the panel wires them to what they do.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import _qt_common as common
from ._pixel_size_control import PixelSizeControl
from .inference import device_report

__all__ = ["BRIGHT_COLOURS", "OUTLINE_WIDTH", "OUTLINE_OPACITY", "FILLED_OPACITY", "label_colormap",
           "build_controls"]

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


def build_controls(panel: QWidget) -> None:
    """Create the Segment section's controls on ``panel`` and lay them out."""
    _inputs(panel)
    _run_and_results(panel)
    _lay_out(panel)


def _inputs(panel: QWidget) -> None:
    # --- inputs
    panel.image_combo = QComboBox()
    panel.image_combo.setToolTip("Image layer to segment (follows the selected layer)")
    panel.model_picker = common.ModelPicker()
    panel.model_picker.setToolTip("Built-in models, your fine-tuned versions, or a model file")
    panel.device_combo = QComboBox()
    found = device_report()
    panel.device_combo.addItem(f"Auto ({found.get('cuda', found.get('mps', found['cpu']))})", "auto")
    panel.device_combo.addItem(found["cpu"], "cpu")
    if "cuda" in found:
        panel.device_combo.addItem(found["cuda"], "cuda")
    if "mps" in found:
        panel.device_combo.addItem(found["mps"], "mps")
    panel.slices_combo = QComboBox()
    panel.slices_combo.addItem("Current slice", False)
    panel.slices_combo.addItem("All slices", True)
    panel.region_combo = QComboBox()
    panel.region_combo.addItem("Whole image", False)
    panel.region_combo.addItem("Visible region", True)
    panel.region_combo.addItem("Whole slide (blocks, to disk)", "slide")
    panel.region_combo.setToolTip("The whole full-resolution image (in tiles); for very large images, only what "
                                 "is on the canvas; or a whole slide block by block, glass skipped, the labels "
                                 "written to an OME-Zarr beside the image and shown lazily")
    panel.scheduler_edit = QLineEdit()  # whole slides only: shown while "Whole slide" is chosen
    panel.scheduler_edit.setPlaceholderText("this computer (threads)")
    panel.scheduler_edit.setToolTip("Whole slides: the address of a dask scheduler (tcp://host:8786) to compute "
                                    "the blocks on a cluster whose workers see the slide's folder; empty: this "
                                    "computer")
    panel.pixel_size_spin = PixelSizeControl()
    panel.instances_check = QCheckBox("One label per object")
    panel.probability_check = QCheckBox("Probability map")
    panel.probability_check.setToolTip("Also show the probability map as an image layer")


def _run_and_results(panel: QWidget) -> None:
    # --- run
    panel.run_button = QPushButton("Segment")
    panel.run_button.setMinimumHeight(36)
    font = panel.run_button.font()
    font.setBold(True)
    font.setPointSize(font.pointSize() + 1)
    panel.run_button.setFont(font)
    panel.cancel_button = QPushButton("Cancel")
    panel.cancel_button.setEnabled(False)
    panel.progress_bar = QProgressBar()
    panel.progress_bar.setTextVisible(True)
    panel.progress_bar.setFormat("ready")
    panel.progress_bar.setValue(0)

    # --- live post-processing
    panel.threshold_slider = QSlider(Qt.Horizontal)
    panel.threshold_slider.setRange(1, 99)
    panel.threshold_slider.setValue(50)
    panel.threshold_label = QLabel("0.50")
    panel.threshold_label.setMinimumWidth(32)
    panel.min_size_spin = QSpinBox()
    panel.min_size_spin.setRange(0, 100_000)
    panel.min_size_spin.setSuffix(" px")
    panel.min_size_spin.setToolTip("Objects smaller than this are removed")
    panel.summary_label = QLabel("")
    panel.summary_label.setWordWrap(True)
    panel.summary_label.setVisible(False)  # until there is a result: the dock stays short
    panel.export_button = QPushButton("Export measurements...")
    panel.export_button.setEnabled(False)
    panel.edit_region_button = QPushButton("Correct visible region")
    panel.edit_region_button.setToolTip("Whole slides: copy the slide's labels on the canvas into an editable "
                                       "layer (brush, eraser, 'Add as training example'); 'Save corrections "
                                       "to slide' writes them back")
    panel.edit_region_button.setEnabled(False)
    panel.save_region_button = QPushButton("Save corrections to slide")
    panel.save_region_button.setEnabled(False)

    # --- display: outlines (readable on tissue, default for objects) or filled
    panel.outlines_button = QRadioButton("outlines")
    panel.filled_button = QRadioButton("filled")
    panel.display_group = QButtonGroup(panel)
    panel.display_group.setExclusive(True)
    for button in (panel.outlines_button, panel.filled_button):
        panel.display_group.addButton(button)
    panel.outlines_button.setChecked(True)
    panel.outlines_button.setToolTip(f"Draw each object's outline ({OUTLINE_WIDTH} px, bright colours)")
    panel.filled_button.setToolTip("Fill each object with a semi-transparent colour")


def _lay_out(panel: QWidget) -> None:
    for combo in (panel.image_combo, panel.model_picker, panel.device_combo, panel.slices_combo, panel.region_combo):
        # long layer or model names must not widen the dock past the screen
        combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(8)
    form = QFormLayout()
    form.addRow("Image", panel.image_combo)
    form.addRow("Model", panel.model_picker)
    form.addRow("Device", panel.device_combo)
    form.addRow("Pixel size (um)", panel.pixel_size_spin)
    where_row = QHBoxLayout()  # stack: which slices; large images: whole or visible region
    where_row.addWidget(panel.slices_combo)
    where_row.addWidget(panel.region_combo)
    panel.scheduler_row = QWidget()
    scheduler_form = QFormLayout(panel.scheduler_row)
    scheduler_form.setContentsMargins(0, 0, 0, 0)
    scheduler_form.addRow("Scheduler address", panel.scheduler_edit)
    panel.scheduler_row.setVisible(False)
    panel.region_combo.currentIndexChanged.connect(
        lambda _: panel.scheduler_row.setVisible(panel.region_combo.currentData() == "slide"))
    checks_row = QHBoxLayout()
    checks_row.addWidget(panel.instances_check)
    checks_row.addWidget(panel.probability_check)
    checks_row.addStretch(1)
    run_row = QHBoxLayout()
    run_row.addWidget(panel.run_button, 3)
    run_row.addWidget(panel.cancel_button, 1)
    thr_row = QHBoxLayout()
    thr_row.addWidget(panel.threshold_slider)
    thr_row.addWidget(panel.threshold_label)
    show_row = QHBoxLayout()
    show_row.addWidget(panel.outlines_button)
    show_row.addWidget(panel.filled_button)
    show_row.addStretch(1)
    post = QFormLayout()
    post.addRow("Threshold", thr_row)
    post.addRow("Minimum size", panel.min_size_spin)
    post.addRow("Show", show_row)
    panel.slices_combo.setToolTip("Stacks and time series: the slice on the canvas, or every slice")
    layout = QVBoxLayout(panel)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(4)
    layout.addLayout(form)
    layout.addLayout(where_row)
    layout.addWidget(panel.scheduler_row)
    layout.addLayout(checks_row)
    layout.addLayout(run_row)
    layout.addWidget(panel.progress_bar)
    layout.addLayout(post)
    layout.addWidget(panel.summary_label)
    layout.addWidget(panel.export_button)
    panel.slide_row = QWidget()  # shown once a whole slide is segmented (the dock stays short)
    slide_row = QHBoxLayout(panel.slide_row)
    slide_row.setContentsMargins(0, 0, 0, 0)
    slide_row.addWidget(panel.edit_region_button)
    slide_row.addWidget(panel.save_region_button)
    panel.slide_row.setVisible(False)
    layout.addWidget(panel.slide_row)
