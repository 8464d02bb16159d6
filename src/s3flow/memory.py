"""Process memory: keep glibc's malloc from holding on to freed buffers.

glibc serves a large ``malloc`` with ``mmap`` (returned to the system on
``free``) only above a threshold, and raises that threshold to the size of
every mmapped block freed, up to 32 MiB. A streaming pipeline allocates and
frees ~1 MiB buffers (blocks, decompressed pieces, Arrow arrays) on several
threads, so after the first few the threshold has risen and these buffers come
from the per-thread heaps instead, which keep freed memory: in the 2 GiB
csv-to-kafka test that was ~26 MB of peak RSS (228 MB -> 202 MB). Fixing the
threshold (``mallopt(M_MMAP_THRESHOLD)``, which also turns off the dynamic
adjustment) keeps large buffers out of the heaps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("s3flow.memory")

#: glibc's ``M_MMAP_THRESHOLD`` parameter of ``mallopt``.
_M_MMAP_THRESHOLD = -3
#: glibc's upper bound for it on 64-bit systems (``HEAP_MAX_SIZE / 2``).
MAX_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024


def set_mmap_threshold(nbytes: int) -> bool:
    """Fix malloc's mmap threshold at ``nbytes`` in this process; True if applied.

    Does nothing (False) when ``nbytes`` is 0, when ``MALLOC_MMAP_THRESHOLD_``
    is set in the environment (the operator's own choice wins), or when the C
    library is not glibc.
    """
    if nbytes <= 0 or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    if not 0 < nbytes <= MAX_MMAP_THRESHOLD_BYTES:
        raise ValueError(f"mmap threshold {nbytes} is outside 1..{MAX_MMAP_THRESHOLD_BYTES}")
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False  # not glibc (musl, macOS): nothing to tune
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, nbytes))
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD, %d) was refused", nbytes)
    return ok
