"""napari writer (`_writer.write_labels`): Labels layers to TIFF."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_minenet._writer import write_labels


def test_labels_are_written_as_tiff_with_the_smallest_integer_type(tmp_path):
    labels = np.zeros((40, 50), np.int64)
    labels[5:10, 5:10] = 3
    labels[20:30, 20:40] = 65_535
    out = write_labels(str(tmp_path / "cells.tif"), labels, {"name": "nuclei"})
    assert out == [str(tmp_path / "cells.tif")]
    back = tifffile.imread(out[0])
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)

    labels[0, 0] = 70_000  # more ids than uint16 holds
    back = tifffile.imread(write_labels(str(tmp_path / "many.tiff"), labels, {})[0])
    assert back.dtype == np.uint32 and back[0, 0] == 70_000
    np.testing.assert_array_equal(back, labels)


def test_a_path_without_a_tiff_suffix_gets_one_and_no_temporary_file_is_left(tmp_path):
    labels = np.arange(64, dtype=np.uint32).reshape(8, 8)
    out = write_labels(str(tmp_path / "labels.png"), labels, {"name": "x"})
    assert out == [str(tmp_path / "labels.tif")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]
    np.testing.assert_array_equal(tifffile.imread(out[0]), labels)
