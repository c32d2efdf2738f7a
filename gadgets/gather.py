"""The gather stage of gadget reconstruct: the scan's header and acquisitions -> complete slices.

Properties choose where the time point, interleave and slice are read from (`index_map`, the syntax of
mrf_core.io.rawio.IndexMap: "timepoint=user_int[0],interleave=kspace_encode_step_1"; empty: the header's
MRF_index_map user parameter, else repetition / kspace_encode_step_1 / slice), a schedule file for
converters that do not write the schedule into the header (it then replaces the header's), and how many
time points a slice may miss. Noise scans go to prewhitening (mrf_core.recon.gather buffers them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from gadgets.properties import Property, number, optional_path, text
from mrf_core.io.rawio import IndexMap, ScanInfo, validate_header
from mrf_core.physics.sequence import FispSchedule, load_schedule
from mrf_core.recon.gather import GatherError, SliceData, SliceGatherer

log = logging.getLogger(__name__)

GATHER_PROPERTIES = (
    Property("index_map", "", text,
             "acquisition fields of time point, interleave and slice, e.g. 'timepoint=user_int[0]'; "
             "empty: the header's MRF_index_map, else repetition / kspace_encode_step_1 / slice"),
    Property("schedule_file", "", optional_path,
             "schedule file (JSON or CSV, mrf_core.physics.sequence) replacing the header's sequenceParameters; "
             "empty: the header's"),
    Property("max_missing_fraction", "0", number(0.0, 0.99),
             "fraction of a slice's readouts that may be missing (0: a slice must be complete)"),
)


def scan_info(header, settings) -> ScanInfo:
    """The validated header, with the configured index map and schedule file applied."""
    if settings.schedule_file is not None:
        schedule = load_schedule(settings.schedule_file)
        try:
            stated = FispSchedule.from_ismrmrd(header)
        except ValueError:
            stated = None
        if stated is not None and stated.hash != schedule.hash:
            log.warning("schedule_file %s (hash %s) replaces the header's schedule (hash %s)",
                        settings.schedule_file, schedule.hash, stated.hash)
        schedule.to_ismrmrd(header)
    index_map = IndexMap.from_string(settings.index_map) if settings.index_map else None
    info = validate_header(header, index_map)
    log.info("scan: schedule %s (%d TRs, hash %s), matrix %d, FOV %g mm, %s slices, %s channels, index map %s",
             info.schedule.name, info.schedule.n_timepoints, info.schedule.hash, info.matrix, info.fov_mm,
             info.n_slices or "?", info.n_channels or "?", info.index_map.to_string())
    return info


def gathered(acquisitions: Iterable, info: ScanInfo, settings) -> Iterator[SliceData]:
    """Complete slices as they fill up, then what is left when the stream ends; a stream without imaging
    readouts is a GatherError."""
    gatherer = SliceGatherer(info, settings.max_missing_fraction)
    n_slices = 0
    for acquisition in acquisitions:
        for data in gatherer.add(acquisition):
            n_slices += 1
            yield data
    for data in gatherer.finish():
        n_slices += 1
        yield data
    if n_slices == 0:
        raise GatherError("the stream closed without imaging acquisitions: nothing to reconstruct")
