"""`napari-minenet demo` with a display: napari, the bundled sample, the widget, one click."""

from __future__ import annotations


def run_gui_demo(sample: str = "ihc") -> int:
    import napari

    from ._widget import MiniNetWidget
    from .samples import SAMPLES, load_sample

    viewer = napari.Viewer(title="napari-minenet demo")
    data = load_sample(sample)
    viewer.add_image(data, name=SAMPLES[sample][1], rgb=data.ndim == 3)
    widget = MiniNetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Mini-Net", area="right")
    panel = widget.segment_panel
    wanted = SAMPLES[sample][2]
    for i in range(panel.model_picker.count()):
        path = panel.model_picker.itemData(i)
        if path and panel.model_picker.itemText(i) and path.endswith(f"{wanted}.safetensors"):
            panel.model_picker.setCurrentIndex(i)
            break
    panel.run()
    napari.run()
    return 0
