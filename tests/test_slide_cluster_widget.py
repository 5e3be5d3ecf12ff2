"""The dock widget sends a whole slide to a dask scheduler ("Scheduler address") and its
progress bar follows the blocks (Xvfb via pytest-xvfb; a LocalCluster of one worker process)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

pytest.importorskip("napari")
distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.gui


@pytest.fixture
def slide_path(tmp_path):
    import skimage.data

    from napari_minenet.slide_samples import tissue_layout, write_slide_tiff

    layout = tissue_layout((1024, 1024), [skimage.data.immunohistochemistry()], 0.25, origin=(256, 300))
    return write_slide_tiff(tmp_path / "one.tif", layout, mpp=0.5, min_level_side=256)


def test_a_whole_slide_goes_to_the_scheduler_address_with_live_progress(make_napari_viewer, qtbot, slide_path,
                                                                        monkeypatch, notes):
    import zarr

    import napari_minenet._segment_slide as slide_actions
    from napari_minenet._widget import MiniNetWidget
    from napari_minenet.slide_blocks import worker_loads
    from napari_minenet.slide_engine import SlideOptions, segment_slide
    from napari_minenet.zoo import load_model

    # blocks of 256 px, so the 1,024^2 slide has a dozen tissue blocks to count
    monkeypatch.setattr(slide_actions, "SlideOptions", functools.partial(SlideOptions, block_size=256))
    viewer = make_napari_viewer(show=False)
    [image] = viewer.open(str(slide_path), plugin="napari-minenet")
    widget = MiniNetWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Mini-Net")
    panel = widget.segment_panel
    panel.select_model(load_model("nuclei").path)
    assert not panel.scheduler_row.isVisibleTo(panel)  # only for whole slides
    panel.region_combo.setCurrentIndex(panel.region_combo.findData("slide"))
    assert panel.scheduler_row.isVisibleTo(panel)
    values = []
    panel.progress_bar.valueChanged.connect(lambda v: values.append((v, panel.progress_bar.maximum())))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        panel.scheduler_edit.setText(f"  {cluster.scheduler_address} ")
        panel.run()
        assert panel.worker is not None and "dask scheduler" in panel.progress_bar.toolTip()
        qtbot.waitUntil(lambda: panel.worker is None, timeout=300_000)
        assert list(client.run(worker_loads).values()) == [1]  # the blocks ran on the cluster's worker
    assert not notes["error"], notes["error"]
    result = panel.slide_result
    assert result is not None and result.blocks_computed == result.blocks_tissue >= 10
    counts = [v for v, total in values if total == result.blocks_tissue]
    assert len(set(counts)) >= 5 and max(counts) == result.blocks_tissue  # it counted up block by block
    assert panel.progress_bar.text() == "done" and panel.slide_layer.data.shape == (1024, 1024)  # one level
    here = segment_slide(slide_path, "nuclei", slide_path.parent / "threads.zarr",
                         options=SlideOptions(block_size=256, threshold=panel.threshold_slider.value() / 100,
                                              min_size=panel.min_size_spin.value(),
                                              instances=panel.instances_check.isChecked()))
    level0 = np.asarray(zarr.open_array(str(result.labels_url / "0"), mode="r")[...])
    assert np.array_equal(level0, np.asarray(zarr.open_array(str(here.labels_url / "0"), mode="r")[...]))
