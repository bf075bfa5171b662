"""A folder of class subfolders of images named on the command line (`dlspec eval MODEL FOLDER`):
every image decoded as images(...) decodes it, labelled by the trained model's class names.

Unlike the training data it is read whole and not cached: eval writes nothing, not even a cache
entry for a folder it refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dlspec.images import KINDS, decoded, layout_of, list_folder
from dlspec.labels import Classes
from dlspec.spec import model as m
from dlspec.spec.errors import RunError, did_you_mean


def labelled_images(root: Path, model: m.Model, classes: Classes, class_names: Mapping[str, list[str]],
                    settings: m.ImagesData | None, recorded: str | None = None) -> dict[str, np.ndarray]:
    """The model's one image input and its one target, the class labels: each subfolder's index
    among the model's class names (`class_names`, by target), or, for a model without names, the
    subfolder's own name read as a class index. `settings`: the spec's images(...), whose size and
    fit policy the images are decoded by (None: the input's declared size, resized); `recorded`:
    the fit policy the model was trained with, from its metadata, which comes first."""
    if len(model.inputs) != 1 or len(model.targets) != 1:
        raise RunError(f"{root}: an image folder gives one image input and one class label; model "
                       f"{model.name} declares {len(model.inputs)} input(s) and "
                       f"{len(model.targets)} target(s)")
    image, target = model.inputs[0], model.targets[0]
    try:
        entries = list(root.iterdir())
    except OSError as err:  # an internal error before
        raise RunError(f"cannot read folder {root}: {err.strerror or err}") from None
    if not any(p.is_dir() and not p.name.startswith(".") for p in entries):
        raise RunError(f"{root}: no class folders; eval reads one subfolder per class of {KINDS} files "
                       "(`dlspec predict MODEL FILES...` classifies unlabelled images)")
    listing = list_folder(root, lambda _: None)  # files that are not images are passed over
    assert listing.class_names is not None
    width = classes.get(target.name) if isinstance(classes, Mapping) else classes
    index = _class_indices(root, listing.class_names, class_names.get(target.name), width)
    layout = layout_of(image, settings.size if settings else None, str(root))
    policy = recorded or (settings.policy if settings else "resize")
    with ThreadPoolExecutor() as pool:  # Pillow lets go of the GIL while it decodes
        pixels = list(pool.map(lambda p: decoded(p, layout, policy), listing.files))
    return {image.name: np.stack(pixels).astype(image.dtype),
            target.name: index[np.asarray(listing.labels)].astype(target.dtype)}


def _class_indices(root: Path, folders: list[str], names: list[str] | None, width: int | None) -> np.ndarray:
    """The model's class index of each subfolder."""
    if names is not None:
        for folder in folders:
            if folder not in names:
                raise RunError(f"{root / folder}: '{folder}' is not a class of the model"
                               f"{did_you_mean(folder, names)}; its classes are {', '.join(names)}")
        return np.array([names.index(f) for f in folders], np.int64)
    for folder in folders:
        if not folder.isdecimal() or (width is not None and int(folder) >= width):
            span = f"0 to {width - 1}" if width is not None else "0, 1, ..."
            raise RunError(f"{root / folder}: the model has no class names, so its class folders are "
                           f"named by class index ({span}); '{folder}' is not one")
    return np.array([int(f) for f in folders], np.int64)
