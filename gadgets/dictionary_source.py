"""The dictionary a scan is matched with: a configured file, or one built for the scan's schedule and cached.

Gadget processes start afresh for every scan, so a built dictionary is cached on disk
(mrf_core.physics.dictionary.cached_dictionary, keyed by the schedule hash and every build setting); later scans
(and the other gadget of the chain that needs the same dictionary, e.g. reconstruct for its basis and
map_dictionary for matching) load it in well under a second.
"""

from __future__ import annotations

import logging
import time

import numpy as np

import mrf_core
from gadgets.properties import Property, choice, integer, number, optional_path
from mrf_core.physics.dictionary import GRIDS, Dictionary, DictionaryGrid, cached_dictionary, percent_grid
from mrf_core.physics.sequence import FispSchedule

log = logging.getLogger(__name__)


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
    Property("cache_dir", str(mrf_core.cache_dir("dictionaries")), optional_path,
             "folder caching built dictionaries (keyed by schedule hash + settings); empty: no cache"),
)


def _grid(settings) -> DictionaryGrid:
    b1_axis = np.asarray(settings.b1_values)
    if settings.grid == "percent":
        return percent_grid(settings.grid_step_pct, b1_axis=b1_axis)
    return GRIDS[settings.grid](b1_axis=b1_axis)


def dictionary_for(schedule: FispSchedule, settings) -> Dictionary:
    """The dictionary for `schedule` under `settings` (a namespace with DICTIONARY_PROPERTIES)."""
    start = time.perf_counter()
    if settings.dictionary_file is not None:
        dictionary = Dictionary.load(settings.dictionary_file, schedule=schedule, fingerprints=False)
        log.info("dictionary %s loaded in %.2f s: %d atoms, basis rank %d", settings.dictionary_file,
                 time.perf_counter() - start, dictionary.n_atoms, dictionary.basis.rank)
        return dictionary
    return cached_dictionary(schedule, _grid(settings), settings.n_states, settings.dictionary_rank,
                             settings.cache_dir)
