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
    ("bn_prior", 1.0, "bn_prior"),
    ("bn_prior", -0.1, "bn_prior"),
    ("bn_prior", "0.2", "bn_prior"),
    ("pixel_size_um", 0, "pixel_size_um"),
    ("pixel_size_um", -0.25, "pixel_size_um"),
    ("pixel_size_um", 300.0, "pixel_size_um"),  # 72 dpi is not a microscope's pixel
    ("pixel_size_um", "0.25", "pixel_size_um"),
    ("pixel_size_um", float("nan"), "pixel_size_um"),
    ("pixel_size_um", True, "pixel_size_um"),
    ("object_diameter_px", 0.5, "object_diameter_px"),
    ("object_diameter_px", "20", "object_diameter_px"),
    ("object_width_px", float("inf"), "object_width_px"),
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
        save_model(_new_model(tiny_card, seed=1), folder / "m", overwrite=True)
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
        save_model(_new_model(tiny_card, seed=1), folder / "m", overwrite=True)
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
        save_model(_new_model(tiny_card, seed=1), folder / "m", overwrite=True)
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


# --------------------------------------------------------------------------- card validation


def _edit_card(weights: Path, **changes) -> None:
    card = _card_path(weights)
    data = json.loads(card.read_text())
    data.update(changes)
    card.write_text(json.dumps(data))


BAD_FIELDS = [
    ("default_threshold", "x", "default_threshold must be a number from 0 to 1"),
    ("default_threshold", 1.5, "default_threshold must be a number from 0 to 1"),
    ("normalization", None, "normalization must be a mapping"),
    ("normalization", {"mean": [0.5] * 3, "std": [0, 0, 0]}, "std must be positive"),
    ("normalization", {"mean": [0.5] * 3, "std": ["a"]}, "std must be a list of numbers"),
    ("architecture", "MiniNet", "architecture must be a mapping"),
    ("architecture", {"name": "MiniNet", "width": -1}, "width must be an integer from 1 to 64"),
    ("architecture", {"name": "MiniNet", "width": 100000}, "width must be an integer from 1 to 64"),
    ("working_long_side", "512", "working_long_side must be null or an integer"),
    ("working_long_side", 10**6, "working_long_side must be null or an integer"),
    ("tile_size", 100000, "tile_size must be an integer from 32 to 4096"),
    ("tile_overlap", 4000, "tile_overlap must be"),
    ("in_channels", True, "in_channels must be 1 or 3"),
    ("instances", "yes", "instances must be true or false"),
    ("min_size", -3, "min_size must be an integer >= 0"),
    ("test_time_augmentation", 3, "test_time_augmentation must be 1, 2, 4 or 8"),
    ("created", 5, "created must be a string"),
    ("metrics", [1], "metrics must be a mapping"),
    ("parent", 7, "parent must be null or a string"),
    ("name", None, "name must be a string"),
]


@pytest.mark.parametrize("field,value,message", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS])
def test_a_card_with_a_bad_field_is_refused_in_one_line(tiny_model_path, field, value, message):
    _edit_card(tiny_model_path, **{field: value})
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(tiny_model_path)
    assert "\n" not in str(info.value) and "is invalid" in str(info.value)


@pytest.mark.parametrize("name", ["../../somewhere/x", "/abs/path/x", "a/b", "a\\b", "..", "", " ", ".hidden",
                                  "x" * 200, "tab\there", "trailing."])
def test_model_names_must_be_plain_file_names(name):
    with pytest.raises(ValueError, match="name"):
        ModelCard(name=name)
    with pytest.raises(ValueError, match="name"):
        zoo.check_model_name(name)


@pytest.mark.parametrize("name", ["nuclei", "nuclei-ft-20260101-101010", "My model (v2)", "Kerne_HE.2", "核"])
def test_reasonable_model_names_are_accepted(name):
    assert ModelCard(name=name).name == name


def test_a_card_named_like_a_path_cannot_steer_where_models_are_written(tiny_model_path, tiny_card, user_home):
    _edit_card(tiny_model_path, name="../../somewhere/x")
    with pytest.raises(ModelLoadError, match="not a plain file name"):
        load_model(tiny_model_path)
    model = _new_model(tiny_card)
    model.card.name = "/abs/path/x"  # set after construction: save_model checks again
    with pytest.raises(ValueError, match="not a plain file name"):
        save_model(model, user_models_dir(create=True) / "ok")
    assert list(user_models_dir().iterdir()) == []


# --------------------------------------------------------------------------- overwriting, weights checks


def test_save_model_never_overwrites_an_existing_model(tiny_card, tmp_path):
    first = save_model(_new_model(tiny_card, seed=0), tmp_path / "m")
    before = first.read_bytes(), _card_path(first).read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        save_model(_new_model(tiny_card, seed=1), tmp_path / "m")
    assert (first.read_bytes(), _card_path(first).read_bytes()) == before
    save_model(_new_model(tiny_card, seed=1), tmp_path / "m", overwrite=True)
    assert first.read_bytes() != before[0]


def _rewrite_tensors(weights: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    change(state)
    save_file(state, str(weights))  # no embedded card
    _drop_checksum(weights)


def test_nan_weights_are_refused(tiny_model_path):
    _rewrite_tensors(tiny_model_path, lambda s: s["stem.conv.weight"].view(-1).__setitem__(0, float("nan")))
    with pytest.raises(ModelLoadError, match="'stem.conv.weight' contains NaN"):
        load_model(tiny_model_path)


def test_integer_weights_are_refused(tiny_model_path):
    def to_int(state):
        state["stem.conv.weight"] = state["stem.conv.weight"].to(torch.int32)

    _rewrite_tensors(tiny_model_path, to_int)
    with pytest.raises(ModelLoadError, match="'stem.conv.weight' has dtype int32; expected floating point"):
        load_model(tiny_model_path)


def test_save_refuses_nan_weights(tiny_card, tmp_path):
    model = _new_model(tiny_card)
    with torch.no_grad():
        model.network.stem.conv.weight.view(-1)[0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        save_model(model, tmp_path / "m")
    assert not tmp_path.joinpath("m.safetensors").exists()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".pkl"])
def test_pickled_pytorch_files_are_refused_with_the_reason(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    path.write_bytes(pickle.dumps({"a": 1}))
    for given in (path, f"x{suffix}"):
        with pytest.raises(ModelLoadError, match="pickled PyTorch files .* can run arbitrary code.*\\.safetensors"):
            load_model(given)


# --------------------------------------------------------------------------- listing survives bad cards


@pytest.mark.parametrize("change", [{"created": 5}, {"metrics": [1]}, {"name": None}, {"architecture": "MiniNet"}])
def test_one_bad_user_card_does_not_break_the_registry(tiny_card, change):
    folder = user_models_dir(create=True)
    save_model(_new_model(tiny_card, name="good", created="2024-01-01T00:00:00+00:00"), folder / "good")
    bad = save_model(_new_model(tiny_card, name="bad"), folder / "bad")
    _edit_card(bad, **change)
    with pytest.warns(zoo.ModelCardWarning, match="skipping model .*bad.safetensors"):
        models = list_models()
    names = [m.name for m in models]
    assert names[:3] == ["nuclei", "vessels", "lesion"] and "good" in names and "bad" not in names
    with pytest.warns(zoo.ModelCardWarning):
        assert load_model("nuclei").card.name == "nuclei"  # a built-in always works
        assert resolve_model_path("good") == folder / "good.safetensors"


def test_weights_without_their_card_are_listed_from_the_card_inside(tiny_card):
    """A kill between the weights and the card write leaves a complete weights file."""
    folder = user_models_dir(create=True)
    weights = save_model(_new_model(tiny_card, name="orphan"), folder / "orphan")
    _card_path(weights).unlink()
    (info,) = [m for m in list_models() if m.source == "user"]
    assert info.name == "orphan" and info.path == weights
    assert load_model("orphan").card.name == "orphan"


def test_new_weights_beside_an_old_card_are_listed_with_their_own_card(tiny_card):
    folder = user_models_dir(create=True)
    weights = save_model(_new_model(tiny_card, name="m", created="2024-01-01T00:00:00+00:00"), folder / "m")
    old_card = _card_path(weights).read_bytes()
    save_model(_new_model(tiny_card, seed=1, name="m", created="2025-06-01T00:00:00+00:00"), folder / "m",
               overwrite=True)
    _card_path(weights).write_bytes(old_card)  # as if killed before the card was renamed
    (info,) = [m for m in list_models() if m.source == "user"]
    assert info.created == "2025-06-01T00:00:00+00:00"
    assert load_model(weights).card.created == info.created


def test_weights_with_no_card_anywhere_are_reported(tiny_model_path):
    from safetensors.torch import load_file, save_file

    folder = user_models_dir(create=True)
    save_file(load_file(str(tiny_model_path)), str(folder / "plain.safetensors"))
    with pytest.warns(zoo.ModelCardWarning, match="plain.safetensors: no model card"):
        assert [m for m in list_models() if m.source == "user"] == []


def test_stale_temporary_files_are_removed_on_listing_and_saving(tiny_card, tmp_path):
    folder = user_models_dir(create=True)
    stale = folder / ".m.safetensors.abc123.tmp"
    fresh = folder / ".m.json.def456.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"half a file")
    two_hours_ago = os.path.getmtime(stale) - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    list_models()
    assert not stale.exists() and fresh.exists()  # a young one may be a write in progress
    other = tmp_path / "elsewhere"
    other.mkdir()
    old = other / ".x.safetensors.zzz.tmp"
    old.write_bytes(b"x")
    os.utime(old, (two_hours_ago, two_hours_ago))
    save_model(_new_model(tiny_card), other / "x")
    assert not old.exists()


def test_pixel_size_fields_are_optional_and_old_cards_still_load(tiny_model_path):
    card = ModelCard(name="p", task="nuclei", pixel_size_um=0.5, object_diameter_px=19.6, object_width_px=27.7)
    assert ModelCard.from_dict(card.to_dict()).pixel_size_um == 0.5
    card_path = tiny_model_path.with_suffix(".json")
    data = json.loads(card_path.read_text())
    for key in ("pixel_size_um", "object_diameter_px", "object_width_px"):
        data.pop(key, None)  # a card written before these fields existed
    card_path.write_text(json.dumps(data))
    old = load_model(tiny_model_path)
    assert old.card.pixel_size_um is None and old.card.object_diameter_px is None


def test_builtin_cards_record_their_pixel_size_or_say_why_not():
    nuclei = load_model("nuclei").card
    assert nuclei.pixel_size_um == pytest.approx(0.25) and 15 <= nuclei.object_diameter_px <= 25
    assert "0.25 um" in nuclei.description and "Kumar" in nuclei.description
    for name in ("vessels", "lesion"):
        card = load_model(name).card
        assert card.pixel_size_um is None and card.object_diameter_px is None
        assert "No pixel size" in card.description
