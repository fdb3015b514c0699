"""Save/load shared by every trained model wrapper: model files that never run code.

A model wrapper holds a ``torch.nn.Module`` (``self.module``), the keyword
arguments it was built with (``self.init_kwargs``) and whatever else prediction
needs (gene names, category names, ...) in ``self.extra``. ``save`` writes all
three to one file; ``load`` rebuilds the same object, so a loaded model
reproduces its predictions exactly.

The file (format version 2) is a ``torch.save`` archive of plain values only, so
that ``torch.load(path, weights_only=True)`` reads it without unpickling any
object::

    {"format": "napari-spatialdl-model", "version": 2,
     "class": "ImputeModel",              # looked up in a registry, never imported by name
     "class_version": 1,                  # the class's own layout version
     "config_json": "{...}",              # init_kwargs and extra as JSON
     "state_dict": {name: tensor},        # the module's weights and buffers
     "arrays": {name: tensor},            # numpy arrays / tensors found in init_kwargs or extra
     "sha256": "..."}                     # digest of all the above: a damaged file is refused

``init_kwargs`` and ``extra`` may hold ``None``, ``bool``, ``int``, ``float``,
``str``, lists/tuples and dicts with ``str`` keys of these, numpy scalars (saved as
Python numbers) and numeric numpy arrays or tensors (saved in ``arrays``, given
back as the same type). Tuples come back as lists. Anything else is refused when
saving, not discovered when loading.

Files of format version 1 (``torch.save`` of a pickled dict, read with
``weights_only=False``) can run code when read; they are opened only with
``load(path, trusted=True)``, with a warning. Saving such a model again writes
version 2.

Every subclass is registered by its class name when it is defined; ``load``
rebuilds only registered classes.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import pickle
import pickletools
import pkgutil
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .._errors import InputError

#: the value of the "format" entry of every model file
MODEL_FORMAT = "napari-spatialdl-model"
#: the file layout written by :meth:`SavableModel.save`
FILE_VERSION = 2

_ARRAY = "__spatialdl_array__"  # JSON marker of a value stored in "arrays"
_STRINGS = "__spatialdl_strings__"  # JSON marker of a numpy array of strings


class ModelFileError(InputError):
    """A model file that cannot be loaded: the message names the file, the problem and the fix."""


# ----------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[SavableModel]] = {}


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def registered_models() -> dict[str, type[SavableModel]]:
    """The model classes that :meth:`SavableModel.load` can rebuild, by the name written in files.

    Every module of ``napari_spatialdl.models`` is imported first, so that all of the
    package's model classes are listed (the names come from the package, never from a file).
    """
    _import_model_modules()
    return dict(_REGISTRY)


def _import_model_modules() -> None:
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            try:
                importlib.import_module(f"{__package__}.{info.name}")
            except ImportError:  # a model module whose optional dependency is not installed
                continue


def _lookup(name: str) -> type[SavableModel] | None:
    """The registered class written as ``name`` (version 2: the class name; version 1: its dotted path)."""
    for attempt in range(2):
        if name in _REGISTRY:
            return _REGISTRY[name]
        for cls in _REGISTRY.values():
            if _dotted(cls) == name:
                return cls
        if attempt == 0:
            _import_model_modules()
    return None


# ----------------------------------------------------------------------------- plain config

def _to_plain(value: Any, where: str, arrays: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON-serialisable data; arrays and tensors go to ``arrays`` (marker left in place)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, torch.Tensor | np.ndarray):
        is_numpy = isinstance(value, np.ndarray)
        if is_numpy and value.dtype.kind in "US":
            return {_STRINGS: value.astype(str).ravel().tolist(), "shape": list(value.shape)}
        if is_numpy and value.dtype.kind not in "biufc":
            raise TypeError(f"Cannot save the model: {where} is a numpy array of dtype {value.dtype}; "
                            "a model file holds numeric or string arrays only.")
        tensor = torch.from_numpy(np.ascontiguousarray(value)) if is_numpy else value.detach().cpu()
        arrays[where] = tensor.clone()
        return {_ARRAY: where, "numpy": is_numpy}
    if isinstance(value, list | tuple):
        return [_to_plain(v, f"{where}[{i}]", arrays) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise TypeError(f"Cannot save the model: {where} has the key {key!r} "
                                f"({type(key).__name__}); a model file holds dicts with str keys only.")
            out[key] = _to_plain(v, f"{where}[{key!r}]", arrays)
        return out
    raise TypeError(f"Cannot save the model: {where} is a {type(value).__module__}.{type(value).__qualname__}; "
                    "a model file holds None, bool, int, float, str, lists, dicts and arrays only.")


def _from_plain(value: Any, arrays: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_from_plain(v, arrays) for v in value]
    if isinstance(value, dict):
        if set(value) == {_ARRAY, "numpy"}:
            tensor = arrays[value[_ARRAY]]  # KeyError: reported as a damaged config
            return tensor.numpy().copy() if value["numpy"] else tensor.clone()
        if set(value) == {_STRINGS, "shape"}:
            return np.array(value[_STRINGS], dtype=str).reshape(value["shape"])
        return {k: _from_plain(v, arrays) for k, v in value.items()}
    return value


def _digest(class_name: str, class_version: int, config_json: str,
            state_dict: Mapping[str, torch.Tensor], arrays: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(f"{class_name}\0{class_version}\0".encode())
    h.update(config_json.encode())
    for group, tensors in (("state_dict", state_dict), ("arrays", arrays)):
        for key in sorted(tensors):
            t = tensors[key]
            h.update(f"\0{group}\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
            h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- reading

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (e.g. .h5ad or .h5), not a model"),
    (b"\x1f\x8b", "a gzip file"),
    (b"\x80", "a plain pickle, not a PyTorch archive"),
)


def _describe_non_archive(path: Path, head: bytes) -> str:
    if not head:
        return f"{path} is empty (0 bytes): it is not a saved model, or the save did not finish."
    if head.startswith(b"PK"):
        return (f"{path} is damaged or truncated: its archive is incomplete (was the copy or download "
                "interrupted?). Copy the file again, or save the model again.")
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return f"{path} is {what}, not a model saved by napari-spatialdl (model.save(path) writes a .pt file)."
    if head.lstrip()[:1] in (b"{", b"["):
        return f"{path} is a text/JSON file, not a model saved by napari-spatialdl (model.save(path) writes a .pt file)."
    return f"{path} is not a model saved by napari-spatialdl (it is not a PyTorch archive), or it is damaged."


def _inspect_pickle(path: Path) -> tuple[list[str], bool] | None:
    """The names the archive's pickle would import and whether it looks like a format-1 model file
    (read with ``pickletools``: nothing runs); ``None`` when the pickle is unreadable (a damaged file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not names:
                return None
            data = archive.read(names[0])
        found: list[str] = []
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                strings.append(str(arg))
            elif op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(".".join(strings[-2:]))
        return found, {"format_version", "init_kwargs", "state_dict"} <= set(strings)
    except Exception:  # noqa: BLE001 (any failure to parse is a damaged pickle)
        return None


_PLAIN_GLOBALS = ("torch._utils.", "torch.", "collections.OrderedDict")


def _torch_read(path: Path, trusted: bool, cls: type[SavableModel]) -> Any:
    """The object in ``path``: read with ``weights_only=True`` (and without it only when ``trusted``)."""
    if not path.exists():
        raise ModelFileError(f"No model file at {path}.")
    if not path.is_file():
        raise ModelFileError(f"{path} is a folder, not a model file: give the path of the .pt file.")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not zipfile.is_zipfile(path):
        raise ModelFileError(_describe_non_archive(path, head))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (sorted below into "needs code" and "damaged")
        unpickling = isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err)
        found = _inspect_pickle(path) if unpickling else None
    if found is None:
        raise ModelFileError(
            f"{path} is damaged or truncated: its contents could not be read. Copy the file again, "
            "or save the model again.") from None
    if trusted:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001
            raise ModelFileError(f"{path} could not be read even as a trusted pickle: "
                                 f"{type(err).__name__}: {err}") from None
    globals_, old_model = found
    if old_model:
        raise ModelFileError(_old_format_message(path, cls))
    code = sorted({g for g in globals_ if not g.startswith(_PLAIN_GLOBALS)})
    shown = ", ".join(code[:6]) + (", ..." if len(code) > 6 else "")
    raise ModelFileError(
        f"{path} holds pickled Python objects ({shown or 'objects other than tensors'}), not only weights "
        f"and plain values, so it is not a model file of the current format. Reading it would run code "
        f"the file contains, so it was not opened. If it is a model file and you "
        f"trust where the file came from, load it with {cls.__name__}.load(path, trusted=True), then "
        f"model.save(path) writes it again in the safe format.")


def _old_format_message(path: Path, cls: type[SavableModel]) -> str:
    return (f"{path} is a model saved by an older napari-spatialdl (file format 1), a format that is read "
            f"by unpickling and so can run code hidden in the file; it was not opened. If you trust "
            f"where the file came from, load it with {cls.__name__}.load(path, trusted=True), then "
            f"model.save(path) writes it again in the safe format.")


def _is_v1(payload: Any) -> bool:
    return (isinstance(payload, Mapping) and "format" not in payload
            and {"class", "format_version", "init_kwargs", "extra", "state_dict"} <= set(payload))


def _tensor_dict(value: Any, path: Path, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
        raise ModelFileError(f"{path} is damaged: its {what!r} is not a dict of named tensors. "
                             "Save the model again.")
    return dict(value)


# ----------------------------------------------------------------------------- the base class

class SavableModel:
    """Base class: subclasses set ``module``, ``init_kwargs`` and ``extra`` and implement ``build``.

    A subclass is registered under its class name (``file_class``, by default
    ``__name__``) when it is defined; two model classes may not share a name.
    """

    #: bumped when the saved layout of a subclass changes (a newer file is refused)
    format_version: ClassVar[int] = 1
    #: the name written in files (default: the class name)
    file_class: ClassVar[str]

    module: torch.nn.Module
    init_kwargs: dict[str, Any]
    extra: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("file_class", cls.__name__)
        cls.file_class = name
        known = _REGISTRY.get(name)
        if known is not None and known is not cls and _dotted(known) != _dotted(cls):
            raise TypeError(f"Model class name {name!r} of {_dotted(cls)} is already used by "
                            f"{_dotted(known)}: model files name their class, so it must be unique "
                            "(set file_class to another name).")
        _REGISTRY[name] = cls  # the same class re-defined (module reloaded) replaces itself

    @classmethod
    def build(cls, init_kwargs: dict[str, Any], extra: dict[str, Any]) -> SavableModel:
        """Recreate an untrained wrapper from saved ``init_kwargs`` and ``extra``."""
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        """Write the model (weights, settings, gene/category names) to ``path`` (a .pt file).

        The file holds tensors and plain values only (``torch.load(path, weights_only=True)``
        reads it) and is written to a temporary file first, so an interrupted save leaves
        any earlier file at ``path`` intact.

        Parameters
        ----------
        path
            Where to write; missing parent folders are created.

        Returns
        -------
        Path
            ``path``.
        """
        path = Path(path)
        name = type(self).file_class
        arrays: dict[str, torch.Tensor] = {}
        config = {"init_kwargs": _to_plain(self.init_kwargs, "init_kwargs", arrays),
                  "extra": _to_plain(self.extra, "extra", arrays)}
        config_json = json.dumps(config, allow_nan=True)
        state = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
        payload = {
            "format": MODEL_FORMAT,
            "version": FILE_VERSION,
            "class": name,
            "class_version": int(self.format_version),
            "config_json": config_json,
            "state_dict": state,
            "arrays": arrays,
            "torch_version": str(torch.__version__),
            "sha256": _digest(name, int(self.format_version), config_json, state, arrays),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(payload, fh)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", *, trusted: bool = False) -> SavableModel:
        """Load a model written by :meth:`save`.

        Parameters
        ----------
        path
            The model file.
        device
            Where to put the weights (``"cpu"``, ``"cuda"``, ...).
        trusted
            Also open files of the old format (version 1), which are read by unpickling and can
            therefore run code hidden in them: only for files whose origin you trust. Loading one
            warns; ``model.save(path)`` then writes it in the current, safe format.

        Returns
        -------
        SavableModel
            The model, of the class written in the file (``cls`` or a subclass of it), in eval mode.

        Raises
        ------
        ModelFileError
            The file is missing, damaged, not a model, a model of another class, or of the old
            format without ``trusted=True``.
        """
        path = Path(path)
        payload = _torch_read(path, trusted, cls)
        if _is_v1(payload):
            return cls._load_v1(path, payload, device, trusted)
        if not isinstance(payload, Mapping) or payload.get("format") != MODEL_FORMAT:
            what = (f"a dict with the keys {sorted(map(str, payload))[:8]}" if isinstance(payload, Mapping)
                    else f"a {type(payload).__name__}")
            raise ModelFileError(f"{path} is a PyTorch file but not a model saved by napari-spatialdl "
                                 f"(it holds {what}).")
        version = payload.get("version")
        if not isinstance(version, int) or version > FILE_VERSION:
            raise ModelFileError(f"{path} was written by a newer napari-spatialdl (file format {version!r}; "
                                 f"this version reads up to {FILE_VERSION}): upgrade napari-spatialdl to load it.")
        name, class_version = payload.get("class"), payload.get("class_version")
        config_json = payload.get("config_json")
        if not isinstance(name, str) or not isinstance(class_version, int) or not isinstance(config_json, str):
            raise ModelFileError(f"{path} is damaged: its class or settings entry is missing. Save the model again.")
        state = _tensor_dict(payload.get("state_dict"), path, "state_dict")
        arrays = _tensor_dict(payload.get("arrays"), path, "arrays")
        if payload.get("sha256") != _digest(name, class_version, config_json, state, arrays):
            raise ModelFileError(f"{path} is damaged: its contents do not match the checksum written with "
                                 "them (a changed or corrupted copy). Copy the file again, or save the model again.")
        target = cls._target_class(path, name)
        if class_version > target.format_version:
            raise ModelFileError(f"{path} holds a {name} of layout version {class_version}, newer than this "
                                 f"napari-spatialdl's ({target.format_version}): upgrade napari-spatialdl to load it.")
        try:
            config = json.loads(config_json)
            init_kwargs = _from_plain(config["init_kwargs"], arrays)
            extra = _from_plain(config["extra"], arrays)
        except (ValueError, KeyError, TypeError) as err:
            raise ModelFileError(f"{path} is damaged: its settings could not be read ({type(err).__name__}: "
                                 f"{err}). Save the model again.") from None
        return target._rebuild(path, init_kwargs, extra, state, device)

    @classmethod
    def _target_class(cls, path: Path, name: str) -> type[SavableModel]:
        target = _lookup(name)
        if target is None:
            known = ", ".join(sorted(_REGISTRY)) or "none"
            raise ModelFileError(f"{path} holds a model of class {name!r}, which this napari-spatialdl does not "
                                 f"know (known: {known}). Was it saved by a newer or other version?")
        if not issubclass(target, cls):
            raise ModelFileError(
                f"{path} holds a model of class {target.__name__}, but {cls.__name__}.load was called: load it with "
                f"{target.__name__}.load(path) (from {target.__module__}), or give the path of a "
                f"file saved by {cls.__name__}.save.")
        return target

    @classmethod
    def _rebuild(cls, path: Path, init_kwargs: Any, extra: Any, state: Mapping[str, torch.Tensor],
                 device: str) -> SavableModel:
        if not isinstance(init_kwargs, dict) or not isinstance(extra, dict):
            raise ModelFileError(f"{path} is damaged: its settings are not dicts. Save the model again.")
        try:
            model = cls.build(init_kwargs, extra)
        except (TypeError, ValueError, KeyError) as err:
            raise ModelFileError(f"{path}: the settings of its {cls.__name__} do not fit this napari-spatialdl's "
                                 f"{cls.__name__} ({type(err).__name__}: {err}).") from None
        try:
            model.module.load_state_dict(state, strict=True)
        except RuntimeError as err:
            detail = " ".join(str(err).split())
            raise ModelFileError(f"{path}: its weights do not fit the {cls.__name__} its settings describe "
                                 f"({detail[:400]}).") from None
        model.module.to(device).eval()
        return model

    @classmethod
    def _load_v1(cls, path: Path, payload: Mapping[str, Any], device: str, trusted: bool) -> SavableModel:
        """A file of format version 1 (a pickled dict): only with ``trusted=True``, with a warning."""
        name = str(payload["class"])
        if not trusted:
            raise ModelFileError(_old_format_message(path, cls))
        target = cls._target_class(path, name)
        state = _tensor_dict(payload["state_dict"], path, "state_dict")
        warnings.warn(
            f"{path} was loaded from the old model file format (1), which runs pickled code; "
            f"save it again with model.save(path) to write the safe format ({FILE_VERSION}).",
            UserWarning, stacklevel=3)
        init_kwargs, extra = payload["init_kwargs"], payload["extra"]
        return target._rebuild(path, dict(init_kwargs) if isinstance(init_kwargs, Mapping) else init_kwargs,
                               dict(extra) if isinstance(extra, Mapping) else extra, state, device)

