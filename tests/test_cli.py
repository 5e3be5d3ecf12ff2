"""The ``napari-minenet`` command line, called in-process through ``cli.main([...])``.

``segment --instances`` needs a model that actually finds the blobs, so these tests use
the ``trained_model_path`` fixture (a tiny model trained for 40 steps on synthetic blobs,
see conftest.py); the untrained model is used where only shapes and messages matter.
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_minenet.cli import main
from napari_minenet.evaluation import METRIC_KEYS
from napari_minenet.zoo import load_model, save_model, user_models_dir


@pytest.fixture
def blobs_png(tmp_path, make_blobs) -> tuple[Path, np.ndarray]:
    image, labels = make_blobs((120, 150), seed=21)
    path = tmp_path / "in" / "blobs.png"
    path.parent.mkdir()
    iio.imwrite(path, image)
    return path, labels


def _no_traceback(text: str) -> bool:
    return "Traceback" not in text


# --------------------------------------------------------------------------- segment


def test_segment_writes_instance_labels(blobs_png, trained_model_path, tmp_path, capsys):
    path, truth = blobs_png
    out = tmp_path / "out"
    rc = main(["segment", str(path), "-o", str(out), "--model", str(trained_model_path), "--instances",
               "--device", "cpu", "--save-probability"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    labels = tifffile.imread(out / "blobs_labels.tif")
    assert labels.dtype == np.uint32 and labels.shape == (120, 150)
    n = int(labels.max())
    assert n > 1
    assert abs(n - int(truth.max())) <= 2
    assert len(np.unique(labels)) == n + 1
    prob = tifffile.imread(out / "blobs_probability.tif")
    assert prob.dtype == np.float32 and prob.shape == (120, 150)
    assert 0.0 <= prob.min() <= prob.max() <= 1.0
    overlay = iio.imread(out / "blobs_overlay.png")
    assert overlay.shape == (120, 150, 3)
    assert "blobs.png:" in captured.out and "blobs_labels.tif" in captured.out
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_segment_binary_without_overlay(blobs_png, trained_model_path, tmp_path, capsys):
    path, _ = blobs_png
    out = tmp_path / "out"
    rc = main(["segment", str(path), "-o", str(out), "--model", str(trained_model_path), "--no-instances",
               "--no-overlay", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    labels = tifffile.imread(out / "blobs_labels.tif")
    assert labels.dtype == np.uint32 and labels.shape == (120, 150)
    assert set(np.unique(labels)) == {0, 1}
    assert sorted(p.name for p in out.iterdir()) == ["blobs_labels.tif"]


def test_segment_untrained_model_shape_and_dtype(blobs_png, tiny_model_path, tmp_path, capsys):
    path, _ = blobs_png
    rc = main(["segment", str(path), "-o", str(tmp_path / "out"), "--model", str(tiny_model_path),
               "--device", "cpu", "--tile", "64"])
    assert rc == 0, capsys.readouterr().err
    labels = tifffile.imread(tmp_path / "out" / "blobs_labels.tif")
    assert labels.dtype == np.uint32 and labels.shape == (120, 150)


def test_segment_a_stack(tmp_path, make_blobs, trained_model_path, capsys):
    stack = np.stack([make_blobs(64, seed=s, rgb=False)[0] for s in range(5)])
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack)
    rc = main(["segment", str(path), "-o", str(tmp_path / "out"), "--model", str(trained_model_path),
               "--instances", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    labels = tifffile.imread(tmp_path / "out" / "stack_labels.tif")
    assert labels.shape == (5, 64, 64) and labels.dtype == np.uint32
    assert "5 planes" in captured.out


def test_segment_missing_input_file(tmp_path, tiny_model_path, capsys):
    missing = tmp_path / "missing.png"
    rc = main(["segment", str(missing), "-o", str(tmp_path / "out"), "--model", str(tiny_model_path)])
    captured = capsys.readouterr()
    assert rc != 0
    assert "file not found" in captured.err and str(missing) in captured.err
    assert _no_traceback(captured.err) and _no_traceback(captured.out)


def test_segment_continues_after_a_bad_file(blobs_png, tmp_path, tiny_model_path, capsys):
    path, _ = blobs_png
    bad = tmp_path / "in" / "notes.png"
    bad.write_text("not an image")
    constant = tmp_path / "in" / "blank.png"
    iio.imwrite(constant, np.zeros((32, 32), np.uint8))
    out = tmp_path / "out"
    rc = main(["segment", str(bad), str(constant), str(path), "-o", str(out), "--model", str(tiny_model_path),
               "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "cannot read" in captured.err and "constant" in captured.err
    assert (out / "blobs_labels.tif").is_file()
    assert _no_traceback(captured.err)


def test_segment_unknown_model(blobs_png, tmp_path, capsys):
    path, _ = blobs_png
    rc = main(["segment", str(path), "-o", str(tmp_path / "out"), "--model", "no-such-model"])
    captured = capsys.readouterr()
    assert rc == 2
    assert "no model named 'no-such-model'" in captured.err
    assert _no_traceback(captured.err)


def test_segment_damaged_model(blobs_png, tmp_path, tiny_model_path, capsys):
    path, _ = blobs_png
    tiny_model_path.write_bytes(tiny_model_path.read_bytes()[:1000])
    rc = main(["segment", str(path), "-o", str(tmp_path / "out"), "--model", str(tiny_model_path)])
    captured = capsys.readouterr()
    assert rc == 2 and "damaged" in captured.err and _no_traceback(captured.err)


# --------------------------------------------------------------------------- models


def test_models_lists_a_user_model(tiny_model, capsys):
    save_model(tiny_model, user_models_dir(create=True) / "tiny")
    rc = main(["models"])
    captured = capsys.readouterr()
    assert rc == 0
    rows = [line.split() for line in captured.out.splitlines()]
    assert ["tiny", "nuclei", "user"] in [row[:3] for row in rows]
    assert str(user_models_dir()) in captured.out


def test_models_shows_validation_metrics(trained_model_path, capsys):
    model = load_model(trained_model_path)
    save_model(model, user_models_dir(create=True) / "blobnet")
    assert main(["models"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("blobnet"))
    assert "validation: f1=" in line


# --------------------------------------------------------------------------- evaluate


def test_evaluate_writes_json(blob_dataset, trained_model_path, tmp_path, capsys):
    report_path = tmp_path / "reports" / "eval.json"
    report_path.parent.mkdir()
    rc = main(["evaluate", "--data", str(blob_dataset), "--model", str(trained_model_path), "--device", "cpu",
               "--json", str(report_path)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(report_path.read_text())
    assert {"model", "data", "mean", "per_image"} <= set(report)
    assert report["model"] == "blobnet"
    assert set(report["mean"]) <= set(METRIC_KEYS) and "f1" in report["mean"]
    assert all(k == k.lower() for k in report["mean"])
    assert [row["id"] for row in report["per_image"]] == [f"img{i}" for i in range(6)]
    assert "mean" in captured.out and "img0" in captured.out


def test_evaluate_missing_data(tmp_path, tiny_model_path, capsys):
    rc = main(["evaluate", "--data", str(tmp_path / "nope"), "--model", str(tiny_model_path)])
    captured = capsys.readouterr()
    assert rc == 2 and "data folder not found" in captured.err and _no_traceback(captured.err)


# --------------------------------------------------------------------------- train / parser


def test_train_command(blob_dataset, tmp_path, capsys):
    out = tmp_path / "cli_model"
    rc = main(["train", "--data", str(blob_dataset), "-o", str(out), "--epochs", "1", "--steps-per-epoch", "3",
               "--batch-size", "2", "--patch-size", "64", "--device", "cpu", "--lr", "3e-3"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    model = load_model(out)
    assert model.card.name == "cli_model" and model.card.training["steps"] == 3
    assert "saved" in captured.out


def test_parser_errors_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["segment", "x.png"])  # -o is required
    assert exc.value.code == 2
    assert "--output" in capsys.readouterr().err


def test_demo_headless_segments_the_bundled_sample(tmp_path, capsys, monkeypatch, tiny_model_path):
    """`napari-minenet demo` without a display: labels + overlay of the bundled sample."""
    from napari_minenet.cli import main

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    rc = main(["demo", "-o", str(tmp_path / "demo"), "--model", str(tiny_model_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "headlessly" in out and "ihc.png" in out
    labels = tifffile.imread(tmp_path / "demo" / "ihc_labels.tif")
    assert labels.shape == (512, 512) and labels.dtype == np.uint32
    assert (tmp_path / "demo" / "ihc_overlay.png").is_file()
