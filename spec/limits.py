"""The documented limits of the language (README, "Limits"): each keeps the work a spec can ask
for bounded, and each is checked before that work, as an error at the spec's own text."""

from __future__ import annotations

MAX_SOURCE_BYTES = 256 * 1024  # a spec and its imports together; parsing takes ~10 s per MiB here
MAX_IMPORTED_FILES = 64  # files a spec imports, directly or through others
MAX_NESTING = 64  # brackets, operators, calls, residuals, loops and repeats inside one another; extends
MAX_LIST_ITEMS = 10_000  # items of one `[...]` list
MAX_INT = 2**63 - 1  # any whole number a spec writes or computes, in absolute value (int64)
MAX_SIZE = 2**20  # a dimension, channel count, width, kernel, stride, padding, factor or batch size
MAX_SAMPLE_VALUES = 2**28  # values per sample of a declared tensor or of a layer's output
MAX_REPEAT = 1_000  # `x * n`
MAX_EXPANDED = 10_000  # layers, block calls, loop passes and repeat copies of one model
MAX_EPOCHS = 1_000_000
FLOAT32_MAX = 3.4028234663852886e38  # the largest float32, and the smallest normal one: a setting the
FLOAT32_TINY = 1.1754943508222875e-38  # graph compares in float32 stays finite and above 0 there
