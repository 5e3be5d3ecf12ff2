"""What the dock widget's sections share: one object, passed to each section, with signals.

The Segment section writes it (the image it segmented, the model, the result, the region,
the labels layer, the device); the Correct & learn and Models sections read it and
subscribe to its signals. A section that wants another section to act asks through it
(:meth:`WidgetState.use_model`, :meth:`WidgetState.segment_again`) instead of calling that
section: no section holds another or touches its attributes.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QObject, Signal

__all__ = ["WidgetState"]


class WidgetState(QObject):
    """The current image layer, model, result, region and labels layer of the dock widget."""

    #: the model in use changed (the SegmentationModel, or None when the chosen one failed to load)
    model_changed = Signal(object)
    #: a new segmentation is shown (the Labels layer)
    segmented = Signal(object)
    #: the labels were recomputed from the cached probabilities (the Labels layer)
    relabelled = Signal(object)
    #: a section asks for this model (weights path) to be used
    model_requested = Signal(str)
    #: a section asks for the image to be segmented again (e.g. with a new version of the model)
    segment_requested = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        #: the image layer the current result came from
        self.image_layer: Any = None
        #: the model in use (a SegmentationModel) and the weights path chosen for it
        self.model: Any = None
        self.model_path: str | None = None
        #: the last SegmentationResult / StackResult, and the ImageRegion it covers
        self.result: Any = None
        self.region: Any = None
        #: the editable Labels layer showing the result
        self.labels_layer: Any = None
        #: the device segmentation and fine-tuning run on ("auto", "cpu", "cuda", "mps")
        self.device: str = "auto"

    def use_model(self, path: str | Any) -> None:
        """Ask the Segment section to select the model whose weights are at ``path``."""
        self.model_requested.emit(str(path))

    def segment_again(self) -> None:
        """Ask the Segment section to segment its current image again."""
        self.segment_requested.emit()
