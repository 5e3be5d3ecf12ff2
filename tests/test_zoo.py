"""Model cards, weights I/O (safetensors + JSON, atomic, no pickle) and the registry."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_minenet import zoo
from napari_minenet.inference import predict_tiled
from napari_minenet.zoo import (
    ModelCard,
    ModelLoadError,
    SegmentationModel,
    list_models,
    load_model,
    resolve_model_path,
    save_model,
    user_models_dir,
)


def _new_model(tiny_card, seed: int = 0, **card) -> SegmentationModel:
    torch.manual_seed(seed)
    return SegmentationModel.new(tiny_card(**card))


def _card_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


# --------------------------------------------------------------------------- cards


def test_card_defaults_come_from_the_task():
    card = ModelCard(name="n", task="nuclei", out_channels=2)
    assert card.display_name == "Nuclei (H&E)"
    assert card.button_text == "Segment nuclei"
    assert card.has_contours
    assert ModelCard(name="v", task="vessels").display_name == "Retinal vessels"
    assert not ModelCard(name="c").has_contours


@pytest.mark.parametrize("field,value,message", [
    ("in_channels", 2, "in_channels"),
    ("out_channels", 3, "out_channels"),
    ("bn_statistics", "batch", "bn_statistics"),
])
def test_card_rejects_invalid_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        ModelCard(name="x", **{field: value})


def test_card_dict_roundtrip_ignores_unknown_keys():
    card = ModelCard(name="x", task="lesion", min_size=7, metrics={"validation": {"f1": 0.9}})
    data = card.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON-serialisable
    data["added_in_a_future_version"] = 1
    assert ModelCard.from_dict(data) == card
    with pytest.raises(ValueError, match="name"):
        ModelCard.from_dict({"task": "nuclei"})
    with pytest.raises(ValueError):
        ModelCard.from_dict(["not", "a", "dict"])


# --------------------------------------------------------------------------- save / load


def test_save_load_roundtrip_gives_identical_outputs(tiny_card, tmp_path, make_blobs):
    model = _new_model(tiny_card)
    # make BN statistics non-trivial so that they must be saved too
    for m in model.network.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    weights = save_model(model, tmp_path / "m")
    assert weights == tmp_path / "m.safetensors"
    assert weights.is_file() and (tmp_path / "m.json").is_file()
    loaded = load_model(weights)
    assert loaded.path == weights
    assert loaded.card == model.card
    assert loaded.card.weights_sha256 and loaded.card.created and loaded.card.package_version
    assert not loaded.network.training
    x = torch.randn(1, 3, 40, 44)
    with torch.no_grad():
        np.testing.assert_array_equal(model.network.eval()(x).numpy(), loaded.network(x).numpy())
    image, _ = make_blobs(64, seed=1)
    np.testing.assert_array_equal(predict_tiled(image, model, device="cpu"),
                                  predict_tiled(image, loaded, device="cpu"))


def test_card_file_is_readable_json(tiny_model_path):
    data = json.loads(_card_path(tiny_model_path).read_text(encoding="utf-8"))
    assert data["name"] == "tiny" and data["task"] == "nuclei"
    assert data["in_channels"] == 3 and data["out_channels"] == 2
    assert len(data["weights_sha256"]) == 64


@pytest.mark.parametrize("form", ["stem", "safetensors", "json", "str", "folder"])
def test_load_by_path_in_every_form(tiny_model_path, form):
    stem = tiny_model_path.with_suffix("")
    arg = {
        "stem": stem,
        "safetensors": tiny_model_path,
        "json": _card_path(tiny_model_path),
        "str": str(stem),
        "folder": tiny_model_path.parent,
    }[form]
    model = load_model(arg)
    assert model.card.name == "tiny"
    assert model.path == tiny_model_path


def test_load_model_passes_a_model_through(tiny_model):
    assert load_model(tiny_model) is tiny_model


def test_load_by_name_from_the_user_folder(tiny_card, user_home, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    model = _new_model(tiny_card, name="my-nuclei")
    weights = save_model(model, user_models_dir(create=True) / "my-nuclei")
    assert str(weights).startswith(str(user_home))
    loaded = load_model("my-nuclei")
    assert loaded.card.name == "my-nuclei"
    assert loaded.path == weights
    assert resolve_model_path("my-nuclei") == weights


def test_a_folder_in_the_working_directory_does_not_shadow_a_model_name(tiny_card, monkeypatch, tmp_path):
    save_model(_new_model(tiny_card, name="mymodel"), user_models_dir(create=True) / "mymodel")
    (tmp_path / "work" / "mymodel").mkdir(parents=True)  # e.g. the user's data folder
    monkeypatch.chdir(tmp_path / "work")
    assert load_model("mymodel").card.name == "mymodel"


def test_user_models_dir_follows_the_environment(user_home):
    assert user_models_dir() == user_home / "models"
    assert not user_models_dir().exists()
    assert user_models_dir(create=True).is_dir()


def test_list_models_finds_user_models_and_skips_checkpoints(tiny_card, user_home):
    folder = user_models_dir(create=True)
    save_model(_new_model(tiny_card, name="first", created="2024-01-01T00:00:00+00:00"), folder / "first")
    save_model(_new_model(tiny_card, name="second", created="2025-01-01T00:00:00+00:00", parent="first"),
               folder / "second")
    # a training checkpoint and an unrelated broken file are not models
    (folder / "first.ckpt.safetensors").write_bytes(b"checkpoint")
    (folder / "first.ckpt.json").write_text("{}")
    (folder / "broken.safetensors").write_bytes(b"x")
    (folder / "broken.json").write_text("{not json")
    user = [m for m in list_models() if m.source == "user"]
    assert [m.name for m in user] == ["first", "second"]  # oldest first
    assert user[1].parent == "first"
    assert user[0].path == folder / "first.safetensors"
    assert user[0].display_name == "Nuclei (H&E)" and user[0].task == "nuclei"


def test_list_models_with_an_empty_user_folder_has_no_user_models():
    assert [m for m in list_models() if m.source == "user"] == []


def test_loading_never_unpickles(tiny_model_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle-based loading was used")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    model = load_model(tiny_model_path)
    assert model.card.name == "tiny"
    # the weights file is a safetensors file: an 8-byte header length, then a JSON header
    raw = tiny_model_path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert "stem.conv.weight" in header


# --------------------------------------------------------------------------- atomic writes


def test_save_is_atomic_when_the_rename_fails(tiny_card, tmp_path, monkeypatch):
    folder = tmp_path / "models"
    weights = save_model(_new_model(tiny_card, seed=0), folder / "m")
    old_weights, old_card = weights.read_bytes(), _card_path(weights).read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_model(_new_model(tiny_card, seed=1), folder / "m")
    monkeypatch.undo()
    assert weights.read_bytes() == old_weights
    assert _card_path(weights).read_bytes() == old_card
    assert _no_temp_files(folder)
    assert load_model(weights).card.weights_sha256 == json.loads(old_card)["weights_sha256"]


def test_save_is_atomic_when_the_writer_fails_midway(tiny_card, tmp_path, monkeypatch):
    folder = tmp_path / "models"
    weights = save_model(_new_model(tiny_card, seed=0), folder / "m")
    old_weights = weights.read_bytes()

    def crash(fd):
        raise OSError("simulated crash while flushing")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_model(_new_model(tiny_card, seed=1), folder / "m")
    monkeypatch.undo()
    assert weights.read_bytes() == old_weights
    assert _no_temp_files(folder)
    load_model(weights)


def test_first_save_that_fails_leaves_nothing_behind(tiny_card, tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        save_model(_new_model(tiny_card), folder / "m")
    monkeypatch.undo()
    assert list(folder.iterdir()) == []


def test_a_crash_between_weights_and_card_keeps_a_loadable_model(tiny_card, tmp_path, monkeypatch):
    folder = tmp_path / "models"
    weights = save_model(_new_model(tiny_card, seed=0), folder / "m")
    real_replace = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second)
    with pytest.raises(OSError):
        save_model(_new_model(tiny_card, seed=1), folder / "m")
    monkeypatch.undo()
    load_model(weights)  # the old or the new model, but a model


# --------------------------------------------------------------------------- load errors


def test_truncated_weights_file(tiny_model_path):
    raw = tiny_model_path.read_bytes()
    tiny_model_path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelLoadError, match="damaged"):
        load_model(tiny_model_path)


def test_flipped_bytes_in_the_tensors_are_detected(tiny_model_path):
    raw = bytearray(tiny_model_path.read_bytes())
    raw[-100] ^= 0xFF  # inside the tensor data: still a valid safetensors file
    tiny_model_path.write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match="checksum differs"):
        load_model(tiny_model_path)


def _drop_checksum(weights: Path) -> None:
    card = _card_path(weights)
    data = json.loads(card.read_text())
    data["weights_sha256"] = ""
    card.write_text(json.dumps(data))


def test_truncated_weights_without_checksum(tiny_model_path):
    raw = tiny_model_path.read_bytes()
    tiny_model_path.write_bytes(raw[: len(raw) // 2])
    _drop_checksum(tiny_model_path)
    with pytest.raises(ModelLoadError, match="damaged or not a safetensors file"):
        load_model(tiny_model_path)


def test_garbage_weights_without_checksum(tiny_model_path):
    tiny_model_path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    _drop_checksum(tiny_model_path)
    with pytest.raises(ModelLoadError, match="damaged or not a safetensors file"):
        load_model(tiny_model_path)


def test_card_that_is_not_json(tiny_model_path):
    _card_path(tiny_model_path).write_text("this is { not json", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(tiny_model_path)


def test_card_with_binary_garbage(tiny_model_path):
    _card_path(tiny_model_path).write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(tiny_model_path)


def test_card_with_invalid_values(tiny_model_path):
    card = _card_path(tiny_model_path)
    data = json.loads(card.read_text())
    data["in_channels"] = 5
    card.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="invalid.*in_channels"):
        load_model(tiny_model_path)


def test_card_that_does_not_match_the_weights(tiny_model_path):
    """Weights of a 3-channel net, card says 1 channel: the checksum still matches."""
    card = _card_path(tiny_model_path)
    data = json.loads(card.read_text())
    data["in_channels"] = 1
    card.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=r"do not fit the architecture in its card \(1 in, 2 out\)"):
        load_model(tiny_model_path)


def test_card_with_unknown_architecture(tiny_model_path):
    card = _card_path(tiny_model_path)
    data = json.loads(card.read_text())
    data["architecture"] = {"name": "NoSuchNet"}
    card.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="unknown architecture 'NoSuchNet'"):
        load_model(tiny_model_path)


def test_missing_card_falls_back_to_the_card_inside_the_weights(tiny_model_path):
    _card_path(tiny_model_path).unlink()
    assert load_model(tiny_model_path).card.name == "tiny"


def test_missing_card_and_no_embedded_card(tiny_model_path):
    from safetensors.torch import load_file, save_file

    _card_path(tiny_model_path).unlink()
    save_file(load_file(str(tiny_model_path)), str(tiny_model_path))  # a plain safetensors file
    with pytest.raises(ModelLoadError, match="model card not found"):
        load_model(tiny_model_path)


def test_missing_weights_beside_a_card(tiny_model_path):
    tiny_model_path.unlink()
    with pytest.raises(ModelLoadError, match="model file not found"):
        load_model(tiny_model_path)


def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(ModelLoadError, match="model file not found"):
        load_model(tmp_path / "nowhere" / "model.safetensors")


def test_unknown_model_name():
    with pytest.raises(ModelLoadError, match=r"no model named 'definitely-not-a-model' \(available: "):
        load_model("definitely-not-a-model")


def test_empty_model_name():
    with pytest.raises(ModelLoadError, match="no model given"):
        load_model("")


def test_folder_with_several_models(tiny_card, tmp_path):
    save_model(_new_model(tiny_card, name="a"), tmp_path / "two" / "a")
    save_model(_new_model(tiny_card, name="b"), tmp_path / "two" / "b")
    with pytest.raises(ModelLoadError, match="folder with 2 models"):
        load_model(tmp_path / "two")


def test_model_load_error_is_exported():
    import napari_minenet

    assert napari_minenet.ModelLoadError is ModelLoadError
    assert zoo.ModelLoadError is ModelLoadError
