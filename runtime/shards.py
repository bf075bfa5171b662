"""Arrays larger than memory: .npy files and uncompressed .npz members read through memory maps,
and `Rows`, the samples of a split of such an array, gathered batch by batch and never all at once."""

from __future__ import annotations

import mmap
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from dlspec.spec.errors import RunError

MAP_BYTES = 64 * 2**20  # larger arrays are mapped, smaller ones read whole (tests lower it)
CHUNK_BYTES = 16 * 2**20  # a mapped array is checked this much at a time
_ROWS = 16  # rows copied between two releases of the map's pages
_LOCAL_HEADER = 30  # a zip local file header's fixed part; its name and extra field follow


class Mapped:
    """One array in a file, read-only through a memory map.

    Pages read through a map stay in the process's resident set until it lets them go, and the
    kernel maps whole folios (up to megabytes) around each row read, so one batch of scattered rows
    can map hundreds of megabytes. After every _ROWS rows copied the map is told it does not need
    its pages (madvise DONTNEED, microseconds when few are mapped), so resident memory stays small
    however large the file; the kernel's page cache keeps them for the next read.
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        try:
            with open(path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as err:
            raise RunError(f"cannot map {path}: {getattr(err, 'strerror', None) or err}") from None
        need = offset + int(np.prod(shape)) * dtype.itemsize
        if len(self._map) < need:
            raise RunError(f"cannot read {path}: it is truncated ({len(self._map)} bytes, the array "
                           f"header promises {need})")
        self.path = path
        self.array: np.ndarray = np.ndarray(shape, dtype, buffer=self._map, offset=offset)
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def gather(self, index: np.ndarray | slice, dtype: np.dtype) -> np.ndarray:
        """Rows `index` of the array cast to `dtype`, a fresh array."""
        rows = np.arange(*index.indices(len(self.array))) if isinstance(index, slice) else np.asarray(index)
        out = np.empty((len(rows), *self.array.shape[1:]), dtype)
        for lo in range(0, len(rows), _ROWS):
            out[lo:lo + _ROWS] = self.array[rows[lo:lo + _ROWS]]
            if hasattr(mmap, "MADV_DONTNEED"):
                self._map.madvise(mmap.MADV_DONTNEED)  # read-only file pages: read again when touched
        return out


class Rows:
    """The samples `index` of a mapped array, cast to `dtype` when read: what a split holds in
    place of an in-memory array. Indexing it (a slice or an index array) gathers those rows."""

    def __init__(self, source: Mapped, index: np.ndarray, dtype: str | np.dtype):
        self.source, self.index, self.dtype = source, index, np.dtype(dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.source.array.shape[1:])

    @property
    def ndim(self) -> int:
        return self.source.array.ndim

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = self.index[key]
        if np.ndim(rows) == 0:  # one sample
            return self.source.gather(np.array([rows]), self.dtype)[0]
        return self.source.gather(rows, self.dtype)

    def take(self, idx: np.ndarray, axis: int = 0) -> Rows:
        """These rows' `idx`-th, still unread (ndarray.take's signature, samples on axis 0)."""
        assert axis == 0
        return Rows(self.source, self.index[idx], self.dtype)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]  # every row at once: for what needs one array (small test splits)
        return out if dtype is None else out.astype(dtype)


def whole(source: Mapped, dtype: str | np.dtype) -> Rows:
    return Rows(source, np.arange(len(source.array)), dtype)


# ---- the files ----
def _npy_header(f: Any, where: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of the .npy data that starts at f's position."""
    start = f.tell()
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, SyntaxError) as err:
        raise RunError(f"cannot read {where}: not a .npy array ({err})") from None
    if fortran:
        raise RunError(f"cannot map {where}: it is stored in Fortran order; save it with "
                       "numpy.save(path, numpy.ascontiguousarray(a))")
    if dtype.hasobject:
        raise RunError(f"cannot read {where}: it holds Python objects, not numbers")
    return tuple(shape), dtype, f.tell() - start


def map_npy(path: Path) -> Mapped:
    """A .npy file, mapped."""
    try:
        with open(path, "rb") as f:
            shape, dtype, offset = _npy_header(f, str(path))
    except OSError as err:
        raise RunError(f"cannot read {path}: {err.strerror or err}") from None
    return Mapped(path, offset, shape, dtype)


def npy_nbytes(path: Path) -> int:
    with open(path, "rb") as f:
        shape, dtype, _ = _npy_header(f, str(path))
    return int(np.prod(shape)) * dtype.itemsize


def mappable_members(path: Path, least: int) -> dict[str, Mapped]:
    """The arrays of an .npz stored without compression (numpy.savez, not savez_compressed) that
    hold more than `least` bytes, mapped where they lie in the zip; the others are read as usual."""
    out: dict[str, Mapped] = {}
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
            for info in zf.infolist():
                if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                    continue
                if info.file_size <= least:
                    continue
                f.seek(info.header_offset)
                local = f.read(_LOCAL_HEADER)
                if len(local) < _LOCAL_HEADER or local[:4] != b"PK\x03\x04":
                    continue  # let the ordinary reader report what is wrong
                name_len = int.from_bytes(local[26:28], "little")
                extra_len = int.from_bytes(local[28:30], "little")
                f.seek(info.header_offset + _LOCAL_HEADER + name_len + extra_len)
                where = f"{path}: array '{info.filename[:-4]}'"
                shape, dtype, header = _npy_header(f, where)
                offset = info.header_offset + _LOCAL_HEADER + name_len + extra_len + header
                out[info.filename[:-4]] = Mapped(path, offset, shape, dtype)
    except (zipfile.BadZipFile, OSError):
        return {}  # the ordinary reader names the problem
    return out


def write_npy_header(f: Any, shape: tuple[int, ...], dtype: np.dtype, total: int = 128) -> None:
    """A .npy version 1.0 header padded to `total` bytes, so it can be rewritten in place once the
    final sample count is known (a shorter count still fits)."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    body = text.encode("latin1")
    room = total - 10 - 1  # magic and version (8), length (2); the header ends in a newline
    if len(body) > room:
        raise AssertionError(f"npy header {text} longer than {room} bytes")
    f.write(b"\x93NUMPY\x01\x00" + (total - 10).to_bytes(2, "little") + body + b" " * (room - len(body))
            + b"\n")


class NpyFolder:
    """`npz("folder")`: a folder of .npy files, one array per file named by its stem; what
    Npz is for an .npz file, and each file larger than MAP_BYTES is mapped rather than read."""

    def __init__(self, path: Path):
        self.path = path
        self.paths = {p.stem: p for p in sorted(path.glob("*.npy")) if not p.name.startswith(".")}
        self.files = list(self.paths)

    def mapped(self, least: int, names: Iterable[str]) -> dict[str, Mapped]:
        """The files of `names` (those a model reads) of more than `least` bytes, mapped; what is
        not a regular file (a folder, a pipe, a broken link) is left to __getitem__, which says so."""
        out = {}
        for k in names:
            p = self.paths.get(k)
            if p is not None and p.is_file() and npy_nbytes(p) > least:
                out[k] = map_npy(p)
        return out

    def __getitem__(self, name: str) -> np.ndarray:
        path = self.paths[name]
        try:
            if not path.is_file():  # a folder, a pipe (which would never end), a broken link
                raise RunError(f"cannot read data file {path}: not a regular file")
            return np.asarray(np.load(path, allow_pickle=False))
        except OSError as err:
            raise RunError(f"cannot read data file {path}: {err.strerror or err}") from None
        except (ValueError, EOFError) as err:
            problem = ("holds Python objects, not numbers" if "allow_pickle" in str(err)
                       else f"is not a .npy array, or a truncated one ({err})")
            raise RunError(f"cannot read data file {path}: it {problem}") from None

    def __enter__(self) -> NpyFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
