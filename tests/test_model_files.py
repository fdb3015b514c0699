"""Model files: weights + a plain JSON config, read with ``weights_only=True``; old (pickled) files
only with ``trusted=True``; damaged, foreign and wrong-class files refused with a clear error."""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_spatialdl._errors import InputError
from napari_spatialdl.models._base import (
    FILE_VERSION,
    MODEL_FORMAT,
    ModelFileError,
    SavableModel,
    registered_models,
)
from napari_spatialdl.models._train import run_to_end
from napari_spatialdl.models.annotation import CellTypeClassifier
from napari_spatialdl.models.deconvolution import SpotDeconvolution
from napari_spatialdl.models.impute import ImputeModel, default_config
from napari_spatialdl.models.integrate import IntegrationModel
from napari_spatialdl.models.integrate import default_config as vae_config

N_GENES = 16
GENES = [f"gene-{i}" for i in range(N_GENES)]
TYPES = ["B cell", "T cell", "macrophage"]


def _counts(rng: np.random.Generator, n: int, means: np.ndarray) -> np.ndarray:
    return rng.poisson(means[rng.integers(0, len(means), n)]).astype(np.float32)


@pytest.fixture(scope="module")
def models():
    """The four model wrappers, each fitted for a couple of epochs on small synthetic data,
    with a function giving its predictions."""
    rng = np.random.default_rng(0)
    profiles = rng.gamma(2.0, 3.0, size=(len(TYPES), N_GENES))
    X = _counts(rng, 48, profiles)
    out = {}

    torch.manual_seed(0)
    xy = rng.uniform(size=(48, 2))
    neighbours = np.argsort(((xy[:, None] - xy[None]) ** 2).sum(-1), axis=1)[:, 1:4]
    imp = ImputeModel(N_GENES, hidden=(12, 4, 12), likelihood="zinb", spatial=True, genes=GENES)
    run_to_end(imp.fit_iter(X, neighbours, default_config(max_epochs=2)))
    out["impute"] = (imp, lambda m: m.predict(X, neighbours))

    torch.manual_seed(0)
    batches = np.array(["run A", "run B"])[rng.integers(0, 2, 48)]
    vae = IntegrationModel(N_GENES, ["run A", "run B"], n_latent=3, n_hidden=8, genes=GENES)
    run_to_end(vae.fit_iter(X, vae.batch_codes(batches), vae_config(max_epochs=2), kl_warmup=1))
    vae.extra["batch_key"] = "sample"
    out["integrate"] = (vae, lambda m: m.latent(X, m.batch_codes(batches)))

    ref_labels = np.array(TYPES)[np.arange(60) % 3]
    ref = rng.poisson(profiles[np.arange(60) % 3]).astype(np.float32)
    spots = np.stack([rng.poisson(profiles.T @ rng.dirichlet(np.ones(3)) * 4) for _ in range(20)]).astype(np.float32)
    dec = SpotDeconvolution(GENES, TYPES, [f"spot {i}" for i in range(20)])
    run_to_end(dec.fit(spots, ref, ref_labels, max_epochs=3, device="cpu"))
    out["deconvolution"] = (dec, lambda m: np.concatenate([m.proportions().ravel(), m.abundance().ravel(),
                                                         m.signatures().ravel()]))

    clf = CellTypeClassifier(GENES, TYPES, n_hidden=8, n_members=2)
    run_to_end(clf.fit(ref, ref_labels, max_epochs=2, device="cpu"))
    out["annotation"] = (clf, lambda m: m.predict_proba(X))
    return out


KINDS = ["impute", "integrate", "deconvolution", "annotation"]


def _legacy_file(model: SavableModel, path: Path, **extra_entries) -> Path:
    """A model file as napari-spatialdl wrote it before format 2 (a pickled dict, read with weights_only=False)."""
    payload = {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "format_version": 1,
        "init_kwargs": model.init_kwargs,
        "extra": model.extra,
        "state_dict": {k: v.detach().cpu() for k, v in model.module.state_dict().items()},
        **extra_entries,
    }
    torch.save(payload, path)
    return path


class _Marker:
    """Pickles to a call that creates a file: proof of code run by unpickling."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# ----------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("kind", KINDS)
def test_save_load_reproduces_predictions_exactly(kind, models, tmp_path):
    model, predict = models[kind]
    path = model.save(tmp_path / f"{kind}.pt")
    assert path == tmp_path / f"{kind}.pt" and path.is_file()
    for loader in (type(model), SavableModel):  # the class itself, or the base picks it from the file
        loaded = loader.load(path)
        assert type(loaded) is type(model)
        assert not loaded.module.training
        np.testing.assert_array_equal(predict(loaded), predict(model))
        assert loaded.init_kwargs == model.init_kwargs
        assert loaded.extra == model.extra
    # nothing but the model file is left in the folder (the temporary file was renamed)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("kind", KINDS)
def test_file_is_plain_values_readable_with_weights_only(kind, models, tmp_path):
    model, _ = models[kind]
    path = model.save(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == MODEL_FORMAT and payload["version"] == FILE_VERSION == 2
    assert payload["class"] == type(model).__name__
    config = json.loads(payload["config_json"])
    assert config["init_kwargs"] == model.init_kwargs
    names = config["extra"].get("genes")
    assert names == GENES  # gene names are in the JSON config, not pickled
    assert all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())
    assert set(payload["state_dict"]) == set(model.module.state_dict())


def test_category_names_are_in_the_json_config(models, tmp_path):
    vae = torch.load(models["integrate"][0].save(tmp_path / "v.pt"), weights_only=True)
    assert json.loads(vae["config_json"])["init_kwargs"]["batches"] == ["run A", "run B"]
    assert json.loads(vae["config_json"])["extra"]["batch_key"] == "sample"
    clf = torch.load(models["annotation"][0].save(tmp_path / "c.pt"), weights_only=True)
    assert json.loads(clf["config_json"])["extra"]["classes"] == TYPES
    dec = torch.load(models["deconvolution"][0].save(tmp_path / "d.pt"), weights_only=True)
    assert json.loads(dec["config_json"])["extra"]["cell_types"] == TYPES


def test_arrays_and_numpy_scalars_in_the_config_round_trip(models, tmp_path):
    model, predict = models["impute"]
    copy = ImputeModel.build(dict(model.init_kwargs), dict(model.extra))
    copy.module.load_state_dict(model.module.state_dict())
    copy.extra.update(weights=np.arange(6, dtype=np.float64).reshape(2, 3), tensor=torch.tensor([1, 2, 3]),
                      labels=np.array(["a", "bb"]), score=np.float32(0.25), count=np.int64(7), flag=np.bool_(True),
                      missing=float("nan"), nested={"k": (1, 2.5, None)})
    path = copy.save(tmp_path / "arrays.pt")
    payload = torch.load(path, weights_only=True)
    assert set(payload["arrays"]) == {"extra['weights']", "extra['tensor']"}
    loaded = ImputeModel.load(path)
    e = loaded.extra
    assert isinstance(e["weights"], np.ndarray) and e["weights"].dtype == np.float64
    np.testing.assert_array_equal(e["weights"], copy.extra["weights"])
    assert isinstance(e["tensor"], torch.Tensor) and torch.equal(e["tensor"], torch.tensor([1, 2, 3]))
    np.testing.assert_array_equal(e["labels"], ["a", "bb"])
    assert e["score"] == 0.25 and type(e["score"]) is float
    assert e["count"] == 7 and type(e["count"]) is int and e["flag"] is True
    assert np.isnan(e["missing"]) and e["nested"] == {"k": [1, 2.5, None]}
    np.testing.assert_array_equal(predict(loaded), predict(model))


def test_unsavable_config_value_is_refused_at_save_and_keeps_the_old_file(models, tmp_path):
    model, _ = models["impute"]
    path = model.save(tmp_path / "m.pt")
    before = path.read_bytes()
    bad = ImputeModel.build(dict(model.init_kwargs), dict(model.extra))
    bad.extra["callback"] = print
    with pytest.raises(TypeError, match=r"extra\['callback'\] is a builtins.builtin_function_or_method"):
        bad.save(path)
    bad.extra["callback"] = {1: "int key"}
    with pytest.raises(TypeError, match="str keys only"):
        bad.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_registry_knows_the_four_models_and_refuses_a_second_class_of_the_same_name():
    known = registered_models()
    for cls in (ImputeModel, IntegrationModel, SpotDeconvolution, CellTypeClassifier):
        assert known[cls.__name__] is cls
    with pytest.raises(TypeError, match="ImputeModel.*already used"):  # the same name from another module
        type("ImputeModel", (SavableModel,), {"__module__": __name__})
    assert registered_models()["ImputeModel"] is ImputeModel


# ----------------------------------------------------------------------------- old files

def test_old_format_file_needs_trusted_and_warns(models, tmp_path):
    model, predict = models["impute"]
    path = _legacy_file(model, tmp_path / "old.pt")
    with pytest.raises(ModelFileError) as info:
        ImputeModel.load(path)
    msg = str(info.value)
    assert str(path) in msg and "older napari-spatialdl" in msg and "can run code" in msg
    assert "ImputeModel.load(path, trusted=True)" in msg
    with pytest.warns(UserWarning, match="old model file format"):
        loaded = ImputeModel.load(path, trusted=True)
    np.testing.assert_array_equal(predict(loaded), predict(model))
    # saving it again writes the new, safe format
    resaved = loaded.save(tmp_path / "old.pt")
    assert torch.load(resaved, weights_only=True)["version"] == FILE_VERSION
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(predict(ImputeModel.load(resaved)), predict(model))


@pytest.mark.parametrize("kind", KINDS)
def test_old_format_file_with_numpy_objects(kind, models, tmp_path):
    # files written by the old save could hold numpy scalars: only full unpickling reads them
    model, predict = models[kind]
    path = _legacy_file(model, tmp_path / "old.pt", written_with=np.float64(1.5))
    with pytest.raises(ModelFileError, match=r"older napari-spatialdl \(file format 1\)"):
        type(model).load(path)
    with pytest.raises(ModelFileError, match="trusted=True"):
        SavableModel.load(path)
    with pytest.warns(UserWarning, match="old model file format"):
        loaded = SavableModel.load(path, trusted=True)
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(predict(loaded), predict(model))


@pytest.mark.parametrize("looks_like_a_model", [True, False])
def test_malicious_pickle_is_not_executed(looks_like_a_model, models, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if looks_like_a_model:
        _legacy_file(models["impute"][0], path, payload=_Marker(marker))
    else:
        torch.save({"x": _Marker(marker)}, path)
    assert not marker.exists()
    for loader in (ImputeModel, IntegrationModel, SavableModel):
        with pytest.raises(ModelFileError, match="trusted=True") as info:
            loader.load(path)
        assert str(path) in str(info.value)
        assert not marker.exists()
    if not looks_like_a_model:
        assert "io.open" in str(info.value)  # names what unpickling would call (builtins.open)
    # the file does run code when unpickled: trusted=True is the user's explicit choice
    if looks_like_a_model:
        with pytest.warns(UserWarning, match="old model file format"):
            assert isinstance(ImputeModel.load(path, trusted=True), ImputeModel)
    else:
        with pytest.raises(ModelFileError, match=r"not a model saved by napari-spatialdl.*\['x'\]"):
            SavableModel.load(path, trusted=True)
    assert marker.exists()


# ----------------------------------------------------------------------------- damaged and foreign files

def _entry_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where the bytes of a (stored, uncompressed) zip entry start, from its local header."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    assert header[:4] == b"PK\x03\x04" and info.compress_type == zipfile.ZIP_STORED
    name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


def _clear(info: pytest.ExceptionInfo, path: Path, *phrases: str) -> None:
    msg = str(info.value)
    assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)
    assert str(path) in msg
    for phrase in phrases:
        assert phrase in msg, msg
    for raw in ("UnpicklingError", "PytorchStreamReader", "Weights only load failed", "invalid load key"):
        assert raw not in msg


@pytest.mark.parametrize("keep", [0.5, 0.95, 0.999])
def test_truncated_file(keep, models, tmp_path):
    data = models["annotation"][0].save(tmp_path / "m.pt").read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelFileError) as info:
        CellTypeClassifier.load(path)
    _clear(info, path, "damaged or truncated")


def test_corrupted_weights_are_caught_by_the_checksum(models, tmp_path):
    model, _ = models["integrate"]
    path = model.save(tmp_path / "m.pt")
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)  # the largest tensor
        assert info.file_size > 64
    data = bytearray(path.read_bytes())
    start = _entry_data_offset(path, info) + 8
    for i in range(start, start + 16):
        data[i] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError) as err:
        IntegrationModel.load(path)
    _clear(err, path, "damaged", "checksum")


def test_corrupted_file_structure(models, tmp_path):
    path = models["impute"][0].save(tmp_path / "m.pt")
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    data = bytearray(path.read_bytes())
    start = _entry_data_offset(path, info)
    data[start: start + 40] = bytes(range(200, 240))  # the pickle of the entries
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError) as err:
        ImputeModel.load(path)
    _clear(err, path, "damaged")


def test_tampered_entries(models, tmp_path):
    model, _ = models["impute"]
    payload = torch.load(model.save(tmp_path / "m.pt"), weights_only=True)
    path = tmp_path / "t.pt"
    torch.save({**payload, "config_json": payload["config_json"].replace("gene-1", "gene-X")}, path)
    with pytest.raises(ModelFileError) as err:
        ImputeModel.load(path)
    _clear(err, path, "checksum")
    torch.save({**payload, "version": 7}, path)
    with pytest.raises(ModelFileError) as err:
        ImputeModel.load(path)
    _clear(err, path, "newer napari-spatialdl", "upgrade")
    torch.save({**payload, "state_dict": [1, 2]}, path)
    with pytest.raises(ModelFileError) as err:
        ImputeModel.load(path)
    _clear(err, path, "damaged", "state_dict")


def test_unknown_class_name_is_not_imported(models, tmp_path):
    from napari_spatialdl.models import _base

    model, _ = models["impute"]
    payload = torch.load(model.save(tmp_path / "m.pt"), weights_only=True)
    for name in ("os.system", "builtins.eval", "NotAModel"):
        digest = _base._digest(name, 1, payload["config_json"], payload["state_dict"], payload["arrays"])
        path = tmp_path / "u.pt"
        torch.save({**payload, "class": name, "sha256": digest}, path)
        with pytest.raises(ModelFileError) as err:
            SavableModel.load(path)
        _clear(err, path, f"class {name!r}", "does not know", "ImputeModel")


def test_model_of_another_class(models, tmp_path):
    path = models["impute"][0].save(tmp_path / "impute.pt")
    with pytest.raises(ModelFileError) as err:
        IntegrationModel.load(path)
    _clear(err, path, "ImputeModel", "IntegrationModel", "ImputeModel.load(path)")
    old = _legacy_file(models["annotation"][0], tmp_path / "old.pt")
    with pytest.raises(ModelFileError) as err:
        SpotDeconvolution.load(old, trusted=True)
    _clear(err, old, "CellTypeClassifier", "SpotDeconvolution")


def test_weights_that_do_not_fit_the_settings(models, tmp_path):
    from napari_spatialdl.models import _base

    model, _ = models["impute"]
    payload = torch.load(model.save(tmp_path / "m.pt"), weights_only=True)
    state = {k: v for k, v in payload["state_dict"].items() if not k.endswith("bias")}
    digest = _base._digest("ImputeModel", 1, payload["config_json"], state, payload["arrays"])
    path = tmp_path / "w.pt"
    torch.save({**payload, "state_dict": state, "sha256": digest}, path)
    with pytest.raises(ModelFileError) as err:
        ImputeModel.load(path)
    _clear(err, path, "weights do not fit", "Missing key")


def test_files_that_are_not_models(tmp_path):
    png = tmp_path / "image.png"
    pytest.importorskip("PIL.Image").new("RGB", (4, 4)).save(png)
    ad = pytest.importorskip("anndata")
    h5ad = tmp_path / "data.h5ad"
    ad.AnnData(np.ones((3, 2), dtype=np.float32)).write_h5ad(h5ad)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "settings.json").write_text('{"a": 1}')
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(500))
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "dict.pt")
    (tmp_path / "folder.pt").mkdir()
    cases = {
        png: "a PNG image", h5ad: "an HDF5 file", tmp_path / "empty.pt": "is empty",
        tmp_path / "settings.json": "JSON", tmp_path / "random.pt": "not a model saved by napari-spatialdl",
        tmp_path / "tensor.pt": "holds a Tensor", tmp_path / "dict.pt": "['weights']",
        tmp_path / "folder.pt": "is a folder", tmp_path / "missing.pt": "No model file",
    }
    for path, phrase in cases.items():
        for loader in (ImputeModel, SavableModel):
            with pytest.raises(ModelFileError) as err:
                loader.load(path)
            _clear(err, path, phrase)
