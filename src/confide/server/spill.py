"""An update the server must hold past its receive buffer, kept out of the server's memory when it is large.

In the job's first round the server holds its first few updates until their norms set the bound (server/guard.py).
A small update is copied; a large one is written to an unnamed temporary file and read back through a read-only
memory map, so the server's resident memory stays at the global model, the aggregate and the one update being
received (the mapped pages are the file's, read as the update is folded and given back once it is dropped).
"""

from __future__ import annotations

import mmap
import tempfile

SPILL_BYTES = 16 << 20
"""Updates at least this large are held in a file rather than in memory."""


def detached(payload: bytes | memoryview, *, spill_bytes: int | None = None) -> bytes | memoryview:
    """``payload``'s bytes, independent of the buffer they arrived in: a copy, or (from ``spill_bytes``, by default
    :data:`SPILL_BYTES`) a map of a file holding them."""
    view = memoryview(payload)
    if view.nbytes < (SPILL_BYTES if spill_bytes is None else spill_bytes):
        return bytes(view)
    with tempfile.TemporaryFile(prefix="confide-held-") as handle:  # unlinked at once: gone with its last map
        handle.write(view)
        handle.flush()
        mapped = mmap.mmap(handle.fileno(), view.nbytes, access=mmap.ACCESS_READ)
    return memoryview(mapped)


def evict(held: bytes | memoryview | None) -> None:
    """Give back the resident pages of a held update kept in a file (read again from the file when folded)."""
    if isinstance(held, memoryview) and isinstance(held.obj, mmap.mmap):
        held.obj.madvise(mmap.MADV_DONTNEED)
