"""Files: written so that a failure never leaves a half-written one behind (one file, or a folder
a command fills), and ONNX models and .npz arrays read with one plain error whatever is wrong."""

from __future__ import annotations

import errno
import math
import os
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
import onnx
from google.protobuf.message import Message
from onnx import numpy_helper

from dlspec.spec.errors import RunError

try:
    import fcntl
except ImportError:  # not on Windows: folders go unlocked there
    fcntl = None  # type: ignore[assignment]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` as atomic_file does: whole, or not at all."""
    with atomic_file(path) as f:
        f.write(data)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A file to write `path` through: a temporary file beside it, synced and renamed over it when
    the block ends.

    On any failure the previous file (if any) is left as it was and the temporary file is removed.
    The new file gets the mode of the file it replaces, or the usual 0666 & ~umask for a new one
    (mkstemp would otherwise leave it private to its owner). A symlink is followed (the file it
    names is replaced, the link stays); a device or a pipe (/dev/null, /dev/stdout) is written
    straight into, never replaced.
    """
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    if target.exists() and not target.is_file() and not target.is_dir():
        yield from _written_through(target)
        return
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
            yield f
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


def _written_through(target: Path) -> Iterator[BinaryIO]:
    try:
        with open(target, "wb") as f:
            yield f
    except OSError as err:
        raise RunError(f"cannot write {target}: {err.strerror or err}") from None


class OutputFolder:
    """A folder that a command fills with several files, checked writable before any work (its
    missing parents made, a file written, both removed again) and made at the first write. Until
    `keep()`, a failure (the `with` block raising, or `discard()`) removes the files written
    through it and the folders it made: a command that fails to start leaves nothing behind.

    `exclusive`: the folder is locked (flock) from when it exists until `release()`, and a folder
    that another process holds is refused: two runs into one folder would mix their files."""

    def __init__(self, path: Path, what: str, probe: bool = True, exclusive: bool = False):
        """`probe=False`: a process that reads the folder and never writes it (the ranks of a
        data-parallel job but rank 0): nothing is checked or made."""
        self.path, self.what, self.exclusive = path, what, exclusive
        self.made: list[Path] = []
        self.written: list[Path] = []
        self.kept = False
        self.missing: list[Path] = []
        self.lock_fd: int | None = None
        if not probe:
            return
        try:
            missing = [p for p in reversed((path, *path.parents)) if not p.exists()]
        except OSError as err:
            raise self._fail(err) from None
        self._make(missing)
        try:
            self._probe()
        finally:
            self._remove_made()
        self.missing = missing  # made again at the first write
        if not missing:
            self._lock()

    def _lock(self) -> None:
        if not self.exclusive or fcntl is None or self.lock_fd is not None:
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunError(f"cannot write {self.what} into {self.path}: another dlspec process is "
                               "writing there (one run to a folder: give another --out)") from None
            return  # a file system without locks: the folder goes unlocked
        self.lock_fd = fd  # held, with the lock, until release() or the process's end

    def release(self) -> None:
        """Unlock the folder: the command is done with it."""
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def _fail(self, err: OSError) -> RunError:
        return RunError(f"cannot write {self.what} into {self.path}: {_reason(err)}")

    def _make(self, folders: list[Path]) -> None:
        try:
            for folder in folders:
                folder.mkdir(exist_ok=True)
                self.made.append(folder)
        except OSError as err:
            self._remove_made()
            raise self._fail(err) from None
        if not self.path.is_dir():
            raise RunError(f"cannot write {self.what} into {self.path}: it is a file, not a folder")

    def _probe(self) -> None:
        try:  # a read-only file system or a folder of /proc says no only when asked to write
            fd, probe = tempfile.mkstemp(prefix=".probe.", dir=self.path)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise self._fail(err) from None

    def _remove_made(self) -> None:
        for folder in reversed(self.made):
            try:
                folder.rmdir()  # only when empty: never what someone else put there
            except OSError:
                break
        self.made = []

    def track(self, path: Path) -> Path:
        """A file this command writes by other means (a checkpoint): the folder is made, and the
        file removed too by `discard`."""
        if self.missing:
            self._make(self.missing)
            self.missing = []
            self._lock()
        if not self.kept and path not in self.written:
            self.written.append(path)
        return path

    def write(self, name: str, data: bytes) -> Path:
        path = self.track(self.path / name)
        atomic_write(path, data)
        return path

    def keep(self) -> None:
        """What is written so far stays, whatever happens next."""
        self.kept = True
        self.written, self.made = [], []

    def discard(self) -> None:
        if self.kept:
            return
        for path in self.written:
            path.unlink(missing_ok=True)
        self.written = []
        self._remove_made()

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None:
            self.discard()


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class Npz(Mapping[str, np.ndarray]):
    """The arrays of an .npz file, each read when asked for; whatever is wrong with the file (not a
    zip, truncated, a flipped bit, pickled objects) is a RunError naming it and the array."""

    def __init__(self, path: str | Path, what: str):
        self.path, self.what = path, what
        if not Path(path).is_file():  # also refuses devices and pipes, which would never end
            raise RunError(f"cannot read {what} {path}: no such file" if not Path(path).exists()
                           else f"cannot read {what} {path}: not a regular file")
        try:
            data = np.load(path, allow_pickle=False)
        except OSError as err:
            raise RunError(f"cannot read {what} {path}: {_reason(err)}") from None
        except (ValueError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError) as err:
            raise RunError(f"cannot read {what} {path}: not an .npz file, or a truncated one "
                           f"({type(err).__name__}); numpy.savez(path, name=array, ...) writes one") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise RunError(f"cannot read {what} {path}: it holds a single array, not an .npz of named "
                           "arrays (write one with numpy.savez(path, name=array, ...))")
        self.data = data
        self.files: list[str] = list(data.files)
        self.headers: dict[str, tuple[tuple[int, ...], np.dtype] | None] = {}  # declared(), read once each

    def __contains__(self, name: object) -> bool:  # Mapping's own would read the array
        return name in self.files

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def declared(self, name: str) -> tuple[tuple[int, ...], np.dtype] | None:
        """The shape and dtype that array `name`'s .npy header declares, read without the array
        (a zip member of a few KB can inflate to gigabytes); None where the header is unreadable,
        which reading the array then reports."""
        if name not in self.headers:
            self.headers[name] = self._header(name)
        return self.headers[name]

    def _header(self, name: str) -> tuple[tuple[int, ...], np.dtype] | None:
        if self.data.zip is None:
            return None
        try:
            with self.data.zip.open(f"{name}.npy") as f:
                version = np.lib.format.read_magic(f)
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read is None:
                    return None
                shape, _, dtype = read(f)
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
            return None
        return tuple(shape), dtype

    def __getitem__(self, name: str) -> np.ndarray:
        header = self.declared(name)
        if header is not None:
            size = math.prod(header[0]) * header[1].itemsize
            if size > _memory_bytes():
                raise RunError(f"cannot read {self.what} {self.path}: array '{name}' declares "
                               f"{header[1]}{list(header[0])}, {size / 2**30:,.1f} GiB, more than this "
                               "machine's memory")
        try:
            return np.asarray(self.data[name])
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError) as err:
            problem = ("holds Python objects, not numbers" if "allow_pickle" in str(err)
                       else f"is corrupt or truncated ({_first_line(err)})")
            raise RunError(f"cannot read {self.what} {self.path}: array '{name}' {problem}") from None

    def close(self) -> None:
        self.data.close()

    def __enter__(self) -> Npz:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _memory_bytes() -> int:
    """The machine's physical memory (unbounded where it cannot be told)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**63


MAX_MODEL_BYTES = 2**31 - 1  # protobuf's own limit on one message


def load_model(path: str | Path) -> onnx.ModelProto:
    """An ONNX model file, parsed and passed through onnx.checker; whatever is wrong (empty, truncated,
    random bytes, flipped bits, a protobuf of another kind) is one RunError naming the file."""
    file = Path(path)
    try:
        if not file.is_file():  # also refuses devices and pipes, which would never end
            raise RunError(f"cannot read {path}: no such file" if not file.exists()
                           else f"cannot read {path}: not a regular file")
        if file.stat().st_size > MAX_MODEL_BYTES:
            raise RunError(f"cannot read {path}: larger than protobuf's 2 GiB limit")
        data = file.read_bytes()
    except OSError as err:
        raise RunError(f"cannot read {path}: {_reason(err)}") from None
    if not data:
        raise RunError(f"{path} is not a valid ONNX model: the file is empty")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as err:  # protobuf's DecodeError and kin
        raise RunError(f"{path} is not a valid ONNX model: it does not parse as one "
                       f"({type(err).__name__}: {_first_line(err)})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise RunError(f"{path} is not a valid ONNX model: it has no graph or no opset")
    if not model.graph.output:
        raise RunError(f"{path} is not a valid ONNX model: its graph has no outputs")
    bad = _undecodable(model)
    if bad is not None:
        raise RunError(f"{path} is not a valid ONNX model: {bad} is not UTF-8 text (a damaged file?)")
    try:
        external = any(onnx.external_data_helper.uses_external_data(t) for t in _tensors(model.graph))
        onnx.external_data_helper.load_external_data_for_model(model, str(file.parent))  # if any
        # types and shapes too: a bad one crashes later. The bytes read, where they are the whole
        # model: serialising it again for the checker takes a second per few hundred megabytes.
        onnx.checker.check_model(model if external else data, full_check=True)
    except Exception as err:  # the checker's ValidationError, and whatever a damaged file provokes
        raise RunError(f"{path} is not a valid ONNX model: {_first_line(err)}") from None
    for tensor in _tensors(model.graph):  # the checker leaves their data unread
        try:
            numpy_helper.to_array(tensor)
        except Exception as err:  # its data does not fill its shape, or is of another type
            raise RunError(f"{path} is not a valid ONNX model: tensor '{tensor.name}' of shape "
                           f"{list(tensor.dims)}: {_first_line(err)}") from None
    return model


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """The initializers and constant attributes of a graph and of the graphs inside its nodes."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _undecodable(message: Message) -> str | None:
    """The first string field that holds bytes that are not UTF-8 (protobuf hands them back as
    bytes, which break every name lookup later), by its field name."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE:
            for item in [value] if isinstance(value, Message) else value:
                found = _undecodable(item)
                if found is not None:
                    return found
        elif field.type == field.TYPE_STRING:
            if any(isinstance(v, bytes) for v in ([value] if isinstance(value, (str, bytes)) else value)):
                return field.full_name
    return None
