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


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_segment_precision_reaches_the_network(blobs_png, trained_model_path, tmp_path, monkeypatch, precision):
    """``--precision`` is what segment() gets; a precision it does not know is a usage error."""
    import napari_minenet.segmentation as segmentation

    seen = []
    real = segmentation.segment
    monkeypatch.setattr(segmentation, "segment", lambda *a, **k: seen.append(k.get("precision")) or real(*a, **k))
    path, _ = blobs_png
    out = tmp_path / precision
    rc = main(["segment", str(path), "-o", str(out), "--model", str(trained_model_path), "--device", "cpu",
               "--precision", precision, "--save-probability"])
    assert rc == 0 and seen == [precision]
    prob = tifffile.imread(out / "blobs_probability.tif")
    assert 0.0 <= prob.min() <= prob.max() <= 1.0
    with pytest.raises(SystemExit):
        main(["segment", str(path), "-o", str(out), "--precision", "fp64"])


@pytest.mark.parametrize("save_probability", [False, True])
def test_segment_of_a_huge_image_streams_unless_the_probability_is_saved(blobs_png, trained_model_path, tmp_path,
                                                                         monkeypatch, save_probability):
    """Above LARGE_IMAGE_PIXELS segment() keeps no maps; --save-probability asks for them."""
    import napari_minenet.segmentation as segmentation

    monkeypatch.setattr(segmentation, "LARGE_IMAGE_PIXELS", 1000)
    path, truth = blobs_png
    out = tmp_path / "out"
    rc = main(["segment", str(path), "-o", str(out), "--model", str(trained_model_path), "--instances",
               "--device", "cpu", "--overlay"] + (["--save-probability"] if save_probability else []))
    assert rc == 0
    labels = tifffile.imread(out / "blobs_labels.tif")
    assert abs(int(labels.max()) - int(truth.max())) <= 2
    assert (out / "blobs_probability.tif").exists() == save_probability


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
               "--instances", "--device", "cpu", "--allow-grey"])  # grey planes, a colour model
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "warning: model 'blobnet' was trained on colour (RGB) images but this image is grey" in captured.err
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


# --------------------------------------------------------------------------- help, bench, exit codes


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from napari_minenet.cli import build_parser\n"
        "for argv in (['--help'], ['segment', '--help']):\n"
        "    try:\n"
        "        build_parser().parse_args(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().endswith("NO-TORCH")
    assert "segment" in proc.stdout and "--tile" in proc.stdout


@pytest.mark.parametrize("argv", [["bench", "--quick", "--only", "throughput"],
                                  ["bench", "--", "--quick", "--only", "throughput"]])
def test_bench_passes_its_options_to_run_all(monkeypatch, argv):
    import subprocess

    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, **kw: calls.append((cmd, kw)) or 0)
    assert main(argv) == 0
    (cmd, kw), = calls
    assert cmd[1].endswith("run_all.py")
    assert cmd[2:] == ["--quick", "--only", "throughput"]
    assert kw["env"]["NAPARI_MINENET_BENCH_PROG"] == "napari-minenet bench"


def test_bench_help_lists_the_benchmark_options(capfd):
    assert main(["bench", "--help"]) == 0
    out = capfd.readouterr().out
    assert out.startswith("usage: napari-minenet bench")
    for option in ("--quick", "--only", "--out-dir", "--threads", "--report-only"):
        assert option in out


def test_top_level_help_names_the_bench_options_and_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--quick" in out and "exit codes:" in out


def test_finetune_help_documents_exit_code_3(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["finetune", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "3    finetune: the new version did not beat the current model" in out
    assert "(default 60" in out  # defaults still come from FinetuneConfig


def test_readme_documents_exit_codes_and_limits():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Exit codes and limits", 1)[1].split("\n## ", 1)[0]
    for text in ("| 3 |", "| 2 |", "NAPARI_MINENET_MAX_IMAGE_PIXELS", "1,000,000,000", "4096"):
        assert text in section


# --------------------------------------------------------------------------- bad arguments: one line each


@pytest.mark.parametrize("argv,message", [
    (["finetune", "--model", "m", "--data", "d", "--lr", "nan"], "--lr: nan is not a finite number"),
    (["finetune", "--model", "m", "--data", "d", "--lr", "-1"], "--lr: -1 must be greater than 0"),
    (["finetune", "--model", "m", "--data", "d", "--batch-size", "0"], "--batch-size: 0 is out of range"),
    (["finetune", "--model", "m", "--data", "d", "--max-seconds", "nan"], "--max-seconds: nan is not a finite"),
    (["finetune", "--model", "m", "--data", "d", "--max-seconds", "-5"], "--max-seconds: -5 must be greater than 0"),
    (["segment", "a.png", "-o", "out", "--tile", "0"], "--tile: 0 is out of range: use 32 to 4096"),
    (["segment", "a.png", "-o", "out", "--tile", "100000"], "--tile: 100000 is out of range: use 32 to 4096"),
    (["segment", "a.png", "-o", "out", "--threshold", "2"], "--threshold: 2 is out of range"),
    (["segment", "a.png", "-o", "out", "--bogus"], "unrecognized arguments: --bogus"),
    (["segment", "a.png", "-o", "out", "--pixel-size", "0"], "--pixel-size: 0 is out of range: use 0.02 to 50"),
    (["segment", "a.png", "-o", "out", "--pixel-size", "big"], "--pixel-size: 'big' is not a number"),
    (["train", "--data", "d", "-o", "o", "--epochs", "0"], "--epochs: 0 is below 1"),
])
def test_bad_arguments_give_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and _no_traceback(err)


# --------------------------------------------------------------------------- segment: outputs, progress, grey


def test_segment_progress_shows_the_total_from_the_first_line(blobs_png, tiny_model_path, tmp_path, capsys):
    path, _ = blobs_png
    rc = main(["segment", str(path), "-o", str(tmp_path / "out"), "--model", str(tiny_model_path),
               "--device", "cpu", "--tile", "128"])
    err = capsys.readouterr().err
    assert rc == 0, err
    first = next(part for part in err.replace("\r", "\n").splitlines() if part.strip())
    assert "0tile [" not in err  # the old first line: "blobs.png: 0tile [00:00, ?tile/s]"
    import re

    assert re.search(r"\b0/(\d+) \[00:00<", first), first


def test_segment_inputs_with_the_same_stem_get_distinct_outputs(tmp_path, make_blobs, tiny_model_path, capsys):
    image, _ = make_blobs(64, seed=3)
    (tmp_path / "in").mkdir()
    iio.imwrite(tmp_path / "in" / "a.png", image)
    tifffile.imwrite(tmp_path / "in" / "a.tif", image[::-1].copy(), photometric="rgb")
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "in" / "a.png"), str(tmp_path / "in" / "a.tif"), "-o", str(out),
            "--model", str(tiny_model_path), "--device", "cpu"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert (out / "a_png_labels.tif").is_file() and (out / "a_tif_labels.tif").is_file()
    assert not (out / "a_labels.tif").exists()
    assert "replaced" not in captured.out
    assert main(argv) == 0  # a second run into the same folder says that it replaced its outputs
    assert captured.out.count("\n") == 2 and capsys.readouterr().out.count("replaced the earlier output") == 2


def test_segment_refuses_a_grey_image_for_a_colour_model(tmp_path, make_blobs, tiny_model_path, capsys):
    grey = make_blobs(64, seed=3, rgb=False)[0]
    iio.imwrite(tmp_path / "grey.png", grey)
    out = tmp_path / "out"
    rc = main(["segment", str(tmp_path / "grey.png"), "-o", str(out), "--model", str(tiny_model_path),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1
    line = next(line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:"))
    assert "trained on colour (RGB) images but this image is grey" in line and "--allow-grey" in line
    assert not list(out.glob("*.tif")) and _no_traceback(err)
    assert main(["segment", str(tmp_path / "grey.png"), "-o", str(out), "--model", str(tiny_model_path),
                 "--device", "cpu", "--allow-grey"]) == 0
    assert "warning: model 'tiny' was trained on colour" in capsys.readouterr().err


def test_segment_into_an_existing_file(blobs_png, tiny_model_path, tmp_path, capsys):
    path, _ = blobs_png
    target = tmp_path / "out.txt"
    target.write_text("keep me")
    rc = main(["segment", str(path), "-o", str(target), "--model", str(tiny_model_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "is a file, not a folder" in err
    assert len(err.strip().splitlines()) == 1 and _no_traceback(err)
    assert target.read_text() == "keep me"


def test_segment_removes_stale_temporary_files_in_the_output(blobs_png, tiny_model_path, tmp_path, capsys):
    import os

    path, _ = blobs_png
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".blobs_labels.tif.x1y2z3.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (stale.stat().st_mtime - 7200,) * 2)
    assert main(["segment", str(path), "-o", str(out), "--model", str(tiny_model_path), "--device", "cpu"]) == 0
    assert not stale.exists()


# --------------------------------------------------------------------------- models and cards: one line each


@pytest.mark.parametrize("change", [{"default_threshold": "x"}, {"normalization": None},
                                    {"architecture": "MiniNet"}, {"architecture": {"name": "MiniNet", "width": -1}},
                                    {"architecture": {"name": "MiniNet", "width": 100000}},
                                    {"working_long_side": "512"}, {"working_long_side": 10**6},
                                    {"normalization": {"mean": [0.5] * 3, "std": [0, 0, 0]}}])
def test_segment_with_a_bad_card_gives_one_line(blobs_png, tiny_model_path, tmp_path, capsys, change):
    card = tiny_model_path.with_suffix(".json")
    data = json.loads(card.read_text())
    data.update(change)
    card.write_text(json.dumps(data))
    path, _ = blobs_png
    rc = main(["segment", str(path), "-o", str(tmp_path / "out"), "--model", str(tiny_model_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "is invalid" in err
    assert len(err.strip().splitlines()) == 1 and _no_traceback(err)


@pytest.mark.parametrize("change", [{"created": 5}, {"metrics": [1]}, {"name": None}])
def test_models_skips_a_bad_user_card_with_a_warning(tiny_model, capsys, change):
    weights = save_model(tiny_model, user_models_dir(create=True) / "tiny")
    data = json.loads(weights.with_suffix(".json").read_text())
    data.update(change)
    weights.with_suffix(".json").write_text(json.dumps(data))
    assert main(["models"]) == 0
    captured = capsys.readouterr()
    names = [line.split()[0] for line in captured.out.splitlines() if line.strip()]
    assert {"nuclei", "vessels", "lesion"} <= set(names) and "tiny" not in names
    warning_lines = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warning_lines) == 1 and "tiny.safetensors" in warning_lines[0]
    assert _no_traceback(captured.err)


def test_a_pickled_model_file_is_refused_with_the_reason(blobs_png, tmp_path, capsys):
    path, _ = blobs_png
    (tmp_path / "x.pt").write_bytes(b"\x80\x04K\x01.")
    rc = main(["segment", str(path), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and "pickled PyTorch files" in err and "arbitrary code" in err and ".safetensors" in err
    assert "x.pt.safetensors" not in err


def test_finetune_refuses_an_existing_output_before_training(blob_dataset, tiny_model_path, tmp_path, capsys):
    before = tiny_model_path.read_bytes()
    rc = main(["finetune", "--model", str(tiny_model_path), "--data", str(blob_dataset), "-o",
               str(tiny_model_path), "--max-seconds", "5"])
    err = capsys.readouterr().err
    assert rc == 2 and "already exists" in err and _no_traceback(err)
    assert tiny_model_path.read_bytes() == before


def test_train_refuses_float_labels_in_one_line(tmp_path, make_blobs, capsys):
    for sub in ("images", "labels"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    image, labels = make_blobs(64, seed=1)
    iio.imwrite(tmp_path / "d" / "images" / "a.png", image)
    tifffile.imwrite(tmp_path / "d" / "labels" / "a.tif", labels.astype(np.float32))
    rc = main(["train", "--data", str(tmp_path / "d"), "-o", str(tmp_path / "m"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "expected integers" in err
    assert len(err.strip().splitlines()) == 1 and _no_traceback(err)


# --------------------------------------------------------------------------- pixel size


def _blob_model_with_pixel_size(trained_model_path, tmp_path, **fields):
    """The blob model (one label per blob) with a training pixel size, saved as a new model."""
    import dataclasses

    model = load_model(trained_model_path)
    model.card = dataclasses.replace(model.card, name="blobs_um", instances=True, **fields)
    return save_model(model, tmp_path / "models" / "blobs_um")


def test_segment_pixel_size_resamples_and_measures_in_um(blobs_png, trained_model_path, tmp_path, capsys):
    path, truth = blobs_png
    model = _blob_model_with_pixel_size(trained_model_path, tmp_path, pixel_size_um=0.5)
    out = tmp_path / "out"
    rc = main(["segment", str(path), "-o", str(out), "--model", str(model), "--device", "cpu",
               "--pixel-size", "0.5", "--measurements", "--no-overlay"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "um^2" in captured.out and "[0.5 um/px]" in captured.out
    header = (out / "blobs_measurements.csv").read_text().splitlines()[0].split(",")
    assert "area_um2" in header and "perimeter_um" in header and "area" in header
    labels = tifffile.imread(out / "blobs_labels.tif")
    from napari_minenet.pixel_size import read_pixel_size

    assert read_pixel_size(out / "blobs_labels.tif") == pytest.approx(0.5)  # the labels keep the pixel size
    # twice as coarse as the model: enlarged 2x for the network, labels back on the image's grid
    rc = main(["segment", str(path), "-o", str(tmp_path / "coarse"), "--model", str(model), "--device", "cpu",
               "--pixel-size", "1.0", "--no-overlay"])
    coarse = tifffile.imread(tmp_path / "coarse" / "blobs_labels.tif")
    assert rc == 0 and coarse.shape == labels.shape == truth.shape
    assert abs(int(coarse.max()) - int(labels.max())) <= 3


def test_segment_pixel_size_auto_reads_the_file(tmp_path, make_blobs, trained_model_path, capsys):
    image, _ = make_blobs((96, 96), seed=22)
    path = tmp_path / "res.tif"
    tifffile.imwrite(path, image, photometric="rgb", resolution=(20_000, 20_000), resolutionunit="CENTIMETER")
    model = _blob_model_with_pixel_size(trained_model_path, tmp_path, pixel_size_um=0.5)
    rc = main(["segment", str(path), "-o", str(tmp_path / "out"), "--model", str(model), "--device", "cpu",
               "--measurements"])  # --pixel-size auto is the default: 0.5 um from the resolution tags
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "[0.5 um/px]" in captured.out
    assert "area_um2" in (tmp_path / "out" / "res_measurements.csv").read_text().splitlines()[0]


def test_segment_pixel_size_auto_without_metadata_estimates(blobs_png, trained_model_path, tmp_path, capsys):
    path, _ = blobs_png
    model = _blob_model_with_pixel_size(trained_model_path, tmp_path, pixel_size_um=0.5, object_diameter_px=14.0)
    rc = main(["segment", str(path), "-o", str(tmp_path / "out"), "--model", str(model), "--device", "cpu",
               "--measurements"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "pixel size unknown; size: objects" in captured.out
    assert "area_um2" not in (tmp_path / "out" / "blobs_measurements.csv").read_text()  # no pixel size, no um


def test_debug_shows_the_fallbacks_the_modules_log(tmp_path, monkeypatch, capsys):
    """NAPARI_MINENET_DEBUG=1 turns on the package's loggers (the fallbacks they report)."""
    import logging

    from napari_minenet.cli import main

    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"not a tiff")
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # basicConfig installs a fresh handler on stderr
    monkeypatch.setattr(root, "level", logging.WARNING)
    code = main(["segment", str(broken), "-o", str(tmp_path / "out")])
    assert code == 1 and "DEBUG" not in capsys.readouterr().err  # quiet by default
    monkeypatch.setenv("NAPARI_MINENET_DEBUG", "1")
    code = main(["segment", str(broken), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "DEBUG napari_minenet.slides: " in err and "is not a slide" in err
