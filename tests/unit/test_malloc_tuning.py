"""malloc tuning: applied, skipped or refused as documented (runs in a child process:
the setting is process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from s3flow.memory import MAX_MMAP_THRESHOLD_BYTES, set_mmap_threshold

# A child that frees a 4 MiB block (glibc then raises its dynamic threshold above
# 2 MiB), allocates 2 MiB blocks and reports how many of them were mmapped (RSS grows
# by less than the blocks when they come from the already-grown heap).
_PROBE = r"""
import ctypes, sys
from s3flow.memory import set_mmap_threshold
applied = set_mmap_threshold(int(sys.argv[1]))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(4 << 20))  # an mmapped block freed: threshold rises to 4 MiB
class mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
        ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
         "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = mallinfo2
blocks = [libc.malloc(2 << 20) for _ in range(8)]
print(int(applied), libc.mallinfo2().hblks)
"""


def _probe(threshold: int, env: dict[str, str] | None = None) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(threshold)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    ).stdout.split()
    return int(out[0]), int(out[1])


def test_a_fixed_threshold_keeps_large_blocks_out_of_the_heap() -> None:
    applied, mmapped = _probe(1 << 20)
    assert applied == 1
    assert mmapped >= 8  # all eight 2 MiB blocks were mmapped


def test_without_it_glibc_raises_the_threshold_and_heaps_keep_them() -> None:
    applied, mmapped = _probe(0)
    assert applied == 0
    assert mmapped < 8  # the probe can tell the difference


def test_the_operators_environment_variable_wins() -> None:
    applied, _ = _probe(1 << 20, {"MALLOC_MMAP_THRESHOLD_": "131072"})
    assert applied == 0


def test_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="outside"):
        set_mmap_threshold(MAX_MMAP_THRESHOLD_BYTES + 1)
