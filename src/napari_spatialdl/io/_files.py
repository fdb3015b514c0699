"""What is wrong with a file that a library could not read, in words (HDF5, JSON, images, CSV).

The readers turn a library's error (``OSError: Unable to synchronously open file (file signature
not found)``, ``JSONDecodeError``, ``SyntaxError: broken PNG file``) into a :class:`ReadError`
naming the file, what is wrong with it, and how to get a good copy.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ._spatial import ReadError, _warn

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
_TRUNCATED = re.compile(r"truncated file: eof = (\d+).*stored_eof = (\d+)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def hdf5_problem(path: Path) -> str | None:
    """What is wrong with ``path`` as an HDF5 file (reads after "it "), or None when h5py opens it."""
    size = _size(path)
    if size == 0:
        return "is empty (0 bytes)"
    try:
        with open(path, "rb") as fh:
            offsets = [0] + [512 * 2**k for k in range(20) if 512 * 2**k < (size or 0)]
            found = False
            for off in offsets:  # HDF5 allows a user block of 512, 1024, 2048, ... bytes before the signature
                fh.seek(off)
                if fh.read(8) == HDF5_SIGNATURE:
                    found = True
                    break
    except OSError as err:
        return f"cannot be opened ({err.strerror or err})"
    if not found:
        return ("is not a valid HDF5 file: it does not start with the HDF5 signature, so it is damaged "
                "or in another format")
    import h5py

    try:
        with h5py.File(path, "r"):
            pass
    except Exception as err:  # noqa: BLE001 - h5py raises OSError/RuntimeError for damaged files
        match = _TRUNCATED.search(str(err))
        if match:
            have, want = int(match.group(1)), int(match.group(2))
            return (f"is truncated: it has {have:,} of the {want:,} bytes its header announces "
                    "(the copy or download stopped early)")
        return f"is a damaged HDF5 file ({_first_line(err)})"
    return None


def damaged_hdf5(path: Path, err: BaseException, *, what: str, fix: str) -> ReadError:
    """A ReadError for an HDF5 file ``path`` that a reader failed on with ``err``."""
    problem = hdf5_problem(path)
    if problem is None:  # the container opens: its inside is damaged, or not what was expected
        damage = _inner_damage(path)
        if damage is None and isinstance(err, OSError | RuntimeError) and "Unable to" in str(err):
            damage = _first_line(err)  # an HDF5 library error while reading: the structure is damaged
        problem = (f"is a damaged HDF5 file ({damage})" if damage else
                   f"is an HDF5 file but not {what} ({_first_line(err)})")
    return ReadError(f"{path} could not be read: it {problem}. {fix}")


def _inner_damage(path: Path, limit: int = 500) -> str | None:
    """The first group or dataset of an HDF5 file that cannot be read, as text, or None."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            names: list[str] = []
            f.visit(names.append)
            for name in names[:limit]:
                obj = f[name]
                if isinstance(obj, h5py.Dataset):
                    try:
                        obj[()]
                    except Exception as err:  # noqa: BLE001
                        return f"dataset {name!r}: {_first_line(err)}"
    except Exception as err:  # noqa: BLE001 - walking the groups failed: the structure is damaged
        return _first_line(err)
    return None


def read_json_object(path: Path, *, fix: str) -> dict:
    """The JSON object in ``path``; a ReadError naming the file, the line and the fix otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ReadError(
            f"{path} is not valid JSON: it holds binary data (byte {err.start} is not text), so it is "
            f"damaged. {fix}"
        ) from None
    except OSError as err:
        raise ReadError(f"{path} could not be opened ({err.strerror or err}). {fix}") from None
    if not text.strip():
        raise ReadError(f"{path} is empty (no JSON in it). {fix}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ReadError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}): it is damaged, "
            f"truncated or was edited by hand. {fix}"
        ) from None
    if not isinstance(data, dict):
        raise ReadError(f"{path} holds a JSON {type(data).__name__}, not an object of named values. {fix}")
    return data


def image_file_problem(path: Path, err: BaseException) -> str:
    """Why the image ``path`` could not be decoded (reads after "it "), from its bytes and ``err``."""
    problem = _signature_problem(path)
    if problem:
        return problem
    text = str(err).lower()
    if "truncated" in text or isinstance(err, EOFError):
        return "is truncated (the copy or download stopped early)"
    return f"is damaged ({_first_line(err)})"


def _signature_problem(file: Path) -> str | None:
    size = _size(file)
    if size == 0:
        return "is empty (0 bytes)"
    try:
        with open(file, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        return f"cannot be opened ({e.strerror or e})"
    suffix = file.suffix.lower()
    if suffix == ".png" and head != PNG_SIGNATURE:
        return "is not a PNG image (it does not start with the PNG signature)"
    if suffix in (".jpg", ".jpeg") and not head.startswith(JPEG_SIGNATURE):
        return "is not a JPEG image (it does not start with the JPEG signature)"
    return None


def load_image(file: Path) -> np.ndarray:
    """An image file as an array; a constant opaque alpha channel is dropped.

    Raises
    ------
    ReadError
        The file is empty or does not start with its format's signature (checked before decoding,
        so that no other decoder is tried on it); decoders' own errors pass through.
    """
    import imageio.v3 as iio

    problem = _signature_problem(file)
    if problem:
        raise ReadError(f"{file} {problem}.")
    img = np.asarray(iio.imread(file))
    if img.ndim == 3 and img.shape[2] == 4 and np.all(img[..., 3] == img[..., 3].flat[0]) and img[..., 3].flat[0] > 0:
        img = np.ascontiguousarray(img[..., :3])  # constant opaque alpha carries nothing
    return img


def load_image_or_warn(file: Path, *, fix: str) -> np.ndarray | None:
    """``load_image(file)``, or None with a UserWarning naming the file when it is damaged.

    A damaged tissue image is treated like a missing one: the data are read without it.
    """
    try:
        return load_image(file)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - PIL/imageio raise OSError, SyntaxError, ValueError, ...
        _warn(f"The tissue image {file} could not be read: it {image_file_problem(file, err)}. The data are "
              f"read without this image. {fix}")
        return None
