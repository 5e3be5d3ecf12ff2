"""The headless core installs and runs without napari or Qt (cluster workers stay light):
the base install's dependencies name neither, and ``segment()`` / ``segment_slide()`` in a
fresh interpreter import no napari, qtpy or Qt binding module."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import requires

GUI_MODULES = ("napari", "npe2", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")

SCRIPT = r"""
import json, sys
import numpy as np
import napari_minenet
import skimage.data

image = skimage.data.immunohistochemistry()[:256, :256]
result = napari_minenet.segment(image, "nuclei")
assert result.labels.shape == (256, 256) and result.labels.max() > 10

from napari_minenet.slide_engine import SlideOptions, segment_slide
from napari_minenet.slide_samples import tissue_layout, write_slide_tiff

out = sys.argv[1]
layout = tissue_layout((512, 512), [image], 0.25, origin=(128, 128))
path = write_slide_tiff(out + "/s.tif", layout, mpp=0.5, min_level_side=128)
slide = segment_slide(path, "nuclei", out + "/s.zarr", options=SlideOptions(block_size=256, halo=128),
                      geojson=out + "/s.geojson")
assert slide.count > 10
import napari_minenet.cli.segment  # the command line too
print(json.dumps(sorted(m for m in sys.modules)))
"""


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def test_segment_and_segment_slide_import_no_napari_or_qt(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    gui = sorted({_top(m) for m in modules if _top(m) in GUI_MODULES})
    assert not gui, f"the headless core imported {gui}"
    assert "napari_minenet.slide_blocks" in modules and "torch" in modules  # it did run the core


def test_the_base_install_requires_no_napari_or_qt():
    """``pip install napari-minenet`` (no extras) brings the core only; napari comes with the
    ``napari`` / ``all`` extras, and the ``testing`` extra (CI) pulls both in."""
    base, extras = [], {}
    for req in requires("napari-minenet"):
        name, _, marker = req.partition(";")
        package = name.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
        if "extra ==" in marker:
            extra = marker.split("extra ==")[1].strip().strip("'\"")
            extras.setdefault(extra, []).append(name.strip().lower())
        else:
            base.append(package)
    assert not [p for p in base if p.startswith(("napari", "npe2", "magicgui", "qtpy", "pyqt", "pyside"))], base
    assert {"torch", "numpy", "zarr", "dask", "tifffile"} <= set(base)
    assert any(r.startswith("napari>=") for r in extras["napari"])
    assert "distributed>=2024.1" in extras["distributed"]
    for extra in ("all", "testing"):  # (hatchling writes the self-reference napari-minenet[napari,...] out)
        assert {"napari>=0.5", "npe2>=0.7", "distributed>=2024.1"} <= set(extras[extra]), extras[extra]
    assert "pyqt6" in extras["testing"] and any(r.startswith("napari[pyqt6]") for r in extras["all"])
