"""Read a spec file's bytes: a regular file only, never blocking, never more than a limit."""

from __future__ import annotations

import os
import stat


class NotReadable(Exception):
    """Why a path gives no spec text, in words that follow 'cannot read ...: '."""


def read_regular(path: str, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes.

    Opened without blocking (a FIFO would wait for a writer) and checked on the open descriptor,
    so a device (/dev/zero), a pipe (/proc/self/fd/0) or a directory is refused, not read.
    """
    if "\0" in path:
        raise NotReadable("the path contains a NUL character")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise NotReadable(err.strerror or str(err)) from None
    except ValueError as err:  # a path the OS cannot take (e.g. not encodable)
        raise NotReadable(str(err)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise NotReadable(what)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # the size stat reports can be wrong (/proc), so count what is read
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise NotReadable(f"larger than {limit // 1024} KiB, the limit for spec files")
        return b"".join(chunks)
    except OSError as err:
        raise NotReadable(err.strerror or str(err)) from None
    finally:
        os.close(fd)
