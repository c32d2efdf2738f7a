"""The dictionary a scan is matched with: a configured file, or one built for the scan's schedule and cached.

Gadget processes start afresh for every scan, so a built dictionary is cached on disk, keyed by the
schedule hash and every build setting; later scans (and the other gadget of the chain that needs the same
dictionary, e.g. reconstruct for its basis and map_dictionary for matching) load it in well under a
second. Cached files are compressed-only (subspace matching needs no time-domain fingerprints) and written
whole or not at all, so processes that build the same key at once cannot corrupt each other.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np

import mrf_core
from gadgets.properties import Property, choice, integer, number, optional_path
from mrf_core.dictionary import GRIDS, Dictionary, DictionaryError, DictionaryGrid, build_dictionary, percent_grid
from mrf_core.sequence import FispSchedule

log = logging.getLogger(__name__)


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mrf-gadgetron", "dictionaries")


def _b1_values(value: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in value.split(",") if v.strip())
    if not values or any(not 0.1 <= v <= 3.0 for v in values):
        raise ValueError("must be a comma-separated list of relative B1 values in [0.1, 3]")
    return values


DICTIONARY_PROPERTIES = (
    Property("dictionary_file", "", optional_path,
             "a dictionary HDF5 file (mrf dictionary build) to use; empty: build one for the scan's schedule"),
    Property("grid", "percent", choice(*GRIDS), "grid of a built dictionary: percent, song or oksuz"),
    Property("grid_step_pct", "5", number(0.0, 100.0, low_open=True), "step of the percent grid, %"),
    Property("b1_values", "1.0", _b1_values, "B1 axis of a built dictionary (comma-separated, relative)"),
    Property("n_states", "50", integer(2, 1000), "EPG states of a built dictionary"),
    Property("dictionary_rank", "10", integer(1, 64), "SVD basis rank of a built dictionary"),
    Property("cache_dir", default_cache_dir(), optional_path,
             "folder caching built dictionaries (keyed by schedule hash + settings); empty: no cache"),
)


def _grid(settings) -> DictionaryGrid:
    b1_axis = np.asarray(settings.b1_values)
    if settings.grid == "percent":
        return percent_grid(settings.grid_step_pct, b1_axis=b1_axis)
    return GRIDS[settings.grid](b1_axis=b1_axis)


def cache_key(schedule: FispSchedule, grid: DictionaryGrid, n_states: int, rank: int) -> str:
    """Schedule hash + a digest of the grid axes, EPG states, rank and the package version."""
    h = hashlib.sha256()
    for axis in (grid.t1_axis_ms, grid.t2_axis_ms, grid.b1_axis):
        h.update(np.asarray(axis, dtype=np.float64).round(6).tobytes())
    h.update(f"{grid.t2_rule},{n_states},{rank},{mrf_core.__version__}".encode())
    return f"{schedule.hash}_{grid.name}_{h.hexdigest()[:12]}"


def dictionary_for(schedule: FispSchedule, settings) -> Dictionary:
    """The dictionary for `schedule` under `settings` (a namespace with DICTIONARY_PROPERTIES)."""
    start = time.perf_counter()
    if settings.dictionary_file is not None:
        dictionary = Dictionary.load(settings.dictionary_file, schedule=schedule, fingerprints=False)
        log.info("dictionary %s loaded in %.2f s: %d atoms, basis rank %d", settings.dictionary_file,
                 time.perf_counter() - start, dictionary.n_atoms, dictionary.basis.rank)
        return dictionary
    grid = _grid(settings)
    cached = None
    if settings.cache_dir is not None:
        key = cache_key(schedule, grid, settings.n_states, settings.dictionary_rank)
        cached = Path(settings.cache_dir) / f"dict_{key}.h5"
        if cached.is_file():
            try:
                dictionary = Dictionary.load(cached, schedule=schedule, fingerprints=False)
                log.info("dictionary from cache %s in %.2f s (%d atoms)", cached, time.perf_counter() - start,
                         dictionary.n_atoms)
                return dictionary
            except DictionaryError as exc:
                log.warning("cached dictionary %s is unusable (%s); building it again", cached, exc)
    dictionary = build_dictionary(schedule, grid, n_states=settings.n_states, rank=settings.dictionary_rank,
                                  keep_fingerprints=False, progress=False)
    log.info("dictionary built in %.2f s: grid %s, %d atoms, %d TRs, basis rank %d", time.perf_counter() - start,
             grid.name, dictionary.n_atoms, schedule.n_timepoints, dictionary.basis.rank)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            dictionary.save(cached)
            log.info("dictionary cached as %s", cached)
        except OSError as exc:
            log.warning("could not cache the dictionary in %s: %s", cached.parent, exc)
    return dictionary

