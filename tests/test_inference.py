"""Tiled inference, progress / cancel, dtypes, bad input, and ``segment`` / ``segment_stack``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_minenet.data import GreyImageWarning, InputError
from napari_minenet.inference import (
    GRID,
    Cancelled,
    adapt_batchnorm,
    blend_weights,
    predict,
    predict_tiled,
    select_device,
    tile_ranges,
    tile_starts,
)
from napari_minenet.segmentation import segment, segment_stack
from napari_minenet.zoo import SegmentationModel

# The network's receptive field reaches 40 px on each side and the blend weights are 0
# within overlap // 4 px of an inner tile edge; the overlap is capped at tile_size // 2.
# So tiled == untiled needs overlap >= 160, i.e. tiles of >= 320 px (measured: max
# difference ~1e-6 with 320/160, ~1e-4 with 256/128, ~3e-2 with 128/64).
EXACT_TILE, EXACT_OVERLAP = 320, 160


# --------------------------------------------------------------------------- tile geometry


GEOMETRIES = [
    (300, 128, 64),
    (300, 128, 96),
    (1000, 256, 128),
    (257, 256, 32),
    (513, 256, 0),
    (130, 128, 127),
    (999, 100, 10),
    (64, 128, 32),
    (128, 128, 64),
]


@pytest.mark.parametrize("length,tile,overlap", GEOMETRIES)
def test_tile_ranges_cover_the_axis_on_the_network_grid(length, tile, overlap):
    ranges = tile_ranges(length, tile, overlap)
    starts = [a for a, _ in ranges]
    assert starts == sorted(set(starts)) == tile_starts(length, tile, overlap)
    assert ranges[0][0] == 0 and ranges[-1][1] == length
    if length <= tile:
        assert ranges == [(0, length)]
        return
    # every start is on the network's 4-pixel grid; tiles share one size <= `tile`, the last
    # may be up to 3 px longer; no more tiles than needed
    assert all(a % GRID == 0 for a in starts)
    sizes = {b - a for a, b in ranges[:-1]}
    assert len(sizes) <= 1 and all(size <= tile for size in sizes)
    assert ranges[-1][1] - ranges[-1][0] < tile + GRID
    assert len(ranges) <= max(2, int(np.ceil((length - overlap) / (tile - overlap)))) + 1
    # consecutive tiles overlap by at least the requested overlap, so nothing is left out
    assert all(ranges[i][1] - ranges[i + 1][0] >= overlap for i in range(len(ranges) - 1))
    covered = np.zeros(length, bool)
    for a, b in ranges:
        covered[a:b] = True
    assert covered.all()


def test_tile_ranges_rejects_overlap_not_smaller_than_tile():
    with pytest.raises(ValueError, match="overlap"):
        tile_ranges(300, 128, 128)


@pytest.mark.parametrize("length,tile,overlap", GEOMETRIES + [(300, 128, 2), (1024, 256, 1), (700, 200, 100)])
def test_blend_weights_are_a_partition_of_unity(length, tile, overlap):
    ranges = tile_ranges(length, tile, overlap)
    weights = blend_weights(length, ranges, overlap)
    assert len(weights) == len(ranges)
    total = np.zeros(length, np.float64)
    for w, (a, b) in zip(weights, ranges):
        assert w.shape == (b - a,)
        assert w.dtype == np.float32
        assert (w >= 0).all() and (w <= 1 + 1e-6).all()
        total[a:b] += w
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-6)


def test_blend_weights_are_zero_next_to_inner_tile_edges():
    length, tile, overlap = 600, 256, 128
    ranges = tile_ranges(length, tile, overlap)
    weights = blend_weights(length, ranges, overlap)
    margin = overlap // 2 - max(4, overlap // 8)  # 48 px: beyond the network's ~40 px context
    assert len(ranges) >= 3
    # image borders keep full weight; inner edges have a zero margin
    assert weights[0][0] == 1.0 and weights[-1][-1] == 1.0
    assert np.all(weights[0][-margin:] == 0)
    assert np.all(weights[-1][:margin] == 0)
    assert np.all(weights[1][:margin] == 0) and np.all(weights[1][-margin:] == 0)


# --------------------------------------------------------------------------- tiled == untiled


@pytest.fixture(scope="module")
def module_tiny():
    from napari_minenet.zoo import ModelCard

    torch.manual_seed(0)
    card = ModelCard(name="tiny", task="nuclei", out_channels=2, instances=True, tile_size=256, tile_overlap=64)
    return SegmentationModel.new(card)


def _max_abs_diff(a, b):
    return np.abs(a - b).max(axis=0)


def test_tiled_equals_untiled_away_from_image_borders(module_tiny, make_blobs):
    image, _ = make_blobs(400, seed=3)
    starts = tile_starts(400, EXACT_TILE, EXACT_OVERLAP)
    assert len(starts) == 2  # the test really tiles
    # (fp32: the exactness of the blending, not bf16 rounding, is under test)
    untiled = predict_tiled(image, module_tiny, device="cpu", tile_size=1024, precision="fp32")
    tiled = predict_tiled(image, module_tiny, device="cpu", tile_size=EXACT_TILE, overlap=EXACT_OVERLAP,
                          precision="fp32")
    assert tiled.shape == untiled.shape == (2, 400, 400)
    diff = _max_abs_diff(tiled, untiled)
    assert diff[16:-16, 16:-16].max() < 1e-4


def test_batch_size_does_not_change_the_result(module_tiny, make_blobs):
    image, _ = make_blobs(200, seed=4)
    one = predict_tiled(image, module_tiny, device="cpu", tile_size=96, overlap=48, batch_size=1)
    many = predict_tiled(image, module_tiny, device="cpu", tile_size=96, overlap=48, batch_size=5)
    np.testing.assert_allclose(one, many, atol=1e-5)


def test_tiled_equals_untiled_when_the_image_is_not_a_multiple_of_four(module_tiny, make_blobs):
    image, _ = make_blobs(402, seed=3)
    ranges = tile_ranges(402, EXACT_TILE, EXACT_OVERLAP)
    assert len(ranges) == 2 and ranges[-1][1] - ranges[-1][0] != EXACT_TILE  # a longer last tile
    # (fp32: the exactness of the blending, not bf16 rounding, is under test)
    untiled = predict_tiled(image, module_tiny, device="cpu", tile_size=1024, precision="fp32")
    tiled = predict_tiled(image, module_tiny, device="cpu", tile_size=EXACT_TILE, overlap=EXACT_OVERLAP,
                          precision="fp32")
    diff = _max_abs_diff(tiled, untiled)
    assert diff[16:-16, 16:-16].max() < 1e-4


@pytest.mark.parametrize("size,tile,overlap", [(320, 128, 64), (300, 128, 96)])
def test_no_seams_at_tile_borders(module_tiny, make_blobs, size, tile, overlap):
    """Small tiles are not exact, but the error is not concentrated on tile borders."""
    image, _ = make_blobs(size, seed=5)
    untiled = predict_tiled(image, module_tiny, device="cpu", tile_size=1024)
    tiled = predict_tiled(image, module_tiny, device="cpu", tile_size=tile, overlap=overlap)
    diff = _max_abs_diff(tiled, untiled)
    ranges = tile_ranges(size, tile, min(overlap, tile // 2))
    lines = sorted({a for a, _ in ranges} | {b - 1 for _, b in ranges} - {0, size - 1})
    assert lines, "the image must be cut into several tiles"
    on_border = np.zeros((size, size), bool)
    on_border[lines, :] = True
    on_border[:, lines] = True
    assert diff[on_border].max() <= diff[~on_border].max()


# --------------------------------------------------------------------------- progress / cancel


def test_progress_reports_every_batch_and_ends_at_total(tiny_model, make_blobs):
    image, _ = make_blobs(200, seed=1)
    calls = []
    predict_tiled(image, tiny_model, device="cpu", tile_size=96, overlap=32, batch_size=2,
                  progress=lambda done, total: calls.append((done, total)))
    n_tiles = len(tile_starts(200, 96, 32)) ** 2
    assert calls[0] == (0, n_tiles)
    assert calls[-1] == (n_tiles, n_tiles)
    assert all(total == n_tiles for _, total in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done)
    assert len(calls) == 1 + -(-n_tiles // 2)


def test_cancel_before_start_raises_cancelled(tiny_model, make_blobs):
    image, _ = make_blobs(128, seed=1)
    with pytest.raises(Cancelled):
        predict_tiled(image, tiny_model, device="cpu", cancel=lambda: True)


def test_cancel_between_tiles_stops_early(tiny_model, make_blobs):
    image, _ = make_blobs(200, seed=1)
    checks = {"n": 0}
    progress = []

    def cancel():
        checks["n"] += 1
        return checks["n"] > 3

    with pytest.raises(Cancelled):
        predict_tiled(image, tiny_model, device="cpu", tile_size=64, overlap=16, cancel=cancel,
                      progress=lambda d, t: progress.append((d, t)))
    total = progress[0][1]
    assert total > 3
    assert progress[-1][0] < total


def test_cancelled_is_exported_from_the_package():
    import napari_minenet

    assert napari_minenet.Cancelled is Cancelled


# --------------------------------------------------------------------------- dtypes and shapes


def _variant(image_rgb: np.ndarray, kind: str) -> np.ndarray:
    grey = image_rgb[..., 0]
    if kind == "uint8-grey":
        return grey
    if kind == "uint8-rgb":
        return image_rgb
    if kind == "uint8-rgba":
        alpha = np.full(grey.shape + (1,), 255, np.uint8)
        return np.concatenate([image_rgb, alpha], axis=-1)
    if kind == "uint16-grey":
        return grey.astype(np.uint16) * 200
    if kind == "uint16-rgb":
        return image_rgb.astype(np.uint16) * 257
    if kind == "float32-rgb":
        return image_rgb.astype(np.float32) / 255.0
    if kind == "float64-grey":
        return grey.astype(np.float64) * 3.5 - 100.0
    if kind == "int16-grey":
        return grey.astype(np.int16) - 128
    if kind == "bool-grey":
        return grey < 128
    if kind == "hw1":
        return grey[..., None]
    raise AssertionError(kind)


KINDS = ["uint8-grey", "uint8-rgb", "uint8-rgba", "uint16-grey", "uint16-rgb", "float32-rgb", "float64-grey",
         "int16-grey", "bool-grey", "hw1"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.filterwarnings("ignore::napari_minenet.data.GreyImageWarning")
def test_dtypes_and_channels(tiny_model, make_blobs, kind):
    rgb, _ = make_blobs((48, 40), seed=2)
    image = _variant(rgb, kind)
    probs = predict_tiled(image, tiny_model, device="cpu")
    assert probs.shape == (2, 48, 40)
    assert probs.dtype == np.float32
    assert np.isfinite(probs).all()
    assert probs.min() >= 0.0 and probs.max() <= 1.0


def test_rgba_alpha_is_ignored(tiny_model, make_blobs):
    rgb, _ = make_blobs(64, seed=2)
    rgba = np.concatenate([rgb, np.random.default_rng(0).integers(0, 256, (64, 64, 1), dtype=np.uint8)], -1)
    np.testing.assert_array_equal(predict_tiled(rgba, tiny_model, device="cpu"),
                                  predict_tiled(rgb, tiny_model, device="cpu"))


def test_smallest_image_16x16(tiny_model, make_blobs):
    rgb, _ = make_blobs(16, seed=2, radius=(3, 5))
    probs = predict_tiled(rgb, tiny_model, device="cpu")
    assert probs.shape == (2, 16, 16) and probs.dtype == np.float32
    assert 0.0 <= probs.min() <= probs.max() <= 1.0


def test_float_images_are_scale_invariant(tiny_model, make_blobs):
    """Non-uint8 images are stretched between their percentiles: units do not matter."""
    rgb, _ = make_blobs(64, seed=6)
    image = rgb.astype(np.float32)
    a = predict_tiled(image, tiny_model, device="cpu")
    b = predict_tiled(image * 1000.0 + 5.0, tiny_model, device="cpu")
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_grey_model_accepts_rgb_and_rgb_model_accepts_grey(tiny_card, make_blobs):
    torch.manual_seed(0)
    grey_model = SegmentationModel.new(tiny_card(in_channels=1, out_channels=1))
    rgb_model = SegmentationModel.new(tiny_card())
    rgb, _ = make_blobs(64, seed=7)
    assert predict_tiled(rgb, grey_model, device="cpu").shape == (1, 64, 64)
    with pytest.warns(GreyImageWarning, match="trained on colour"):
        assert predict_tiled(rgb[..., 0], rgb_model, device="cpu").shape == (2, 64, 64)


def test_predict_returns_the_foreground_channel(tiny_model, make_blobs):
    rgb, _ = make_blobs(64, seed=7)
    np.testing.assert_array_equal(predict(rgb, tiny_model, device="cpu"),
                                  predict_tiled(rgb, tiny_model, device="cpu")[0])


def test_working_size_is_undone_in_the_output(tiny_card, make_blobs):
    """The network sees the image at the card's working size; the maps come back at the
    image's size: what the same network gives on the resized image, resized back."""
    import copy
    import dataclasses

    from napari_minenet.data import rescale_image, working_scale
    from napari_minenet.inference import _resize_probs

    torch.manual_seed(0)
    model = SegmentationModel.new(tiny_card(working_long_side=64))
    native = SegmentationModel(copy.deepcopy(model.network), dataclasses.replace(model.card, working_long_side=None))
    rgb, _ = make_blobs((120, 90), seed=7)
    probs = predict_tiled(rgb, model, device="cpu")
    assert probs.shape == (2, 120, 90)
    assert 0.0 <= probs.min() <= probs.max() <= 1.0
    small = rescale_image(rgb, working_scale(rgb.shape, 64))
    assert small.shape[:2] == (64, 48)
    expected = _resize_probs(predict_tiled(small, native, device="cpu").astype(np.float32), (120, 90))
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert np.abs(probs - predict_tiled(rgb, native, device="cpu")).max() > 1e-3  # not the native-size result


@pytest.mark.parametrize("mode", ["running", "image"])
def test_running_bn_statistics_mode(tiny_card, make_blobs, mode):
    """'running' uses the statistics stored in the weights (changing them changes the
    output); 'image' re-estimates them on the image (the stored ones do not matter)."""
    torch.manual_seed(0)
    model = SegmentationModel.new(tiny_card(bn_statistics=mode))
    rgb, _ = make_blobs(64, seed=7)
    probs = predict_tiled(rgb, model, device="cpu")
    assert probs.shape == (2, 64, 64) and np.isfinite(probs).all()
    with torch.no_grad():
        model.network.stem.bn.running_mean.add_(0.5)
        model.network.stem.bn.running_var.mul_(4.0)
    changed = np.abs(predict_tiled(rgb, model, device="cpu") - probs).max()
    if mode == "running":
        assert changed > 1e-3
    else:
        assert changed < 1e-5


def test_statistics_of_a_large_image_come_from_tiles_spread_over_it(tiny_model, monkeypatch):
    """Above BN_WHOLE_IMAGE_PIXELS (1 Mpx; lowered here) AdaBN estimates the statistics on
    a sample of BN_SAMPLE_TILE squares spread over the whole image, not on the whole image
    and not on its first tiles; smaller images use the whole image."""
    import napari_minenet.inference as inference

    seen = []
    real = inference.adapt_batchnorm

    def spy(net, batch, **kwargs):
        seen.append(batch.detach().clone())
        return real(net, batch, **kwargs)

    monkeypatch.setattr(inference, "adapt_batchnorm", spy)
    monkeypatch.setattr(inference, "BN_WHOLE_IMAGE_PIXELS", 150 * 150)
    monkeypatch.setattr(inference, "BN_SAMPLE_PIXELS", 9 * 32 * 32)
    monkeypatch.setattr(inference, "BN_SAMPLE_TILE", 32)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    predict_tiled(small, tiny_model, device="cpu")
    assert seen[-1].shape == (1, 3, 128, 128)  # the whole image
    big = rng.integers(0, 255, (320, 256, 3), dtype=np.uint8)
    # every tile knows where it came from: its rows / columns are coded in the pixels
    big[..., 0] = (np.arange(320) // 2)[:, None]
    big[..., 1] = np.arange(256)[None, :]
    predict_tiled(big, tiny_model, device="cpu")
    batch = seen[-1]
    assert batch.shape[1:] == (3, 32, 32) and 4 <= batch.shape[0] <= 9
    boxes = inference._sample_boxes(320, 256, 9 * 32 * 32, 32)
    assert len(boxes) == batch.shape[0]
    assert all(y1 - y0 == 32 and x1 - x0 == 32 and 0 <= y0 and y1 <= 320 and 0 <= x0 and x1 <= 256
               for y0, y1, x0, x1 in boxes)
    rows = {y0 for y0, *_ in boxes}
    cols = {x0 for _, _, x0, _ in boxes}
    assert min(rows) < 64 and max(rows) > 320 - 96 and min(cols) < 64 and max(cols) > 256 - 96  # spread out
    # the batch holds exactly those boxes' pixels, all normalised alike (one affine map per channel)
    crops = np.stack([big[y0:y1, x0:x1] for y0, y1, x0, x1 in boxes]).astype(np.float64)
    for c in range(3):
        x, y = crops[..., c].ravel(), batch[:, c].double().numpy().ravel()
        a, b = np.polyfit(x, y, 1)
        assert abs(a) > 1e-6 and np.abs(a * x + b - y).max() < 1e-4


def test_adapt_batchnorm_uses_the_batch_statistics_and_leaves_the_network_unchanged(tiny_model):
    net = tiny_model.network
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(0)
    batch = torch.randn(2, 3, 32, 32) * 3 + 1
    adapted = adapt_batchnorm(net, batch)
    assert adapted is not net
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not adapted.training
    with torch.no_grad():
        stem_out = net.stem.conv(batch)
    torch.testing.assert_close(adapted.stem.bn.running_mean, stem_out.mean(dim=(0, 2, 3)), atol=1e-4, rtol=1e-4)


def test_adapt_batchnorm_blends_the_stored_statistics_with_a_prior(tiny_model):
    """prior p: each layer's statistics are those of the mixture (1 - p) batch + p stored, with
    the batch's own taken from the plain AdaBN pass; the network is still not modified."""
    net = tiny_model.network
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batch = torch.randn(2, 3, 32, 32) * 3 + 1
    plain = adapt_batchnorm(net, batch)
    blended, out = adapt_batchnorm(net, batch, prior=0.25, return_output=True)
    assert out is None  # the pass's output used the batch statistics alone: not a prediction
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    p = 0.25
    for name, m in blended.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            pm, pv = dict(plain.named_modules())[name].running_mean, dict(plain.named_modules())[name].running_var
            sm, sv = before[f"{name}.running_mean"], before[f"{name}.running_var"]
            torch.testing.assert_close(m.running_mean, (1 - p) * pm + p * sm)
            torch.testing.assert_close(m.running_var, (1 - p) * pv + p * sv + p * (1 - p) * (pm - sm) ** 2)
    with pytest.raises(ValueError, match="prior"):
        adapt_batchnorm(net, batch, prior=1.0)


def test_prediction_does_not_modify_the_model(tiny_model, make_blobs):
    rgb, _ = make_blobs(64, seed=7)
    net = tiny_model.network
    was_training = net.training
    before = {k: v.clone() for k, v in net.state_dict().items()}
    first = predict_tiled(rgb, tiny_model, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.training == was_training
    # and a second run gives the same answer (nothing leaked from the first)
    np.testing.assert_array_equal(first, predict_tiled(rgb, tiny_model, device="cpu"))


def test_too_small_tile_size_and_unknown_precision(tiny_model, make_blobs):
    rgb, _ = make_blobs(64, seed=7)
    with pytest.raises(ValueError, match="tile size"):
        predict_tiled(rgb, tiny_model, device="cpu", tile_size=16)
    with pytest.raises(ValueError, match="precision"):
        predict_tiled(rgb, tiny_model, device="cpu", precision="int4")


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            select_device("cuda")


# --------------------------------------------------------------------------- bad input


def _blobs64(make_blobs):
    return make_blobs(64, seed=8)[0]


BAD_INPUTS = {
    "4-D": (lambda img: np.stack([img, img])[None], "shape"),
    "5 channels": (lambda img: np.concatenate([img, img[..., :2]], axis=-1), r"shape \(64, 64, 5\)"),
    "channels first": (lambda img: np.moveaxis(img, -1, 0)[:, :, :20], "shape"),
    "1-D": (lambda img: img[0, :, 0], "shape"),
    "empty": (lambda img: np.zeros((0, 0), np.uint8), "empty"),
    "8x8": (lambda img: img[:8, :8], "8 x 8 pixels.*at least 16 x 16"),
    "16x8": (lambda img: img[:16, :8], "16 x 8 pixels"),
    "constant": (lambda img: np.full((64, 64, 3), 17, np.uint8), "constant"),
    "constant float": (lambda img: np.zeros((64, 64), np.float32), "constant"),
    "nan": (lambda img: np.where(img[..., 0] > 100, np.nan, 1.0), "NaN or infinite"),
    "inf": (lambda img: np.where(img[..., 0] > 100, np.inf, 1.0).astype(np.float32), "NaN or infinite"),
    "object": (lambda img: img[..., 0].astype(object), "dtype object"),
    "strings": (lambda img: img[..., 0].astype(str), "dtype <U"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_segment_rejects_bad_input_with_a_clear_message(tiny_model, make_blobs, case):
    make, message = BAD_INPUTS[case]
    image = make(_blobs64(make_blobs))
    with pytest.raises(InputError, match=message):
        segment(image, tiny_model, device="cpu")


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)


def test_segment_unknown_model_name():
    from napari_minenet.zoo import ModelLoadError

    with pytest.raises(ModelLoadError, match="no model named 'no-such-model'"):
        segment(np.zeros((32, 32), np.uint8), "no-such-model")


# --------------------------------------------------------------------------- segment


def test_segment_rgb_returns_uint32_labels_of_the_same_size(tiny_model, make_blobs):
    image, _ = make_blobs((90, 70), seed=9)
    result = segment(image, tiny_model, device="cpu")
    assert result.labels.shape == (90, 70)
    assert result.labels.dtype == np.uint32
    assert result.probability.shape == (90, 70) and result.probability.dtype == np.float32
    assert result.contour is not None and result.contour.shape == (90, 70)
    assert result.instances is True  # from the nuclei card
    assert result.threshold == tiny_model.card.default_threshold
    assert result.count == int(result.labels.max())
    # instance ids are 1..N without gaps
    ids = np.unique(result.labels)
    ids = ids[ids > 0]
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))


def test_segment_binary_gives_zero_and_one(tiny_model, make_blobs):
    image, _ = make_blobs(64, seed=9)
    result = segment(image, tiny_model, device="cpu", instances=False, threshold=0.5)
    assert set(np.unique(result.labels)) <= {0, 1}
    assert result.count in (0, 1)


def test_segment_trained_model_counts_the_blobs(trained_model, make_blobs):
    image, truth = make_blobs(128, seed=42)
    n_true = int(truth.max())
    result = segment(image, trained_model, device="cpu", instances=True)
    assert n_true >= 10
    assert abs(result.count - n_true) <= 2
    # and the pixels agree with the truth
    pred, gt = result.labels > 0, truth > 0
    dice = 2 * (pred & gt).sum() / (pred.sum() + gt.sum())
    assert dice > 0.9


def test_segment_on_the_bundled_ihc_sample(tiny_model):
    from napari_minenet.samples import load_sample

    image = load_sample("ihc")[:160, :192]
    assert image.dtype == np.uint8 and image.shape == (160, 192, 3)
    result = segment(image, tiny_model, device="cpu")
    assert result.labels.shape == (160, 192) and result.labels.dtype == np.uint32


def test_segment_stack_labels_are_unique_across_planes(trained_model, make_blobs):
    planes = [make_blobs(96, seed=s, rgb=False)[0] for s in (11, 12, 13)]
    stack = np.stack(planes)
    calls = []
    result = segment_stack(stack, trained_model, device="cpu", instances=True,
                           progress=lambda d, t: calls.append((d, t)))
    labels, prob = result.labels, result.probability
    assert labels.shape == (3, 96, 96) and labels.dtype == np.uint32
    assert prob.shape == (3, 96, 96) and prob.dtype == np.float32
    ids = [set(np.unique(p)) - {0} for p in labels]
    assert all(len(s) > 1 for s in ids)
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert result.count == sum(len(s) for s in ids)
    # re-thresholding keeps the ids unique across planes
    relabelled = result.relabel(threshold=0.9)
    ids = [set(np.unique(p)) - {0} for p in relabelled]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_segment_stack_of_rgb_planes(tiny_model, make_blobs):
    stack = np.stack([make_blobs(48, seed=s)[0] for s in (1, 2)])
    result = segment_stack(stack, tiny_model, device="cpu")
    assert result.labels.shape == (2, 48, 48) and result.probability.shape == (2, 48, 48)
    assert result.labels.dtype == np.uint32


def test_segment_stack_passes_cancel(tiny_model, make_blobs):
    stack = np.stack([make_blobs(48, seed=s, rgb=False)[0] for s in (1, 2)])
    with pytest.raises(Cancelled):
        segment_stack(stack, tiny_model, device="cpu", cancel=lambda: True)


# --------------------------------------------------------------------------- silent wrong results and limits


def test_float64_values_near_1e308_give_the_same_result_as_unit_values(tiny_model, make_blobs):
    rgb, _ = make_blobs(64, seed=6)
    image = rgb.astype(np.float64) / 255.0
    expected = predict_tiled(image, tiny_model, device="cpu")
    huge = predict_tiled(image * 1e307 + 1e307, tiny_model, device="cpu")
    assert np.isfinite(huge).all()
    np.testing.assert_allclose(huge, expected, atol=1e-3)


def test_a_network_that_outputs_nan_is_an_error_not_zero_objects(tiny_card, make_blobs):
    torch.manual_seed(0)
    model = SegmentationModel.new(tiny_card(bn_statistics="running"))
    with torch.no_grad():
        model.network.stem.conv.weight.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="not a number"):
        segment(make_blobs(64, seed=1)[0], model, device="cpu")


@pytest.mark.parametrize("tile", [0, 16, -5])
def test_a_tile_size_of_zero_or_below_32_is_refused(tiny_model, make_blobs, tile):
    with pytest.raises(ValueError, match="too small"):
        predict_tiled(make_blobs(64, seed=1)[0], tiny_model, device="cpu", tile_size=tile)


def test_tiles_are_capped(tiny_model, make_blobs):
    from napari_minenet.data import MAX_TILE_SIZE

    assert MAX_TILE_SIZE == 4096
    with pytest.raises(ValueError, match="too large .maximum 4096"):
        predict_tiled(make_blobs(64, seed=1)[0], tiny_model, device="cpu", tile_size=100_000)
    with pytest.raises(ValueError, match="batch size"):
        predict_tiled(make_blobs(64, seed=1)[0], tiny_model, device="cpu", batch_size=0)


def test_a_grey_image_on_a_colour_model_can_be_refused(tiny_model, make_blobs):
    import warnings

    grey = make_blobs(64, seed=1)[0][..., 0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", GreyImageWarning)
        with pytest.raises(GreyImageWarning, match="'tiny' was trained on colour"):
            segment(grey, tiny_model, device="cpu")
        segment(make_blobs(64, seed=1)[0], tiny_model, device="cpu")  # colour: no warning


# --------------------------------------------------------------------------- precision


def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch):
    import napari_minenet.inference as inference

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native in (True, False):
        monkeypatch.setattr(inference, "_NATIVE_BF16", native)
        assert inference.resolve_precision(cpu, "auto") == ("bf16" if native else "fp32")
        assert inference.resolve_precision(cuda, "auto") == "fp32"  # not validated on GPUs
        assert inference.resolve_precision(cpu, "FP32") == "fp32"
        assert inference.resolve_precision(cpu, "bfloat16") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        inference.resolve_precision(cpu, "int8")


@pytest.mark.parametrize("size,tile", [(96, 1024), (200, 96)])  # one tile (statistics pass = prediction), tiles
def test_precision_auto_follows_the_cpu_and_fp32_can_be_forced(monkeypatch, module_tiny, make_blobs, size, tile):
    import napari_minenet.inference as inference

    image, _ = make_blobs(size, seed=6)
    kw = dict(device="cpu", tile_size=tile, overlap=48)
    fp32 = predict_tiled(image, module_tiny, precision="fp32", **kw)
    bf16 = predict_tiled(image, module_tiny, precision="bf16", **kw)
    assert 0 < np.abs(fp32 - bf16).max() < 0.1  # bf16 really ran, and stays close
    monkeypatch.setattr(inference, "_NATIVE_BF16", True)
    np.testing.assert_array_equal(predict_tiled(image, module_tiny, **kw), bf16)  # the default is auto
    np.testing.assert_array_equal(segment(image, module_tiny, **kw).probability, bf16[0])
    np.testing.assert_array_equal(segment(image, module_tiny, precision="fp32", **kw).probability, fp32[0])
    monkeypatch.setattr(inference, "_NATIVE_BF16", False)
    np.testing.assert_array_equal(predict_tiled(image, module_tiny, **kw), fp32)


def test_native_bf16_detection_reads_the_cpu_flags(monkeypatch, tmp_path):
    import builtins

    import napari_minenet.inference as inference

    real_open = builtins.open
    for flags, expected in (("fpu avx512f avx512_bf16 sse", True), ("fpu avx512f sse", False),
                            ("fpu amx_bf16", True)):
        fake = tmp_path / "cpuinfo"
        fake.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p,
                                                                          *a, **k))
        monkeypatch.setattr(inference, "_NATIVE_BF16", None)
        assert inference.native_bf16_cpu() is (expected and torch.backends.mkldnn.is_available())
    monkeypatch.setattr(inference, "_NATIVE_BF16", None)


def test_tiles_keep_to_the_networks_grid(tiny_card, make_blobs, monkeypatch):
    """Tile sizes and starts are multiples of the network's size_multiple (4 for Mini-Net,
    16 for the reference U-Net), not a fixed 4."""
    import napari_minenet.inference as inference

    assert all(s % 16 == 0 for s in inference.tile_starts(1000, 300, 64, grid=16))
    torch.manual_seed(0)
    model = SegmentationModel.new(tiny_card(tile_size=100, tile_overlap=32))
    model.network.size_multiple = 16  # MiniNet.forward pads to it as well
    seen = []
    real = inference.tile_ranges

    def spy(length, tile, overlap, grid=inference.GRID):
        seen.append((tile, grid))
        return real(length, tile, overlap, grid)

    monkeypatch.setattr(inference, "tile_ranges", spy)
    rgb, _ = make_blobs(200, seed=1)
    probs = predict_tiled(rgb, model, device="cpu", precision="fp32")
    assert probs.shape[1:] == (200, 200)
    assert seen and all(tile == 96 and grid == 16 for tile, grid in seen)  # 100 px -> 96, a multiple of 16
