"""The "Pixel size (um)" control of the Segment section: auto, or a number the user types.

*auto* uses the image layer's pixel size when it has one (``layer.scale`` in um, or the
pixel size the reader found in the file) and otherwise lets the core estimate the size
from the objects. Only Qt here; reading and using the pixel size is core code
(:mod:`napari_minenet.pixel_size`, ``segment(pixel_size=...)``).
"""

from __future__ import annotations

from qtpy.QtWidgets import QDoubleSpinBox

from .pixel_size import PIXEL_SIZE_RANGE, layer_pixel_size


class PixelSizeControl(QDoubleSpinBox):
    """0 shows as "auto (...)"; any other value is the image's pixel size in um."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setRange(0.0, PIXEL_SIZE_RANGE[1])
        self.setDecimals(4)
        self.setSingleStep(0.05)
        self.setValue(0.0)
        self.setMinimumWidth(self.fontMetrics().horizontalAdvance("auto: 0.2525 um (image)") + 40)
        self.layer_size: float | None = None
        self.set_layer(None)

    def set_layer(self, layer) -> None:
        """Show what *auto* means for this image layer."""
        self.layer_size = layer_pixel_size(layer) if layer is not None else None
        if self.layer_size:
            self.setSpecialValueText(f"auto: {self.layer_size:.4g} um (image)")
        else:
            self.setSpecialValueText("auto (estimate)")
        self.lineEdit().setCursorPosition(0)  # show the start of the new text, not the old scroll
        self.setToolTip(
            "Micrometres per pixel of the image. The image is resampled to the model's pixel size (nuclei: 0.25 um, "
            "40x) and the results mapped back; measurements get um and um^2. auto: the image's own pixel size when "
            "it has one, else the size of the objects is estimated from a first pass and the image rescaled when "
            "they are clearly too small or too large.")

    def pixel_size(self) -> float | str:
        """What ``segment(pixel_size=...)`` gets: the typed value, the layer's, or "auto"."""
        value = float(self.value())
        if value >= PIXEL_SIZE_RANGE[0]:
            return value
        return self.layer_size or "auto"

    def known_pixel_size(self) -> float | None:
        size = self.pixel_size()
        return size if isinstance(size, float) else None
