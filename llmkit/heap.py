"""Giving freed memory back to the operating system.

glibc's allocator keeps freed blocks below its mmap threshold inside the heap, and that threshold
rises by itself to the size of the large blocks a program frees (up to 32 MB). A program that
allocates big temporaries between small blocks that stay, as loading a quantized model does, or
whose bursts of work leave the heap at its peak, as a server's do, then holds its peak resident
memory for good: freed, but not returned. `malloc_trim` returns the free pages of every arena.
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc's; other C libraries have none and need none
    except (OSError, AttributeError):
        return None


def return_freed_memory() -> None:
    """Hand the heap's free pages back (a few milliseconds; a no-op off glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
