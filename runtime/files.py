"""Files: written so that a failure never leaves a half-written one behind, and ONNX models read
with plain errors."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import onnx

from dlspec.spec.errors import RunError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it.

    On any failure the previous file (if any) is left as it was and the temporary file is removed.
    The new file gets the mode of the file it replaces, or the usual 0666 & ~umask for a new one
    (mkstemp would otherwise leave it private to its owner).
    """
    target = Path(path)
    folder = target.parent
    if not folder.exists():
        raise RunError(f"cannot write {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise RunError(f"cannot write {path}: {folder} is not a folder")
    if target.is_dir():
        raise RunError(f"cannot write {path}: it is a folder")
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise RunError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise RunError(f"cannot write {path}: {err.strerror or err}") from None
        raise


def load_model(path: str | Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(path))
    except OSError as err:
        raise RunError(f"cannot read {path}: {err.strerror or err}") from None
    except Exception as err:  # protobuf's DecodeError and kin: not an ONNX file
        raise RunError(f"cannot read {path}: not an ONNX model ({type(err).__name__}: {err})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise RunError(f"cannot read {path}: not an ONNX model (no graph or no opset)")
    return model
