"""ONNX export: ONNX Runtime gives the same probabilities as PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from napari_minenet.cli import main  # noqa: E402
from napari_minenet.export import export_onnx  # noqa: E402
from napari_minenet.inference import predict_tiled  # noqa: E402
from napari_minenet.zoo import ModelCard, SegmentationModel, save_model  # noqa: E402


def _model(**card) -> SegmentationModel:
    torch.manual_seed(1)
    model = SegmentationModel.new(ModelCard(name="exp", task="nuclei", out_channels=2, **card))
    # non-trivial BatchNorm parameters and statistics so the comparison means something
    for m in model.network.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model


def _run(path, image: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = (image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
    return session.run(["probability"], {"image": x})[0][0]


@pytest.mark.parametrize("statistics, prior", [("image", 0.0), ("image", 0.3), ("running", 0.0)])
def test_onnx_matches_pytorch(tmp_path, statistics, prior):
    model = _model(bn_statistics=statistics, bn_prior=prior)
    path = export_onnx(model, tmp_path / "m.onnx")
    image = (np.random.default_rng(0).random((96, 132, 3)) * 255).astype(np.uint8)
    expected = predict_tiled(image, model, device="cpu", precision="fp32")  # whole image in one tile
    got = _run(path, image)
    assert got.shape == expected.shape == (2, 96, 132)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    if prior:  # the prior changes the prediction, so the export had to follow it
        plain = predict_tiled(image, _model(bn_statistics=statistics), device="cpu", precision="fp32")
        assert np.abs(plain - expected).max() > 1e-3
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["name"] == "exp" and "onnx" in card


def test_export_cli(tmp_path, capsys):
    model = _model()
    save_model(model, tmp_path / "exp")
    assert main(["export", "--model", str(tmp_path / "exp.safetensors"), "-o", str(tmp_path / "out.onnx")]) == 0
    assert (tmp_path / "out.onnx").is_file() and (tmp_path / "out.json").is_file()
    assert "wrote" in capsys.readouterr().out


def test_export_runs_the_networks_own_forward(monkeypatch, tmp_path):
    """The exported graph is the network's forward (no copy of its layers in export.py): a
    change to MiniNet.forward_padded reaches the ONNX file."""

    from napari_minenet.model import MiniNet

    torch.manual_seed(0)
    model = SegmentationModel.new(ModelCard(name="fwd", task="nuclei", out_channels=2, bn_statistics="running"))
    real = MiniNet.forward_padded
    monkeypatch.setattr(MiniNet, "forward_padded", lambda self, x: real(self, x) * 0.0 - 3.0)
    path = export_onnx(model, tmp_path / "fwd.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)})[0]
    np.testing.assert_allclose(out, 1 / (1 + np.exp(3.0)), rtol=1e-5)
