"""`napari-minenet demo` with a display: napari, the bundled sample, the widget, one click."""

from __future__ import annotations

import logging

from .zoo import ModelLoadError, resolve_model_path

logger = logging.getLogger(__name__)


def run_gui_demo(sample: str = "ihc") -> int:
    import napari

    from ._widget import MiniNetWidget
    from .samples import SAMPLES, load_sample

    viewer = napari.Viewer(title="napari-minenet demo")
    data = load_sample(sample)
    viewer.add_image(data, name=SAMPLES[sample][1], rgb=data.ndim == 3)
    widget = MiniNetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Mini-Net", area="right")
    try:  # the built-in model made for the sample
        widget.state.use_model(resolve_model_path(SAMPLES[sample][2]))
    except ModelLoadError as exc:
        logger.warning("the demo uses the default model: %s", exc)
    widget.segment_panel.run()
    napari.run()
    return 0
