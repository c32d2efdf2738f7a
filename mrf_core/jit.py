"""numba helpers shared by the compiled kernels: njit with an on-disk cache where one can be written, and a
scoped thread count (the machine's cores are shared with other work)."""

from __future__ import annotations

import logging

import numba

log = logging.getLogger(__name__)


def njit_cached(**options):
    """numba.njit with its on-disk cache where numba finds a writable cache folder (NUMBA_CACHE_DIR, the
    package's __pycache__, the user's cache folder), else without one (compiled once per process): numba
    raises at decoration, so at import, when no cache folder is writable, as for an installed package run
    by another user with a read-only home."""

    def decorate(func):
        try:
            return numba.njit(cache=True, **options)(func)
        except RuntimeError as exc:  # "cannot cache function ...: no locator available for file ..."
            log.info("numba: %s is compiled without a cache (%s)", func.__name__, exc)
            return numba.njit(**options)(func)

    return decorate


class numba_threads:
    """Numba's thread count limited to n (at most its pool's size) for a block."""

    def __init__(self, n: int):
        self.n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))

    def __enter__(self):
        self.previous = numba.get_num_threads()
        numba.set_num_threads(self.n)

    def __exit__(self, *exc):
        numba.set_num_threads(self.previous)
