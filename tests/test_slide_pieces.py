"""Whole slides with several pieces of tissue: each piece is normalised with statistics of
its own (``slide_statistics``) and segmented on its own network grid, so it gets what
``segment()`` gives on that piece alone; pixels between pieces are decided consistently
by every block (stitching still yields one id per nucleus); resume and dask workers load
the pieces' networks from the work folder.

The slide holds scikit-image's IHC sample, the same sample with another stain balance
(more haematoxylin, less DAB: as different as two labs' slides) and a small fragment,
separated by glass, at offsets that are not multiples of the network's stride.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from napari_minenet.inference import Cancelled
from napari_minenet.metrics import aggregated_jaccard_index
from napari_minenet.segmentation import segment
from napari_minenet.slide_blocks import plan_slide
from napari_minenet.slide_engine import SlideOptions, segment_slide
from napari_minenet.slide_samples import TissueLayout, write_slide_tiff
from napari_minenet.slide_statistics import MIN_PIECE_PIXELS, tissue_pieces
from napari_minenet.slides import TissueMask, open_slide
from napari_minenet.zoo import load_model

BLOCK = SlideOptions(block_size=256, halo=128)
MARGIN = 32


def _restained(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(rgb)
    hed[..., 0] *= 1.8  # haematoxylin
    hed[..., 2] *= 0.5  # DAB
    return (np.clip(hed2rgb(hed), 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pieces_slide(tmp_path_factory):
    import skimage.data

    ihc = skimage.data.immunohistochemistry()
    layout = TissueLayout((1100, 1600), [ihc, _restained(ihc), ihc[:100, :100]],
                          [(300, 250, 0), (302, 1050, 1), (900, 100, 2)])
    path = write_slide_tiff(tmp_path_factory.mktemp("pieces") / "pieces.tif", layout, mpp=0.25, min_level_side=256)
    return path, layout


@pytest.fixture(scope="module")
def pieces_result(pieces_slide, tmp_path_factory):
    path, _ = pieces_slide
    out = tmp_path_factory.mktemp("pieces_out")
    result = segment_slide(path, "nuclei", out / "pieces.zarr", options=BLOCK)
    return result, _labels(result)


def _labels(result) -> np.ndarray:
    return np.asarray(zarr.open_array(str(result.labels_url / "0"), mode="r")[...])


def _f1(a: np.ndarray, b: np.ndarray) -> float:
    tp = np.count_nonzero((a > 0) & (b > 0))
    return 2 * tp / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def _agreement(path, layout, labels) -> list[tuple[float, float, float]]:
    from skimage.segmentation import relabel_sequential

    scores = []
    with open_slide(path) as slide:
        for y0, y1, x0, x1 in layout.boxes()[:2]:
            ref = segment(slide.read(y0, y1, x0, x1), "nuclei", precision=BLOCK.precision).labels
            got = labels[y0:y1, x0:x1]
            inner = (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
            scores.append((_f1(ref[inner], got[inner]),
                           aggregated_jaccard_index(relabel_sequential(got[inner])[0],
                                                    relabel_sequential(ref[inner])[0]),
                           _f1(ref, got)))
    return scores


def test_pieces_are_the_large_components_and_glass_goes_to_the_nearest():
    mask = np.zeros((40, 60), bool)
    mask[5:15, 5:20] = True  # piece 1 (150 mask px = 153,600 px at 32x)
    mask[5:15, 40:55] = True  # piece 2
    mask[30:32, 30:32] = True  # a fragment: 4 mask px = 4,096 px < MIN_PIECE_PIXELS
    pieces = tissue_pieces(TissueMask(mask, 32.0))
    assert 4 * 32 ** 2 < MIN_PIECE_PIXELS <= 150 * 32 ** 2
    assert pieces.count == 2
    assert pieces.owner[10, 10] == 1 and pieces.owner[10, 50] == 2
    assert pieces.owner[10, 25] == 1 and pieces.owner[10, 35] == 2  # glass: the nearer piece
    assert pieces.owner[31, 31] == 0  # the fragment shares the slide-wide statistics
    assert pieces.tissue[31, 31] == 0 and pieces.tissue[10, 10] == 1 and pieces.tissue[10, 25] == 0
    full = pieces.owners_in(10 * 32, 10 * 32 + 5, 24 * 32 + 30, 25 * 32 + 2)
    assert full.shape == (5, 4) and (full == 1).all()
    one = mask.copy()
    one[5:15, 20:40] = True  # the two pieces joined: one piece
    joined = tissue_pieces(TissueMask(one, 32.0))
    assert joined.count == 1 and joined.owner[10, 30] == 1 and joined.owner[31, 31] == 0
    fragments = np.zeros((40, 60), bool)
    fragments[30:32, 30:32] = True
    assert tissue_pieces(TissueMask(fragments, 32.0)) is None  # only fragments: slide-wide statistics
    assert tissue_pieces(TissueMask(np.zeros((4, 4), bool), 32.0)) is None


def test_each_piece_is_segmented_as_if_it_were_alone(pieces_slide, pieces_result):
    path, layout = pieces_slide
    result, labels = pieces_result
    scores = _agreement(path, layout, labels)
    print("interior F1, AJI, whole-tile F1 per piece:", np.round(scores, 4).tolist())
    f1, aji, whole = np.asarray(scores).T
    assert f1.min() >= 0.99 and aji.min() >= 0.99  # measured 1.0000 / 1.0000 for both
    assert whole.min() >= 0.94  # (the tile's edge: segment() on it alone sees zero padding)
    assert result.count > 250


def test_one_set_of_statistics_for_the_slide_fits_neither_stain(pieces_slide, pieces_result, tmp_path):
    """The reason for per-piece statistics, and the option that turns them off."""
    path, layout = pieces_slide
    result = segment_slide(path, "nuclei", tmp_path / "slide.zarr",
                           options=SlideOptions(block_size=256, halo=128, statistics="slide"))
    scores = np.asarray(_agreement(path, layout, _labels(result)))
    print("slide-wide statistics: interior F1, AJI, whole-tile F1 per piece:", np.round(scores, 4).tolist())
    assert scores[:, 1].min() < 0.9  # measured AJI 0.28 and 0.58
    with pytest.raises(ValueError, match="statistics"):
        SlideOptions(statistics="tile").check()


def test_nuclei_near_pieces_and_blocks_keep_one_id(pieces_result):
    _, labels = pieces_result
    ids = np.unique(labels)[1:]
    assert ids[0] == 1 and ids[-1] == ids.size
    pieces = [ndi.label(labels[sl] == i)[1] for i, sl in enumerate(ndi.find_objects(labels), start=1) if sl]
    assert max(pieces) == 1


def test_a_cancelled_run_resumes_with_the_pieces_networks(pieces_slide, pieces_result, tmp_path):
    path, _ = pieces_slide
    _, labels = pieces_result
    out, seen = tmp_path / "pieces.zarr", []
    with pytest.raises(Cancelled):
        segment_slide(path, "nuclei", out, options=BLOCK, progress=lambda done, total: seen.append(done),
                      cancel=lambda: len(seen) > 4)
    assert (tmp_path / ".pieces.zarr.work" / "pieces.npz").is_file()
    assert (tmp_path / ".pieces.zarr.work" / "network_2.safetensors").is_file()
    result = segment_slide(path, "nuclei", out, options=BLOCK)
    assert result.blocks_resumed >= 3
    assert np.array_equal(_labels(result), labels)


def test_a_worker_gets_every_pieces_network(pieces_slide, tmp_path):
    """A job pickled for dask.distributed carries the pieces and loads each piece's network
    from the work folder."""
    import torch

    path, _ = pieces_slide
    with open_slide(path) as slide:
        job, _ = plan_slide(slide, load_model("nuclei"), tmp_path / "w.zarr", SlideOptions(block_size=256, halo=128))
        remote = pickle.loads(pickle.dumps(job)).ready()
    assert job.pieces.count == 2 and len(job.networks) == len(remote.networks) == 3
    assert np.array_equal(remote.pieces.owner, job.pieces.owner)
    assert np.array_equal(remote.pieces.origins, job.pieces.origins)
    for mine, theirs in zip(job.networks, remote.networks):
        for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), name
    one, two = job.networks[1].state_dict(), job.networks[2].state_dict()
    assert any(not torch.equal(one[name], two[name]) for name in one)  # two stains, two sets of statistics


def test_cli_statistics_option_reaches_the_engine(pieces_slide, tmp_path):
    from napari_minenet.cli import main

    path, _ = pieces_slide
    assert main(["segment", str(path), "-o", str(tmp_path), "--block-size", "256", "--statistics", "slide"]) == 0
    record = zarr.open_group(str(tmp_path / "pieces.zarr"), mode="r").attrs["minenet"]
    assert record["fingerprint"]["statistics"] == "tissue sample, per slide"
    assert not (tmp_path / ".pieces.zarr.work").exists()  # (the work folder goes when the run is complete)
