"""`images("folder", size=[H, W])`: a folder of class subfolders, or a .csv/.json manifest, of
PNG/JPEG/BMP/WebP files, decoded once (Pillow) into a uint8 .npy cache that later epochs and runs
read through a memory map: they decode nothing.

The cache is keyed by the files' names, sizes and modification times, their labels, and the size,
policy and layout they are decoded to; a changed file makes a new key. It is written to a
temporary file and renamed into place, and its .json record (labels, class names, skipped files) is
written last, so a cache without its record is never read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from dlspec.files import atomic_file, atomic_write
from dlspec.image_kinds import EXTENSIONS, POLICIES
from dlspec.shards import Mapped, map_npy, write_npy_header
from dlspec.spec import model as m
from dlspec.spec.errors import RunError, did_you_mean, listed
from dlspec.spec.limits import MAX_SIZE

KINDS = "PNG/JPEG/BMP/WebP"
POLICY = "image_policy"  # model metadata: how the trained model's images were fitted to its input size
_VERSION = 1  # of the cache's layout: a change makes every old key miss
_CHUNK = 512  # files decoded per round of the thread pool
_SHOWN = 10  # bad files listed by name


@dataclass(frozen=True)
class Layout:
    """How the model's input holds one image: `channels` 1 (grayscale) or 3 (RGB), before the
    height and width (N, C, H, W), after them (N, H, W, C), or none at all (N, H, W)."""

    height: int
    width: int
    channels: int
    order: str  # "chw", "hwc" or "hw"

    @property
    def shape(self) -> tuple[int, ...]:
        h, w, c = self.height, self.width, self.channels
        return {"chw": (c, h, w), "hwc": (h, w, c), "hw": (h, w)}[self.order]


def layout_of(decl: m.TensorDecl, size: list[int] | None, where: str) -> Layout:
    """The image layout the input `decl` declares, checked against `size=[H, W]`."""
    dims = decl.shape[1:]
    shown = f"{decl.dtype}[{', '.join(str(d) for d in decl.shape)}]"
    if len(dims) == 3 and dims[0] in (1, 3):
        c, h, w, order = dims[0], dims[1], dims[2], "chw"
    elif len(dims) == 3 and dims[2] in (1, 3):
        h, w, c, order = dims[0], dims[1], dims[2], "hwc"
    elif len(dims) == 2:
        h, w, c, order = dims[0], dims[1], 1, "hw"
    else:
        raise RunError(f"{where}: input '{decl.name}' is {shown}; images need [N, C, H, W] or "
                       "[N, H, W, C] with C 1 (grayscale) or 3 (RGB), or [N, H, W] (grayscale)")
    if np.dtype(decl.dtype).kind != "f" and decl.dtype != "uint8":
        raise RunError(f"{where}: input '{decl.name}' is {shown}; pixels (0 to 255) go into a float or "
                       "uint8 input")
    if size is not None:
        for name, want, got in (("height", h, size[0]), ("width", w, size[1])):
            if isinstance(want, int) and want != got:
                raise RunError(f"{where}: size={list(size)} gives {name} {got}, but input '{decl.name}' "
                               f"is {shown}")
        h, w = size
    if not isinstance(h, int) or not isinstance(w, int):
        raise RunError(f"{where}: input '{decl.name}' is {shown}, so the image size is not fixed: "
                       "give it, e.g. size=[32, 32]")
    assert isinstance(c, int)
    return Layout(h, w, c, order)


# ---- decoding one file ----
def read_image(path: str | Path, layout: Layout, policy: str = "resize") -> np.ndarray:
    """One image file as uint8 pixels of `layout`'s shape: turned upright by its EXIF orientation,
    converted to grayscale or RGB, then fitted to the size by `policy`: `resize` stretches it,
    `center_crop` scales its shorter side to fit and crops the middle, `pad` scales its longer side
    to fit and pads with black. Training and prediction decode with this one function.
    Raises OSError or ValueError for a file that is not a readable image, ValueError too for one
    of more pixels than Pillow decodes without warning (MAX_IMAGE_PIXELS: a decompression bomb)."""
    from PIL import Image, ImageOps

    # Pillow warns past MAX_IMAGE_PIXELS (and refuses past twice that): the size is checked here
    # instead, as a filter toggled per call is not safe across the decoding threads
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        with Image.open(path) as img:
            most = Image.MAX_IMAGE_PIXELS
            if most and img.width * img.height > most:
                raise ValueError(f"{img.width}x{img.height} pixels is more than the {most:,} decoded "
                                 "without a decompression-bomb warning")
            img.load()  # decodes now: a truncated or corrupt file fails here
            upright = _eight_bits(ImageOps.exif_transpose(img))
            pixels = upright.convert("L" if layout.channels == 1 else "RGB")
    except (SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(str(err) or type(err).__name__) from None
    fitted = _fit(pixels, layout.width, layout.height, policy)
    a = np.asarray(fitted, np.uint8)
    if layout.order == "chw":
        return np.ascontiguousarray(a.reshape(layout.height, layout.width, -1).transpose(2, 0, 1))
    return a.reshape(layout.shape)


def _eight_bits(img: Any) -> Any:
    """A 16-bit grayscale image (Pillow's modes I;16* and I, 0 to 65535) scaled to 8 bits:
    converting it as it is clips every value past 255 to white."""
    from PIL import Image

    if not (img.mode.startswith("I;16") or img.mode == "I"):
        return img
    wide = np.asarray(img, np.float64) / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.rint(wide), 0, 255).astype(np.uint8), "L")


def _fit(img: Any, w: int, h: int, policy: str) -> Any:
    from PIL import Image

    if img.size == (w, h):
        return img
    if policy == "resize":
        return img.resize((w, h), Image.Resampling.BILINEAR)
    iw, ih = img.size
    scale = max(w / iw, h / ih) if policy == "center_crop" else min(w / iw, h / ih)
    sw, sh = max(1, round(iw * scale)), max(1, round(ih * scale))
    scaled = img.resize((sw, sh), Image.Resampling.BILINEAR)
    if policy == "center_crop":
        left, top = (sw - w) // 2, (sh - h) // 2
        return scaled.crop((left, top, left + w, top + h))
    canvas = Image.new(img.mode, (w, h))  # black
    canvas.paste(scaled, ((w - sw) // 2, (h - sh) // 2))
    return canvas


def with_policy(model: onnx.ModelProto, data: m.Data | None) -> onnx.ModelProto:
    """The model with metadata `image_policy`, the policy its images(...) data was fitted by, so
    that predict fits image files the same way; a model trained on other data is left as it is."""
    if isinstance(data, m.ImagesData):
        props = {p.key: p.value for p in model.metadata_props}
        helper.set_model_props(model, {**props, POLICY: data.policy})
    return model


def policy_of(metadata: Mapping[str, str]) -> str | None:
    """The `image_policy` of a model's metadata (key -> value, as an onnxruntime session's
    custom_metadata_map); None for a model without one (not trained on images(...))."""
    found = metadata.get(POLICY)
    if found is not None and found not in POLICIES:
        raise RunError(f"the model's metadata {POLICY} is {found!r:.40}, not one of {', '.join(POLICIES)}")
    return found


def decoded(path: Path, layout: Layout, policy: str) -> np.ndarray:
    """read_image, where a file that is not a readable image is a RunError naming it."""
    found = _try_read(path, layout, policy)
    if isinstance(found, str):
        raise RunError(f"{path}: not a readable image: {found}")
    return found


def _try_read(path: Path, layout: Layout, policy: str) -> np.ndarray | str:
    """The pixels, or why the file cannot be read."""
    try:
        return read_image(path, layout, policy)
    except FileNotFoundError:
        return "no such file"
    except (OSError, ValueError) as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__


# ---- what a data set lists ----
@dataclass(frozen=True)
class Listing:
    files: list[Path]
    labels: list[int]
    class_names: list[str] | None  # None: a manifest of integer labels


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in EXTENSIONS and not p.name.startswith(".")


def list_folder(root: Path, note: Callable[[str], None]) -> Listing:
    """One subfolder per class (classes numbered in sorted order, as torchvision's ImageFolder);
    images anywhere below a class folder belong to it."""
    try:
        entries = list(root.iterdir())
    except OSError as err:
        raise RunError(f"cannot read folder {root}: {err.strerror or err}") from None
    classes = sorted(p.name for p in entries if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise RunError(f"{root}: no class folders; images(...) expects one subfolder per class of "
                       f"{KINDS} files (or a .csv/.json manifest)")
    files: list[Path] = []
    labels: list[int] = []
    ignored: list[Path] = [p for p in entries if p.is_file() and not p.name.startswith(".")]
    for label, name in enumerate(classes):
        found = sorted(p for p in _files_below(root / name)
                       if not any(part.startswith(".") for part in p.relative_to(root).parts))
        images = [p for p in found if _is_image(p)]
        ignored += [p for p in found if not _is_image(p)]
        if not images:
            raise RunError(f"{root / name}: class folder '{name}' holds no {KINDS} files; add images "
                           "or remove the folder (every class needs samples)")
        files += images
        labels += [label] * len(images)
    if ignored:
        note(f"{root}: ignored {len(ignored)} file(s) that are not {KINDS} images "
             f"(first: {ignored[0].relative_to(root)})")
    return Listing(files, labels, classes)


def _files_below(folder: Path) -> list[Path]:
    """Every file below `folder` (linked files too; linked folders are not entered, so a link loop
    ends); a folder that cannot be read is an error, not a class with fewer samples."""
    files: list[Path] = []

    def refuse(err: OSError) -> None:
        raise RunError(f"cannot read folder {err.filename}: {err.strerror or err}")

    for here, _, names in os.walk(folder, onerror=refuse):
        files += [Path(here) / n for n in names if (Path(here) / n).is_file()]
    return files


def list_manifest(path: Path) -> Listing:
    """A .csv with columns `file` and `label`, or a .json list of {"file": ..., "label": ...} (or an
    object file -> label); files are relative to the manifest's folder. Labels that are all whole
    numbers are class indices; otherwise they are class names, numbered in sorted order."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise RunError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    pairs: list[tuple[str, str, str]] = []  # file, label, where
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except ValueError as err:
            raise RunError(f"{path}: not valid JSON ({err})") from None
        except RecursionError:
            raise RunError(f"{path}: not valid JSON for a manifest (nested too deeply)") from None
        items = list(raw.items()) if isinstance(raw, dict) else raw
        if not isinstance(items, list):
            raise RunError(f"{path}: a manifest is a list of {{\"file\": ..., \"label\": ...}} or an object "
                           "file -> label")
        for i, item in enumerate(items):
            if isinstance(item, dict) and "file" in item and "label" in item:
                item = (item["file"], item["label"])
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
                    and isinstance(item[1], (str, int)) and not isinstance(item[1], bool)):
                raise RunError(f"{path}: entry {i + 1} is not a file name and a label: {item!r:.80}")
            pairs.append((item[0], str(item[1]), f"entry {i + 1}"))
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
        except csv.Error as err:
            raise RunError(f"{path}: line {reader.line_num} is not valid csv: {err}") from None
        if not rows:
            raise RunError(f"{path}: empty manifest (a header with columns file and label is expected)")
        header = [h.strip() for h in rows[0][1]]
        for col in ("file", "label"):
            if col not in header:
                raise RunError(f"{path}: no column '{col}'{did_you_mean(col, header)} (the header has: "
                               f"{listed(header)}); a manifest has columns file and label")
        fi, li = header.index("file"), header.index("label")
        for line, r in rows[1:]:
            if len(r) != len(header):
                raise RunError(f"{path}: line {line} has {len(r)} fields; the header has {len(header)}")
            pairs.append((r[fi].strip(), r[li].strip(), f"line {line}"))
    if not pairs:
        raise RunError(f"{path}: the manifest lists no files")
    for name, label, where in pairs:
        if not name or not label:
            raise RunError(f"{path}: {where} has an empty {'file name' if not name else 'label'}")
    names: list[str] | None = None
    if all(_whole(label) for _, label, _ in pairs):
        labels = [int(label) for _, label, _ in pairs]
        bad = next((where for (_, _, where), v in zip(pairs, labels) if v < 0), None)
        if bad is not None:
            raise RunError(f"{path}: {bad} has a negative label; class indices start at 0")
        bad = next((where for (_, _, where), v in zip(pairs, labels) if v >= MAX_SIZE), None)
        if bad is not None:  # a class index past any head's width (and int64's range)
            raise RunError(f"{path}: {bad} has a label of {MAX_SIZE:,} or more: no model has that many "
                           "classes")
    else:
        names = sorted({label for _, label, _ in pairs})
        labels = [names.index(label) for _, label, _ in pairs]
    return Listing([path.parent / name for name, _, _ in pairs], labels, names)


def _whole(text: str) -> bool:
    return text.lstrip("-").isdigit()


# ---- the cache ----
def cache_folder(data: m.ImagesData, spec_dir: Path) -> Path:
    """`cache=` in the spec, else $DLSPEC_CACHE, else $XDG_CACHE_HOME/dlspec (~/.cache/dlspec)."""
    if data.cache is not None:
        return (spec_dir / data.cache).resolve()
    if os.environ.get("DLSPEC_CACHE"):
        return Path(os.environ["DLSPEC_CACHE"]) / "images"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dlspec" / "images"


def cache_key(source: Path, listing: Listing, layout: Layout, policy: str) -> str:
    """'<set digest>-<content digest>': the first names the data set as decoded (its folder, size,
    layout and policy; its old entries are removed when a new one is written), the second
    everything the pixels depend on."""
    entries = []
    for p in listing.files:
        try:
            st = p.stat()
            entries.append([str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            entries.append([str(p), -1, -1])  # missing: a bad file, listed when decoded
    decoded_as = json.dumps({"version": _VERSION, "source": str(source), "shape": list(layout.shape),
                             "order": layout.order, "policy": policy})
    content = json.dumps({"files": entries, "labels": listing.labels, "names": listing.class_names})
    return f"{_digest(decoded_as)[:16]}-{_digest(decoded_as + content)[:32]}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Decoded:
    pixels: Mapped  # [N, *layout.shape] uint8
    labels: np.ndarray  # [N] int64
    class_names: list[str] | None
    bad: list[tuple[str, str]]  # (file, why) of the files left out
    decoded: bool  # decoded now (False: read from the cache)


def load(source: Path, listing: Listing, layout: Layout, policy: str, folder: Path) -> Decoded:
    """The cached pixels of `listing`, decoding them first when no cache entry matches."""
    key = cache_key(source, listing, layout, policy)
    npy, record = folder / f"{key}.npy", folder / f"{key}.json"
    cached = _read_cache(npy, record, layout)
    if cached is not None:
        return cached
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"cannot make the image cache folder {folder}: {err.strerror or err}") from None
    labels, bad = _decode_into(npy, listing, layout, policy)
    info = {"labels": labels, "class_names": listing.class_names, "bad": bad, "source": str(source)}
    atomic_write(record, (json.dumps(info) + "\n").encode())
    for old in folder.glob(f"{key.split('-')[0]}-*"):  # earlier entries of this data set
        if old.name not in (npy.name, record.name) and old.suffix in (".npy", ".json"):
            old.unlink(missing_ok=True)
    return Decoded(map_npy(npy), np.asarray(labels, np.int64), listing.class_names,
                   [(f, w) for f, w in bad], decoded=True)


def _read_cache(npy: Path, record: Path, layout: Layout) -> Decoded | None:
    if not (npy.is_file() and record.is_file()):
        return None
    try:
        info = json.loads(record.read_text())
        pixels = map_npy(npy)
        labels = np.asarray(info.get("labels", []), np.int64)
        names, bad = info.get("class_names"), [tuple(b) for b in info.get("bad", [])]
    except (OSError, ValueError, TypeError, AttributeError, OverflowError, RecursionError, RunError):
        return None  # unreadable or damaged: decoded again and rewritten
    if pixels.array.shape != (len(labels), *layout.shape) or pixels.array.dtype != np.uint8:
        return None
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        return None
    return Decoded(pixels, labels, names, bad, decoded=False)


def _decode_into(npy: Path, listing: Listing, layout: Layout,
                 policy: str) -> tuple[list[int], list[list[str]]]:
    """Decode every file (a thread per core: Pillow lets go of the GIL while decoding) straight into
    a temporary .npy beside `npy`, rows in listing order less the bad files, then rename it into
    place. Nothing is held in memory but one round of files."""
    dtype = np.dtype(np.uint8)
    labels: list[int] = []
    bad: list[list[str]] = []
    with atomic_file(npy) as f, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        write_npy_header(f, (len(listing.files), *layout.shape), dtype)
        for lo in range(0, len(listing.files), _CHUNK):
            files = listing.files[lo:lo + _CHUNK]
            for p, label, got in zip(files, listing.labels[lo:lo + _CHUNK],
                                     pool.map(lambda p: _try_read(p, layout, policy), files)):
                if isinstance(got, str):
                    bad.append([str(p), got])
                else:
                    f.write(got.tobytes())
                    labels.append(label)
        f.seek(0)
        write_npy_header(f, (len(labels), *layout.shape), dtype)  # the count less the bad files
    return labels, bad


def open_set(data: m.ImagesData, decl: m.TensorDecl, spec_dir: Path,
             note: Callable[[str], None]) -> tuple[Decoded, Layout]:
    """The decoded images of `data` for the input `decl`: from the cache, or decoded into it now.
    Bad files are an error naming each, unless skip_bad=true leaves them out (and lists them)."""
    source = (spec_dir / data.path).resolve()
    call = f'images("{data.path}")'
    layout = layout_of(decl, data.size, call)
    if source.is_dir():
        listing = list_folder(source, note)
    elif source.is_file() and source.suffix.lower() in (".csv", ".json"):
        listing = list_manifest(source)
    elif source.exists():
        raise RunError(f"{call}: {source} is neither a folder of class folders nor a .csv/.json manifest")
    else:
        raise RunError(f"{call}: no such folder {source}")
    folder = cache_folder(data, spec_dir)
    start = time.perf_counter()
    decoded = load(source, listing, layout, data.policy, folder)
    n = len(decoded.labels)
    if decoded.decoded:
        note(f"decoded {n} images of {source} in {time.perf_counter() - start:.1f}s into the cache {folder}")
    else:
        note(f"read {n} images of {source} from the cache {folder} (nothing decoded)")
    if decoded.bad and not data.skip_bad:
        raise RunError(f"{call}: {len(decoded.bad)} file(s) cannot be read as images (skip_bad=true "
                       f"trains without them):{describe_bad(decoded.bad)}")
    if decoded.bad:
        note(f"{call}: skipped {len(decoded.bad)} file(s) that cannot be read as images:"
             f"{describe_bad(decoded.bad)}")
    if decoded.class_names is not None:
        empty = [c for i, c in enumerate(decoded.class_names) if not np.any(decoded.labels == i)]
        if empty:
            raise RunError(f"{call}: class '{empty[0]}' has no readable images left; every class needs "
                           "samples")
    if n == 0:
        raise RunError(f"{call}: no readable images")
    return decoded, layout


def describe_bad(bad: list[tuple[str, str]]) -> str:
    shown = "".join(f"\n  {f}: {why}" for f, why in bad[:_SHOWN])
    more = f"\n  and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
    return shown + more
