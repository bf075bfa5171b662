"""The values of a string input (a category), from whatever array holds them."""

from __future__ import annotations

import numpy as np

from dlspec.spec.errors import RunError


def as_strings(values: np.ndarray, where: str) -> np.ndarray:
    """A string input's values as an object array of str: text arrays (numpy's U, or S of UTF-8
    bytes); numbers are refused, not read as categories by their digits."""
    if values.dtype.kind == "S":
        try:
            return np.array([v.decode("utf-8") for v in values.ravel()], dtype=object).reshape(values.shape)
        except UnicodeDecodeError as err:
            raise RunError(f"{where}: the bytes are not UTF-8 text ({err.reason})") from None
    if values.dtype.kind == "O" and all(isinstance(v, str) for v in values.ravel()):
        return values
    if values.dtype.kind != "U":
        raise RunError(f"{where}: is a string input, and the array holds {values.dtype}: save its values "
                       "as text (numpy.array([...], dtype=str))")
    return values.astype(object)
