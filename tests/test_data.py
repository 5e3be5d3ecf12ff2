"""Reading images, checking and normalising pixels, dataset folders."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_minenet.data import (
    MIN_SIDE,
    InputError,
    Normalizer,
    TrainingExample,
    as_rgb_or_grey,
    check_image,
    load_dataset,
    read_image,
)

# --------------------------------------------------------------------------- read_image


def test_read_png_grey_and_rgb(tmp_path, make_blobs):
    rgb, _ = make_blobs(40, seed=1)
    iio.imwrite(tmp_path / "rgb.png", rgb)
    iio.imwrite(tmp_path / "grey.png", rgb[..., 0])
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb)
    np.testing.assert_array_equal(read_image(str(tmp_path / "grey.png")), rgb[..., 0])


def test_read_rgba_png_drops_alpha(tmp_path, make_blobs):
    rgb, _ = make_blobs(40, seed=1)
    rgba = np.concatenate([rgb, np.full((40, 40, 1), 128, np.uint8)], axis=-1)
    iio.imwrite(tmp_path / "rgba.png", rgba)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)


def test_read_tiff_uint16_and_stack(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 65535, (32, 48), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", img)
    out = read_image(tmp_path / "a.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, img)
    stack = rng.integers(0, 255, (6, 32, 48), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tiff", stack)
    np.testing.assert_array_equal(read_image(tmp_path / "stack.tiff"), stack)


def test_read_tiff_with_channels_first_rgb(tmp_path, make_blobs):
    rgb, _ = make_blobs(40, seed=1)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), rgb)


def test_read_tiff_grey_stack_of_four_planes_keeps_all_planes(tmp_path):
    stack = np.random.default_rng(0).integers(0, 60000, (4, 32, 32), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "z4.tif", stack, photometric="minisblack")
    assert read_image(tmp_path / "z4.tif").shape == (4, 32, 32)


def test_read_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_image(tmp_path / "missing.png")


def test_read_a_folder(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        read_image(tmp_path)


@pytest.mark.parametrize("name", ["notes.png", "notes.tif", "notes.txt"])
def test_read_a_file_that_is_not_an_image(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is not an image\n" * 10)
    with pytest.raises(InputError, match="cannot read"):
        read_image(path)


def test_read_the_bundled_sample():
    from napari_minenet.samples import load_sample, sample_path

    img = load_sample("ihc")
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8
    assert sample_path("ihc").name == "ihc.png"
    with pytest.raises(KeyError, match="unknown sample"):
        sample_path("nope")


# --------------------------------------------------------------------------- check_image


def test_check_image_normalises_channel_layouts():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    assert check_image(grey) is grey
    np.testing.assert_array_equal(check_image(grey[..., None]), grey)
    rgba = rng.integers(0, 255, (20, 30, 4), dtype=np.uint8)
    np.testing.assert_array_equal(check_image(rgba), rgba[..., :3])
    boolean = check_image(grey > 128)
    assert boolean.dtype == np.uint8 and set(np.unique(boolean)) == {0, 1}
    assert check_image([[0, 1] * 8] * 16).shape == (16, 16)  # lists are accepted


def test_check_image_minimum_size_is_inclusive():
    img = np.arange(MIN_SIDE * MIN_SIDE, dtype=np.uint8).reshape(MIN_SIDE, MIN_SIDE)
    assert check_image(img).shape == (MIN_SIDE, MIN_SIDE)
    with pytest.raises(InputError, match="at least"):
        check_image(img[:-1])


@pytest.mark.parametrize("image,message", [
    (np.zeros((2, 3, 20, 20)), "shape"),
    (np.zeros((20, 20, 5)), "shape"),
    (np.zeros((20, 20, 2)), "shape"),
    (np.zeros(0), "empty"),
    (np.zeros((0, 20)), "empty"),
    (np.arange(64).reshape(8, 8), "8 x 8"),
    (np.full((20, 20), 3.0), "constant"),
    (np.array([[np.nan] * 20] * 20), "NaN or infinite"),
    (np.array([[1.0, -np.inf] * 10] * 20), "NaN or infinite"),
    (np.empty((20, 20), object), "dtype object"),
])
def test_check_image_errors(image, message):
    with pytest.raises(InputError, match=message):
        check_image(image, name="the picture")


def test_check_image_names_the_input():
    with pytest.raises(InputError, match="^layer 'x' is constant"):
        check_image(np.zeros((20, 20)), name="layer 'x'")


def test_check_image_rejects_complex_pixels():
    image = np.exp(1j * np.arange(400).reshape(20, 20))
    with pytest.raises(InputError, match="dtype complex"):
        check_image(image)


# --------------------------------------------------------------------------- channels and normalisation


def test_as_rgb_or_grey():
    grey = np.arange(400, dtype=np.uint8).reshape(20, 20)
    rgb = as_rgb_or_grey(grey, 3)
    assert rgb.shape == (20, 20, 3) and (rgb == grey[..., None]).all()
    back = as_rgb_or_grey(rgb, 1)
    assert back.shape == (20, 20) and back.dtype == np.float32
    np.testing.assert_allclose(back, grey, atol=0.01)  # luminance weights sum to 1
    assert as_rgb_or_grey(grey, 1) is grey and as_rgb_or_grey(rgb, 3) is rgb


def test_normalizer_uint8_uses_the_full_range():
    image = np.array([[0, 255], [128, 64]], np.uint8)
    norm = Normalizer.for_image(image, {"mean": [0.5], "std": [0.25]}, in_channels=1)
    x = norm(image)
    assert x.shape == (1, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], (image / 255.0 - 0.5) / 0.25, atol=1e-5)


def test_normalizer_rgb_is_per_channel_and_channels_first():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    norm = Normalizer.for_image(image, {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 1.0]}, in_channels=3)
    x = norm(image)
    assert x.shape == (3, 10, 12)
    for c, (m, s) in enumerate(zip([0.1, 0.2, 0.3], [0.5, 0.25, 1.0])):
        np.testing.assert_allclose(x[c], (image[..., c] / 255.0 - m) / s, atol=1e-5)


def test_normalizer_stretches_other_dtypes_between_percentiles():
    rng = np.random.default_rng(0)
    image = rng.uniform(1000, 5000, (64, 64)).astype(np.float32)
    norm = Normalizer.for_image(image, {"mean": [0.0], "std": [1.0]}, in_channels=1)
    x = norm(image)[0]
    assert abs(np.percentile(x, 0.5)) < 0.01 and abs(np.percentile(x, 99.5) - 1.0) < 0.01
    # a tile of the image is normalised like the whole image (statistics are per image)
    np.testing.assert_array_equal(norm(image[10:30, 5:25])[0], x[10:30, 5:25])


def test_normalizer_of_an_almost_constant_image_is_finite():
    image = np.zeros((32, 32), np.uint16)
    image[0, 0] = 7
    x = Normalizer.for_image(image, {"mean": [0.5], "std": [0.25]}, 1)(image)
    assert np.isfinite(x).all()


# --------------------------------------------------------------------------- datasets


def test_load_dataset(blob_dataset):
    examples = load_dataset(blob_dataset)
    assert [ex.id for ex in examples] == [f"img{i}" for i in range(6)]
    for ex in examples:
        assert ex.image.shape == (96, 96, 3) and ex.image.dtype == np.uint8
        assert ex.mask.dtype == bool and ex.mask.shape == (96, 96)
        assert ex.labels is not None and ex.labels.max() >= 2
        np.testing.assert_array_equal(ex.mask, ex.labels > 0)
        assert ex.fov is None
        assert ex.source.endswith(f"{ex.id}.png")


def test_load_dataset_subset_and_unknown_ids(blob_dataset):
    assert [ex.id for ex in load_dataset(blob_dataset, ["img3", "img1"])] == ["img3", "img1"]
    with pytest.raises(InputError, match="ids not found.*img9"):
        load_dataset(blob_dataset, ["img1", "img9"])


def test_load_dataset_with_fov_and_labels_only(tmp_path, make_blobs):
    image, labels = make_blobs(48, seed=2)
    for sub in ("images", "labels", "fov"):
        (tmp_path / sub).mkdir()
    iio.imwrite(tmp_path / "images" / "a.png", image)
    tifffile.imwrite(tmp_path / "labels" / "a.tif", labels)
    fov = np.zeros((48, 48, 3), np.uint8)
    fov[4:-4, 4:-4] = 255
    iio.imwrite(tmp_path / "fov" / "a.png", fov)
    (ex,) = load_dataset(tmp_path)
    np.testing.assert_array_equal(ex.mask, labels > 0)  # the mask comes from the labels
    assert ex.fov.shape == (48, 48) and ex.fov.dtype == bool and ex.fov.sum() == 40 * 40


def test_load_dataset_errors(tmp_path, make_blobs):
    with pytest.raises(InputError, match="data folder not found"):
        load_dataset(tmp_path / "missing")
    with pytest.raises(InputError, match="no images/ folder"):
        load_dataset(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(InputError, match="no images in"):
        load_dataset(tmp_path)
    iio.imwrite(tmp_path / "images" / "a.png", make_blobs(32, seed=0)[0])
    with pytest.raises(InputError, match="'a' has no mask"):
        load_dataset(tmp_path)
    assert load_dataset(tmp_path, need_masks=False)[0].mask.sum() == 0


def test_load_dataset_mask_of_another_size(tmp_path, make_blobs):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    iio.imwrite(tmp_path / "images" / "a.png", make_blobs(32, seed=0)[0])
    iio.imwrite(tmp_path / "masks" / "a.png", np.zeros((30, 32), np.uint8))
    with pytest.raises(InputError, match="mask is"):
        load_dataset(tmp_path)


def test_training_example_checks_shapes():
    image = np.zeros((20, 20, 3), np.uint8)
    TrainingExample("ok", image, np.zeros((20, 20), bool))
    with pytest.raises(InputError, match="example 'bad': labels is"):
        TrainingExample("bad", image, np.zeros((20, 20), bool), labels=np.zeros((10, 20), np.uint16))


# --------------------------------------------------------------------------- unreadable and hostile files


def test_an_empty_file_named_png_says_it_is_empty(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty \(0 bytes\), not an image") as info:
        read_image(path)
    assert "pip" not in str(info.value)


def test_a_text_file_named_png_is_not_a_readable_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(InputError, match="not a readable PNG image") as info:
        read_image(path)
    assert "pip" not in str(info.value) and "pyav" not in str(info.value)


def test_a_five_channel_tiff_names_its_shape(tmp_path):
    tifffile.imwrite(tmp_path / "c5.tif", np.zeros((64, 64, 5), np.uint8) + np.arange(5, dtype=np.uint8))
    with pytest.raises(InputError, match=r"shape \(64, 64, 5\): an image with 5 channels.*expected grey"):
        read_image(tmp_path / "c5.tif")


def _tiff_claiming(path, height: int, width: int) -> None:
    """A tiny deflate TIFF whose header claims ``height`` x ``width`` pixels (a decompression bomb)."""
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(width)
        tif.pages[0].tags["ImageLength"].overwrite(height)


def test_a_tiff_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.tif"
    _tiff_claiming(path, 100_000, 100_000)
    assert path.stat().st_size < 1000

    def no_decoding(*args, **kwargs):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_decoding)
    with pytest.raises(InputError, match=r"claims 100000 x 100000 = 10,000,000,000 pixels, more than the limit"):
        read_image(path)


def test_the_pixel_limit_applies_to_png_and_can_be_changed(tmp_path, monkeypatch, make_blobs):
    from napari_minenet.data import MAX_IMAGE_PIXELS, max_image_pixels

    path = tmp_path / "a.png"
    iio.imwrite(path, make_blobs(64, seed=0)[0])
    assert max_image_pixels() == MAX_IMAGE_PIXELS
    with pytest.raises(InputError, match="claims 64 x 64 = 4,096 pixels"):
        read_image(path, max_pixels=1000)
    monkeypatch.setenv("NAPARI_MINENET_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(InputError, match="NAPARI_MINENET_MAX_IMAGE_PIXELS"):
        read_image(path)
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((3, 20, 20), np.uint8), photometric="minisblack")  # every plane
    with pytest.raises(InputError, match="3 x 20 x 20 = 1,200 pixels"):
        read_image(tmp_path / "a.tif")
    monkeypatch.setenv("NAPARI_MINENET_MAX_IMAGE_PIXELS", "5000")
    assert read_image(path).shape == (64, 64, 3)


@pytest.mark.parametrize("labels,message", [
    (np.full((32, 32), 1.5, np.float32), "dtype float32: expected integers"),
    (np.where(np.eye(32) > 0, np.nan, 1.0), "dtype float64"),
    (np.ones((32, 32, 3), np.uint16), r"shape \(32, 32, 3\)"),
    (np.ones((32, 32), np.complex64), "dtype complex64"),
    (np.full((32, 32), -2, np.int16), "negative ids"),
])
def test_load_dataset_refuses_labels_that_are_not_instance_ids(tmp_path, make_blobs, labels, message):
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    iio.imwrite(tmp_path / "images" / "a.png", make_blobs(32, seed=0)[0])
    tifffile.imwrite(tmp_path / "labels" / "a.tif", labels)
    with pytest.raises(InputError, match=message):
        load_dataset(tmp_path)


def test_load_dataset_refuses_a_nan_mask(tmp_path, make_blobs):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    iio.imwrite(tmp_path / "images" / "a.png", make_blobs(32, seed=0)[0])
    tifffile.imwrite(tmp_path / "masks" / "a.tif", np.where(np.eye(32) > 0, np.nan, 1.0).astype(np.float32))
    with pytest.raises(InputError, match="mask .* contains NaN"):
        load_dataset(tmp_path)


def test_normalizer_refuses_a_zero_std():
    image = np.arange(400, dtype=np.uint8).reshape(20, 20)
    with pytest.raises(ValueError, match="std must be positive"):
        Normalizer.for_image(image, {"mean": [0.5] * 3, "std": [0, 0, 0]}, in_channels=3)


@pytest.mark.parametrize("factor", [1e300, 1e-300])
def test_normalizer_handles_float64_values_far_beyond_float32(factor):
    rng = np.random.default_rng(0)
    image = rng.uniform(1.0, 1.7, (32, 32))
    norm = {"mean": [0.5], "std": [0.25]}
    expected = Normalizer.for_image(image, norm, 1)(image)
    huge = image * factor  # near 1e300: float32 overflows, the old code gave NaN probabilities
    out = Normalizer.for_image(huge, norm, 1)(huge)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_errors_share_one_base_and_keep_their_builtin_bases():
    """``except MinenetError`` catches every error raised on purpose; code that catches
    ValueError / RuntimeError still catches InputError / ModelLoadError."""
    from napari_minenet import data, errors, zoo

    assert data.InputError is errors.InputError and zoo.ModelLoadError is errors.ModelLoadError
    with pytest.raises(errors.MinenetError):
        data.check_image(np.zeros((4, 4, 7), np.uint8))
    with pytest.raises(ValueError):
        data.check_image(np.zeros((4, 4, 7), np.uint8))
    with pytest.raises(errors.MinenetError):
        zoo.load_model("no-such-model-anywhere")
    with pytest.raises(RuntimeError):
        zoo.load_model("no-such-model-anywhere")


def test_cancelled_is_one_of_the_package_errors():
    from napari_minenet import errors, inference

    assert inference.Cancelled is errors.Cancelled
    assert issubclass(inference.Cancelled, errors.MinenetError)
