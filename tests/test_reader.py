"""The slide reader (npe2) and whole slides in the dock widget (Xvfb via pytest-xvfb)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tifffile

from napari_minenet._reader import get_reader
from napari_minenet.slide_samples import tissue_layout, write_slide_tiff, write_svs


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    import skimage.data

    layout = tissue_layout((1600, 1600), [skimage.data.immunohistochemistry()], 0.4, origin=(300, 300))
    return write_slide_tiff(tmp_path_factory.mktemp("reader") / "tissue.tif", layout, mpp=0.25, min_level_side=256)


@pytest.fixture(scope="module")
def svs_path(tmp_path_factory):
    import skimage.data

    layout = tissue_layout((2048, 2048), [skimage.data.immunohistochemistry()], 0.3)
    return write_svs(tmp_path_factory.mktemp("svs") / "aperio.svs", layout, mpp=0.2525, min_level_side=128)


@pytest.fixture(autouse=True)
def user_home(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("NAPARI_MINENET_HOME", str(tmp_path / "home"))
    torch.set_num_threads(1)
    return tmp_path / "home"


def test_reader_claims_pyramids_and_leaves_small_tiffs_to_napari(slide_path, tmp_path):
    reader = get_reader(str(slide_path))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(slide_path))
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"] and kwargs["scale"] == (0.25, 0.25)
    assert kwargs["metadata"]["mpp"] == pytest.approx(0.25)
    assert data[0].shape == (1600, 1600, 3) and not isinstance(data[0], np.ndarray)  # lazy
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.zeros((32, 32), np.uint8))
    assert get_reader(str(small)) is None and get_reader(str(tmp_path / "x.png")) is None


def test_a_large_image_without_pyramid_gets_lazy_reductions(tmp_path, monkeypatch):
    import napari_minenet._reader as reader

    monkeypatch.setattr(reader, "SLIDE_MIN_PIXELS", 1_000_000)
    monkeypatch.setattr("napari_minenet.slides.SLIDE_MIN_PIXELS", 1_000_000)
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, np.full((2100, 2000, 3), 200, np.uint8), tile=(256, 256))
    [(data, kwargs, _)] = get_reader(str(path))(str(path))
    assert kwargs["multiscale"] and [d.shape[:2] for d in data] == [(2100, 2000), (1050, 1000)]


def test_reader_opens_an_aperio_svs_as_a_pyramid_with_its_pixel_size(svs_path):
    [(data, kwargs, kind)] = get_reader(str(svs_path))(str(svs_path))
    assert kind == "image" and kwargs["multiscale"] and kwargs["metadata"]["format"] == "svs"
    assert [d.shape[:2] for d in data] == [(2048, 2048), (512, 512), (128, 128)]
    assert kwargs["scale"] == (0.2525, 0.2525)


def test_reader_opens_an_ome_tiff_pyramid_and_an_ome_zarr_image(tmp_path):
    import zarr

    from napari_minenet.slides import open_slide

    img = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    path = tmp_path / "x.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(img, subifds=1, tile=(256, 256), photometric="rgb",
                 metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeXUnit": "µm"})
        tw.write(img[::2, ::2], subfiletype=1, tile=(256, 256), photometric="rgb")
    [(data, kwargs, _)] = get_reader(str(path))(str(path))
    assert kwargs["multiscale"] and kwargs["scale"] == (0.5, 0.5) and kwargs["metadata"]["format"] == "ome-tiff"
    # OME-Zarr image (c, y, x) with a micrometre scale
    root = zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=2)
    for level, step in ((0, 1), (1, 2)):
        root.create_array(str(level), data=np.moveaxis(img[::step, ::step], -1, 0), chunks=(3, 128, 128))
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}], "datasets": [
        {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [1, 0.3 * 2 ** k, 0.3 * 2 ** k]}]}
        for k in (0, 1)]}]
    with open_slide(tmp_path / "img.zarr") as slide:
        assert slide.shape == (512, 512) and slide.rgb and slide.mpp == pytest.approx(0.3)
        assert np.array_equal(slide.read(10, 20, 30, 50), img[10:20, 30:50])
    [(data, kwargs, kind)] = get_reader(str(tmp_path / "img.zarr"))(str(tmp_path / "img.zarr"))
    assert kind == "image" and kwargs["multiscale"] and data[1].shape == (256, 256, 3)


def test_reader_opens_the_engine_output_as_multiscale_labels(slide_path, tmp_path):
    from napari_minenet.slide_engine import SlideOptions, segment_slide

    result = segment_slide(slide_path, "nuclei", tmp_path / "tissue.zarr", options=SlideOptions(block_size=1024))
    [(data, kwargs, kind)] = get_reader(str(result.zarr_path))(str(result.zarr_path))
    assert kind == "labels" and kwargs["multiscale"] and len(data) >= 2
    assert kwargs["scale"] == (0.25, 0.25) and data[0].shape == (1600, 1600) and int(data[0][...].max()) == result.count


@pytest.mark.gui
def test_napari_opens_a_slide_as_a_multiscale_layer(make_napari_viewer, slide_path, svs_path):
    viewer = make_napari_viewer(show=False)
    [layer] = viewer.open(str(slide_path), plugin="napari-minenet")
    assert layer.multiscale and layer.rgb and tuple(layer.scale) == (0.25, 0.25)
    assert layer.data[0].shape == (1600, 1600, 3)
    # napari's own reader also claims *.svs (and would load it whole): the README says how to
    # make this one the default for slide extensions (Preferences > Plugins, or the setting below)
    from napari.settings import get_settings

    settings = get_settings().plugins
    saved = dict(settings.extension2reader)
    try:
        settings.extension2reader = {**saved, "*.svs": "napari-minenet"}
        [svs] = viewer.open(str(svs_path), plugin=None)  # what File > Open does
    finally:
        settings.extension2reader = saved
    assert svs.multiscale and svs.rgb and svs.data[0].shape == (2048, 2048, 3)


@pytest.mark.gui
def test_whole_slide_in_the_widget_runs_in_the_background(make_napari_viewer, qtbot, slide_path, tmp_path):
    """The widget runs the slide engine in a worker while the event loop keeps turning; the
    result is a lazy multiscale Labels layer on the zarr; a visible region can be corrected,
    added as a training example (a crop) and saved back into the slide's labels."""
    from qtpy.QtCore import QTimer

    from napari_minenet._widget import MiniNetWidget
    from napari_minenet.zoo import load_model

    viewer = make_napari_viewer(show=True)
    [image] = viewer.open(str(slide_path), plugin="napari-minenet")
    widget = MiniNetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Mini-Net")
    panel = widget.segment_panel
    panel.select_model(load_model("nuclei").path)
    panel.region_combo.setCurrentIndex(panel.region_combo.findData("slide"))
    ticks = []
    timer = QTimer()
    # the event loop's heartbeat while the engine runs (the layer is added after it, once)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()) if panel.worker is not None else None)
    timer.start(20)
    panel.run()
    assert panel.worker is not None
    qtbot.waitUntil(lambda: panel.worker is None, timeout=300_000)
    timer.stop()
    gaps = np.diff(ticks)
    print(f"event loop while segmenting: {len(ticks)} ticks, longest gap {gaps.max() * 1000:.0f} ms, "
          f"median {np.median(gaps) * 1000:.0f} ms")
    assert len(ticks) > 10 and gaps.max() < 1.0 and np.median(gaps) < 0.1  # the viewer stayed responsive

    result = panel.slide_result
    assert result is not None and result.count > 100
    labels = panel.slide_layer
    assert labels.multiscale and not isinstance(labels.data[0], np.ndarray)  # lazy, on the zarr
    assert tuple(labels.scale) == (0.25, 0.25)
    assert result.zarr_path.parent == slide_path.parent / "tissue.minenet"  # beside the slide
    assert panel.outlines_button.isChecked() and labels.contour > 0  # outlines, as "Show" says
    panel.filled_button.click()
    assert labels.contour == 0  # the Show buttons reach the slide's labels too
    panel.outlines_button.click()
    assert labels.contour > 0

    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (0, 150.0, 150.0)  # world units are um: the first tissue tile
    camera.zoom = 4.0
    qtbot.wait(50)
    panel.correct_visible_region()
    crop = panel.labels_layer
    assert crop is not None and not crop.multiscale and crop.editable
    y0, x0 = panel.region.offset
    h, w = crop.data.shape
    assert h * w < 1600 * 1600 and np.array_equal(crop.data, np.asarray(labels.data[0][y0 : y0 + h, x0 : x0 + w]))
    crop.data[5:15, 5:15] = 9999  # a brush correction
    crop.refresh()
    learn = widget.learn_panel
    learn.open_store(tmp_path / "examples")
    learn.add_example()
    [record] = learn.store.records
    assert tuple(record.shape[:2]) == (h, w)
    panel.save_corrections_to_slide()
    import zarr

    saved = zarr.open_array(str(result.zarr_path / "labels/nuclei/0"), mode="r")
    assert int(saved[y0 + 10, x0 + 10]) == 9999
    level1 = zarr.open_array(str(result.zarr_path / "labels/nuclei/1"), mode="r")
    assert int(level1[(y0 + 11) // 2, (x0 + 11) // 2]) == 9999  # the pyramid follows


def test_a_small_tiff_with_a_pixel_size_opens_with_it_as_its_scale(tmp_path):
    rgb = tmp_path / "calibrated.ome.tif"
    tifffile.imwrite(rgb, np.full((40, 50, 3), 90, np.uint8), ome=True, photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm"})
    [(data, kwargs, kind)] = get_reader(str(rgb))(str(rgb))
    assert kind == "image" and data.shape == (40, 50, 3) and kwargs["rgb"]
    assert kwargs["scale"] == (0.5, 0.5) and kwargs["units"] == ("um", "um") and kwargs["metadata"]["mpp"] == 0.5
    assert kwargs["name"] == "calibrated"
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((3, 30, 30), np.uint8), imagej=True, resolution=(4.0, 4.0),
                     metadata={"unit": "um", "axes": "ZYX"})
    [(data, kwargs, _)] = get_reader(str(stack))(str(stack))
    assert data.shape == (3, 30, 30) and kwargs["scale"] == (1.0, 0.25, 0.25)
    assert kwargs["units"] == ("pixel", "um", "um")


def test_the_reader_s_scale_reaches_the_widget_s_pixel_size(tmp_path, make_napari_viewer):
    from napari_minenet._pixel_size_control import PixelSizeControl
    from napari_minenet.pixel_size import layer_pixel_size

    path = tmp_path / "calibrated.tif"
    tifffile.imwrite(path, np.full((40, 50, 3), 90, np.uint8), photometric="rgb", resolution=(40_000, 40_000),
                     resolutionunit="CENTIMETER")
    viewer = make_napari_viewer(show=False)
    [(data, kwargs, _)] = get_reader(str(path))(str(path))
    layer = viewer.add_image(data, **kwargs)
    assert layer_pixel_size(layer) == pytest.approx(0.25)  # from napari's own scale and units
    control = PixelSizeControl()
    control.set_layer(layer)
    assert control.pixel_size() == pytest.approx(0.25) and control.specialValueText() == "auto: 0.25 um (image)"
    [builtin] = viewer.open(str(path), plugin="napari")  # napari's own reader: scale 1 px
    assert tuple(builtin.scale) == (1.0, 1.0)
    control.set_layer(builtin)
    assert control.pixel_size() == pytest.approx(0.25)  # read from the file the layer came from
