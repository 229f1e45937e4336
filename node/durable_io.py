"""Low-level file writes shared by the journal and the event archive.

Both are append-only files whose bytes must reach the disk whole: a write that
is retried until every byte is written, fdatasync, and the check that what
follows a torn record is only zeros (what a crash leaves once the file size
reached the disk but the data did not).
"""

from __future__ import annotations

import errno
import os
from typing import BinaryIO

READ_CHUNK_BYTES = 1 << 20


def datasync(fd: int) -> None:
    """fdatasync where available (data plus the file size, enough to read it back), else fsync."""
    getattr(os, "fdatasync", os.fsync)(fd)


def pwrite_all(fd: int, data: bytes, offset_bytes: int) -> None:
    """Write all of `data` at `offset_bytes`; a write that makes no progress is an I/O error."""
    view = memoryview(data)
    while view:
        written_bytes = os.pwrite(fd, view, offset_bytes)
        if written_bytes <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written_bytes:]
        offset_bytes += written_bytes


def rest_is_zero(reader: BinaryIO) -> bool:
    """Whether everything from the reader's position to the end is zero bytes."""
    while chunk := reader.read(READ_CHUNK_BYTES):
        if chunk.count(0) != len(chunk):
            return False
    return True
