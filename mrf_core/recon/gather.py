"""Gather a stream of ISMRMRD acquisitions into complete MRF slices (file replay or Gadgetron stream).

Noise scans (ACQ_IS_NOISE_MEASUREMENT) are buffered and handed to every slice; other non-imaging scans
are skipped; imaging readouts are validated (mrf_core.io.rawio.AcquisitionValidator: its
RawAcquisitionError propagates) and filed by slice with all their counters. A slice is complete when it
holds all its readouts (n_timepoints x interleaves_per_tr of the header's spiral, 1 per time point without
one, x partitions of a stack of spirals) or when its ACQ_LAST_IN_SLICE readout arrives (2D only);
`finish()` flushes what is left at the end of the stream. Its time points and interleaves are then read
where the stated index map says, checked, or detected (`Layout`); a stack of spirals' partitions are
Fourier transformed along kz into one SliceData per partition (`SliceGatherer._partitions`).

A scan stopped early (time points 0..N-1 present, N below the schedule's) gets the schedule's first N
time points; missing time points before the last are a GatherError naming the slice, the count and the
option, unless `max_missing_fraction` allows them: then the slice is reconstructed from the readouts it
has (the subspace methods need no complete time series). Either way SliceData.warnings (for the images'
meta) and the log say so. A repeated (time point, interleave, partition) triple is always an error.

Layout of SliceData (one row per readout, sorted by time point, then arrival; with one readout per TR
row t is time point t): kspace (R, C, S) complex64, traj (R, S, 2) float32 cycles/FOV, interleave and
timepoint (R,) int64, dcf (R, S) float32, area per sample in (cycles/FOV)^2 of the union of the slice's
interleaves. The DCF: the header's spiral design when the readouts follow it ("sequential": the
design's uniform-set DCF; "golden": that scaled by n_interleaves / readouts, the same density spread
over more rotations), else Pipe-Menon on the union of the distinct trajectories.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import ismrmrd
import numpy as np

from mrf_core.errors import MrfError
from mrf_core.io.rawio import (
    COUNTER_FIELDS,
    AcquisitionValidator,
    RawAcquisitionError,
    ScanInfo,
    counter_values,
    is_imaging,
)
from mrf_core.physics.sequence import FispSchedule
from mrf_core.recon.trajectory import design_spiral, pipe_menon_dcf

log = logging.getLogger(__name__)

_DESIGN_AGREEMENT_CYCLES = 1e-3  # readout trajectories that match the header's design to this use its DCF


class GatherError(MrfError):
    """Acquisitions that do not make a complete slice: the message names the slice and what is wrong."""


@dataclass
class SliceData:
    """One slice's readouts, ready for reconstruction (layout: module docstring)."""

    slice_index: int
    kspace: np.ndarray
    traj: np.ndarray
    interleave: np.ndarray
    dcf: np.ndarray
    matrix: int
    fov_mm: float
    noise: np.ndarray | None
    schedule: FispSchedule
    acquisition_header: ismrmrd.AcquisitionHeader | None = None
    timepoint: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # for the images' meta: missing time points, stopped early
    # (kspace, which of its readouts are not all zero), found as they arrived, their samples checked finite
    # then: the reconstruction uses it while `kspace` is still that array, else checks the samples itself
    arrival_check: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.timepoint is None:
            self.timepoint = np.arange(self.kspace.shape[0], dtype=np.int64)

    @property
    def n_readouts(self) -> int:
        return int(self.kspace.shape[0])

    @property
    def n_coils(self) -> int:
        return int(self.kspace.shape[1])

    @property
    def n_samples(self) -> int:
        return int(self.kspace.shape[2])

    @property
    def n_timepoints(self) -> int:
        return self.schedule.n_timepoints


def _fits_timepoint(values: np.ndarray, n_timepoints: int, per_timepoint: int) -> bool:
    """Values that can be time points: in [0, n_timepoints), none carrying more than per_timepoint readouts,
    and not constant (a schedule has > 1 time point)."""
    if values.min() < 0 or values.max() >= n_timepoints or np.unique(values).size < 2:
        return False
    return int(np.bincount(values).max()) <= per_timepoint


def _seen(cols: dict[str, np.ndarray], fields) -> str:
    varying = [f"{f} {np.unique(cols[f]).size} values ({cols[f].min()}-{cols[f].max()})" for f in fields
               if np.unique(cols[f]).size > 1]
    return "counters that vary: " + (", ".join(varying) if varying else "none")


def _content_labels(contents: list[bytes]) -> np.ndarray:
    """Each item's rank among the distinct items in byte order (np.unique's inverse), by hashing: sorting
    1000 readouts' 32 kB trajectories took 0.33 s, after the slice's last readout."""
    first_seen: dict[bytes, int] = {}
    seen = np.array([first_seen.setdefault(c, len(first_seen)) for c in contents], dtype=np.int64)
    rank = np.empty(len(first_seen), dtype=np.int64)
    rank[[first_seen[c] for c in sorted(first_seen)]] = np.arange(len(first_seen))
    return rank[seen]


def _same_label_same_value(labels: np.ndarray, content: np.ndarray) -> bool:
    """Every label stands for one content value (e.g. readouts of one interleave share one trajectory)."""
    pairs = np.unique(np.stack([labels, content]), axis=1)
    return pairs.shape[1] == np.unique(labels).size


class Layout:
    """Where a slice's time points and interleaves are (arrays over its readouts, in arrival order).

    With an index map stated (setting index_map, or the header's MRF_index_map) its fields are used and
    checked: time points within the schedule and at most interleaves_per_tr readouts each (x partitions);
    one trajectory per interleave when readouts carry `traj`; interleaves within the header description's
    and, for 'mrf_vds', those its per-TR order plays. Without one the layout is detected from the counters
    (COUNTER_FIELDS, in that order of preference): the time point is the counter passing those checks with
    the most distinct values; the interleave the first other counter that passes its checks (readouts with
    `traj` and no such counter: grouped by trajectory; a HargreavesVDS2000 description: Gadgetron's
    kspace_encode_step_1 first). An inconsistent or ambiguous layout is a GatherError naming the counters,
    the counts seen and the index_map that fixes it.
    """

    def __init__(self, gatherer: SliceGatherer, slice_index: int, counters: np.ndarray, numbers: np.ndarray,
                 trajs: list[np.ndarray | None]):
        info, self.validator = gatherer.info, gatherer.validator
        self.where, self.numbers = f"slice {slice_index}", numbers
        self.cols = {name: counters[:, i] for i, name in enumerate(COUNTER_FIELDS)}
        imap = info.index_map
        excluded = {imap.slice} | ({imap.partition} if info.n_partitions > 1 else set())
        self.fields = [f for f in COUNTER_FIELDS if f not in excluded]
        self.n_t = info.schedule.n_timepoints
        self.per_tp = gatherer.readouts_per_timepoint * info.n_partitions
        self.partition = self.cols[imap.partition] if info.n_partitions > 1 else np.zeros(len(numbers), np.int64)
        self.content = None
        if all(t is not None for t in trajs):
            self.content = _content_labels([t.tobytes() for t in trajs])
        if info.index_map_stated:
            self.timepoint_field, self.interleave_field = imap.timepoint, imap.interleave
            self.timepoint, self.interleave = self.cols[imap.timepoint], self.cols[imap.interleave]
            self._check_duplicates()
            self._check_stated_timepoint(imap.timepoint)
            self._check_interleave(self.interleave, imap.interleave)
        else:
            self.timepoint_field = self._detected_timepoint()
            self.interleave_field, self.interleave = self._detected_interleave()
            self.timepoint = self.cols[self.timepoint_field]
            self._check_duplicates()

    # ---- time point -------------------------------------------------------------------------------
    def _timepoint_fits(self) -> list[str]:
        fits = [f for f in self.fields if _fits_timepoint(self.cols[f], self.n_t, self.per_tp)]
        return sorted(fits, key=lambda f: -np.unique(self.cols[f]).size)  # stable: preference order on ties

    def _check_stated_timepoint(self, name: str) -> None:
        values = self.cols[name]
        most = int(np.bincount(values).max())
        if most <= self.per_tp:
            return
        fits = [f for f in self._timepoint_fits() if f != name]
        fix = (f"{fits[0]} fits ({np.unique(self.cols[fits[0]]).size} distinct values): set index_map "
               f"(--index-map, property index_map) to 'timepoint={fits[0]},interleave={name}'" if fits else
               "no counter fits: name the time point's field with index_map (--index-map timepoint=FIELD), or "
               "give this scan's schedule with --schedule-file FILE")
        raise GatherError(
            f"{self.where}: time point field {name} has {np.unique(values).size} distinct values with up to "
            f"{most} readouts each, for a schedule of {self.n_t} time points of {self.per_tp} readout(s): {fix}"
        )

    def _detected_timepoint(self) -> str:
        fits = self._timepoint_fits()
        if not fits:
            raise GatherError(
                f"{self.where}: no counter holds {self.n_t} time points of at most {self.per_tp} readout(s) "
                f"({_seen(self.cols, self.fields)}): name the time point's field with index_map (--index-map "
                "timepoint=FIELD), or give this scan's schedule with --schedule-file FILE"
            )
        best = fits[0]
        rivals = [f for f in fits[1:] if np.unique(self.cols[f]).size == np.unique(self.cols[best]).size
                  and not np.array_equal(self.cols[f], self.cols[best])]
        if rivals:
            raise GatherError(
                f"{self.where}: the time point could be in {best} or {', '.join(rivals)} (each "
                f"{np.unique(self.cols[best]).size} distinct values): name it with index_map (--index-map "
                f"timepoint={best})"
            )
        return best

    # ---- interleave -------------------------------------------------------------------------------
    def _interleave_problem(self, labels: np.ndarray, name: str) -> str | None:
        """Why `labels` cannot be the interleaves, or None."""
        if self.content is not None:
            if not _same_label_same_value(labels, self.content):
                return (f"readouts with one interleave {name} value have different trajectories "
                        f"({np.unique(labels).size} values, {np.unique(self.content).size} trajectories)")
            return None
        n_interleaves = self.validator.n_interleaves
        if labels.min() < 0 or (n_interleaves is not None and labels.max() >= n_interleaves):
            return f"interleave {name} values {labels.min()}-{labels.max()} are outside [0, {n_interleaves})"
        spiral = self.validator.spiral
        if spiral is not None:
            timepoint = self.cols[self.timepoint_field]
            played = np.stack([spiral.interleaves_of_tr(t) for t in range(self.n_t)])[timepoint]
            if not (played == labels[:, None]).any(axis=1).all():
                return f"interleave {name} values are not those the trajectoryDescription plays per time point"
        elif np.unique(labels).size == 1 and (n_interleaves or 1) > 1:
            return (f"interleave {name} is {labels[0]} in every readout, but the trajectoryDescription has "
                    f"{n_interleaves} interleaves")
        return None

    def _check_interleave(self, labels: np.ndarray, name: str) -> None:
        problem = self._interleave_problem(labels, name)
        if problem:
            fits = [f for f in self.fields if f not in (name, self.timepoint_field)
                    and np.unique(self.cols[f]).size > 1 and self._interleave_problem(self.cols[f], f) is None]
            raise GatherError(f"{self.where}: {problem}: name the interleave's field with index_map (--index-map "
                              f"interleave={fits[0] if fits else 'FIELD'}, property index_map)")

    def _detected_interleave(self) -> tuple[str, np.ndarray]:
        others = [f for f in self.fields if f != self.timepoint_field and np.unique(self.cols[f]).size > 1]
        valid = [f for f in others if self._interleave_problem(self.cols[f], f) is None]
        if self.content is not None:
            n_traj = np.unique(self.content).size
            exact = [f for f in valid if np.unique(self.cols[f]).size == n_traj]
            if exact:
                return exact[0], self.cols[exact[0]]
            return "trajectory", self.content.astype(np.int64)  # no counter: one label per distinct trajectory
        constant = np.zeros(self.numbers.size, dtype=np.int64)
        if self.validator.spiral is None and "kspace_encode_step_1" in valid:
            valid = ["kspace_encode_step_1"]  # Gadgetron's spiral gadgets read the interleave there
        if len(valid) == 1 or (valid and self.validator.spiral is not None):
            return valid[0], self.cols[valid[0]]
        if not valid and self._interleave_problem(constant, "(none)") is None:
            return "none", constant
        raise GatherError(
            f"{self.where}: the interleave is in {'one of ' + ', '.join(valid) if valid else 'no counter'} "
            f"({_seen(self.cols, others)}): name it with index_map (--index-map interleave=FIELD)"
        )

    def _check_duplicates(self) -> None:
        bad = np.flatnonzero((self.timepoint < 0) | (self.timepoint >= self.n_t))
        if bad.size:
            raise RawAcquisitionError(
                f"acquisition {self.numbers[bad[0]]}: time point {self.timepoint_field} = {self.timepoint[bad[0]]} "
                f"is outside [0, {self.n_t}) (the schedule's time points)"
            )
        keys = (self.timepoint * (int(self.interleave.max()) + 1) + self.interleave) * 65536 + self.partition
        unique, first, counts = np.unique(keys, return_index=True, return_counts=True)
        if counts.max() > 1:
            i = first[np.argmax(counts > 1)]
            again = np.flatnonzero(keys == keys[i])[1]
            raise GatherError(
                f"acquisition {self.numbers[again]}: {self.where} has time point {self.timepoint[i]}, "
                f"interleave {self.interleave[i]}, partition {self.partition[i]} twice ({self.timepoint_field} / "
                f"{self.interleave_field})"
            )


@dataclass
class _Pending:
    """A slice being gathered. kspace: (expected readouts, C, S), each readout written into its row as it
    arrives (the copy a slice needs happens while the scan streams, not after its last readout)."""

    kspace: np.ndarray
    numbers: list[int] = field(default_factory=list)
    counters: list[np.ndarray] = field(default_factory=list)
    traj: list[np.ndarray | None] = field(default_factory=list)
    nonzero: list[bool] = field(default_factory=list)
    header: ismrmrd.AcquisitionHeader | None = None

    def add(self, number: int, counters: np.ndarray, data: np.ndarray, traj: np.ndarray | None) -> None:
        """File a readout (a slice completes at its expected count, so a row is always free)."""
        self.kspace[len(self.numbers)] = data
        self.nonzero.append(bool(data.any()))
        self.numbers.append(number)
        self.counters.append(counters)
        self.traj.append(traj)


class SliceGatherer:
    """Accumulates acquisitions into SliceData (module docstring)."""

    def __init__(self, info: ScanInfo, max_missing_fraction: float = 0.0):
        if not 0.0 <= max_missing_fraction < 1.0:
            raise GatherError(f"max_missing_fraction = {max_missing_fraction} must be in [0, 1)")
        self.info = info
        self.max_missing_fraction = float(max_missing_fraction)
        self.validator = AcquisitionValidator(info)
        self.readouts_per_timepoint = info.spiral.interleaves_per_tr if info.spiral is not None else 1
        self.expected_readouts = info.schedule.n_timepoints * self.readouts_per_timepoint * info.n_partitions
        self._pending: dict[int, _Pending] = {}
        self._done: set[int] = set()
        self._noise: list[np.ndarray] = []
        self._count = 0
        self._logged_layout: str | None = None
        if info.spiral is not None:  # the header's design DCF (~1 s of Pipe-Menon, cached) before any readout
            design_spiral(info.spiral).dcf()

    def add(self, acq: ismrmrd.Acquisition) -> list[SliceData]:
        """File one acquisition; returns the slices it completed (usually none, at most one)."""
        number = self._count
        self._count += 1
        if acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            self._noise.append(np.array(acq.data, dtype=np.complex64))
            return []
        if not is_imaging(acq):
            return []
        data, traj = self.validator.checked(acq, number)
        imap, n_slices = self.info.index_map, self.info.n_slices
        slice_index = imap.get(acq, "slice")
        if slice_index < 0 or (n_slices is not None and slice_index >= n_slices):
            raise RawAcquisitionError(f"acquisition {number}: slice {imap.slice} = {slice_index} is outside "
                                      f"[0, {n_slices or 'inf'}) (encodingLimits)")
        if slice_index in self._done:
            raise GatherError(f"acquisition {number}: slice {slice_index} was already complete")
        pending = self._pending.get(slice_index)
        if pending is None:
            shape = (self.expected_readouts,) + data.shape
            pending = self._pending[slice_index] = _Pending(np.empty(shape, dtype=np.complex64))
        pending.add(number, counter_values(acq), data, traj)
        if pending.header is None:
            pending.header = acq.getHead()
        last = acq.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE) and self.info.n_partitions == 1
        if len(pending.numbers) == self.expected_readouts or last:
            return self._complete(slice_index)
        return []

    def finish(self) -> list[SliceData]:
        """Slices still open at the end of the stream (each checked for missing time points)."""
        return [data for s in sorted(self._pending) for data in self._complete(s)]

    @property
    def noise(self) -> np.ndarray | None:
        """Noise samples seen so far (C, n) complex64, or None."""
        if not self._noise:
            return None
        channels = {n.shape[0] for n in self._noise}
        if len(channels) > 1:
            raise GatherError(f"noise scans have different channel counts: {sorted(channels)}")
        return np.concatenate(self._noise, axis=1)

    # ---- assembling a slice -----------------------------------------------------------------------
    def _complete(self, slice_index: int) -> list[SliceData]:
        """The slice's SliceData; a stack of spirals' slab: one per partition (index slab * partitions + z)."""
        pending = self._pending.pop(slice_index)
        self._done.add(slice_index)
        numbers = np.asarray(pending.numbers)
        layout = Layout(self, slice_index, np.stack(pending.counters), numbers, pending.traj)
        if not self.info.index_map_stated:
            found = f"timepoint={layout.timepoint_field},interleave={layout.interleave_field}"
            if found != self._logged_layout:
                log.info("index layout detected from the counters (no index map stated): %s", found)
                self._logged_layout = found
        timepoint, interleave = layout.timepoint, layout.interleave
        kspace = pending.kspace[None, :numbers.size]  # (partitions, R, C, S)
        headers = [pending.header]
        if self.info.n_partitions > 1:
            keep, kspace, headers = self._partitions(slice_index, layout, kspace[0], pending.header)
            timepoint, interleave, numbers = timepoint[keep], interleave[keep], numbers[keep]
            pending.traj = [pending.traj[i] for i in keep]
        schedule, missing_note = self._schedule_of(slice_index, timepoint)
        notes = []
        if missing_note:
            notes.append(missing_note)
            log.warning(missing_note)
        order = np.lexsort((numbers, timepoint))
        traj = np.stack([pending.traj[i] if pending.traj[i] is not None
                         else self.validator.described_traj(interleave[i], f"acquisition {numbers[i]}")
                         for i in order])
        dcf, note = self._dcf(traj, interleave[order])
        if note:
            notes.append(note)
        first = slice_index * len(headers) if len(headers) > 1 else slice_index
        in_order = np.array_equal(order, np.arange(order.size))
        kspace = [kspace[z] if in_order else kspace[z][order] for z in range(len(headers))]
        return [SliceData(
            slice_index=first + z,
            kspace=kspace[z],
            traj=traj,
            interleave=interleave[order],
            dcf=dcf,
            matrix=self.info.matrix,
            fov_mm=self.info.fov_mm,
            noise=self.noise,
            schedule=schedule,
            acquisition_header=header,
            timepoint=timepoint[order],
            notes=list(notes),
            warnings=[missing_note] if missing_note else [],
            arrival_check=None if len(headers) > 1 else (kspace[z], np.asarray(pending.nonzero)[order]),
        ) for z, header in enumerate(headers)]

    def _partitions(self, slice_index: int, layout: Layout, kspace: np.ndarray, header
                    ) -> tuple[np.ndarray, np.ndarray, list]:
        """A stack of spirals: readouts grouped by (time point, interleave), each group's partitions
        Fourier transformed along kz (centred, orthonormal: partition p is kz = p - P//2, partition image z
        sits at (z - P//2) * FOV_z / P along slice_dir). Returns the first readout of each complete group,
        the partition images' k-space (P, groups, C, S) and a header per partition image (its position);
        groups lacking partitions are left out (their time points then count as missing)."""
        n_part, name = self.info.n_partitions, self.info.index_map.partition
        partition = layout.cols[name]
        bad = np.flatnonzero(partition >= n_part)
        if bad.size:
            raise RawAcquisitionError(
                f"acquisition {layout.numbers[bad[0]]}: partition {name} = {partition[bad[0]]} is outside "
                f"[0, {n_part}) (encodedSpace matrixSize z)"
            )
        keys = layout.timepoint * (int(layout.interleave.max()) + 1) + layout.interleave
        _, group = np.unique(keys, return_inverse=True)
        group = group.reshape(-1)
        counts = np.bincount(group)
        complete = np.flatnonzero(counts == n_part)
        if complete.size == 0:
            raise GatherError(
                f"slice {slice_index}: encodedSpace matrixSize z = {n_part} (a stack of spirals), but partition "
                f"field {name} has {np.unique(partition).size} distinct value(s) per (time point, interleave): "
                "a 2D scan has z = 1; else name the partition's field with index_map (--index-map partition=FIELD)"
            )
        if complete.size < counts.size:
            log.warning("slice %d: %d of %d (time point, interleave) groups lack partitions: left out",
                        slice_index, counts.size - complete.size, counts.size)
        stacked = np.zeros((complete.size, n_part) + kspace.shape[1:], dtype=np.complex64)
        position = np.full(counts.size, -1)
        position[complete] = np.arange(complete.size)
        rows = np.flatnonzero(position[group] >= 0)
        stacked[position[group[rows]], partition[rows]] = kspace[rows]
        images = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(stacked, axes=1), axis=1, norm="ortho"), axes=1)
        keep = np.array([rows[position[group[rows]] == g][0] for g in range(complete.size)], dtype=np.int64)
        step = self.info.fov_z_mm / n_part
        headers = []
        for z in range(n_part):
            head = copy.copy(header)
            offset = (z - n_part // 2) * step
            head.position[:] = [p + offset * d for p, d in zip(header.position, header.slice_dir, strict=True)]
            headers.append(head)
        return keep, np.moveaxis(images, 1, 0).astype(np.complex64), headers

    def _schedule_of(self, slice_index: int, timepoint: np.ndarray) -> tuple[FispSchedule, str | None]:
        """The slice's schedule (truncated after the last time point present: a scan stopped early) and the
        note on missing time points; GatherError when more are missing than max_missing_fraction allows."""
        schedule = self.info.schedule
        n_t = schedule.n_timepoints
        present = np.unique(timepoint)
        last = int(present[-1]) + 1
        stopped = ""
        if last < n_t:
            stopped = (f"slice {slice_index}: the scan stopped after {last} of {n_t} time points: reconstructed "
                       f"with the schedule's first {last}")
            schedule = schedule.truncated(last)
        n_missing = last - present.size
        if n_missing == 0:
            return schedule, stopped or None
        missing = np.setdiff1d(np.arange(last), present)
        what = (f"slice {slice_index}: {n_missing} of {last} time points missing (first: {int(missing[0])}); "
                f"{timepoint.size} readouts")
        if n_missing > self.max_missing_fraction * last:
            raise GatherError(f"{what}: more than max_missing_fraction = {self.max_missing_fraction:g} allows "
                              "(--max-missing-fraction, property max_missing_fraction)")
        return schedule, "; ".join(filter(None, [stopped, what + ": reconstructed from the readouts present"]))

    def _dcf(self, traj: np.ndarray, interleave: np.ndarray) -> tuple[np.ndarray, str | None]:
        """Per-readout DCF (R, S) and a note when Pipe-Menon had to be computed."""
        labels, first, inverse = np.unique(interleave, return_index=True, return_inverse=True)
        spiral_params = self.info.spiral
        if spiral_params is not None:
            spiral = design_spiral(spiral_params)
            if spiral.n_samples == traj.shape[1]:
                design = spiral.traj(labels)
                if float(np.abs(design - traj[first]).max()) <= _DESIGN_AGREEMENT_CYCLES:
                    w = spiral.dcf()
                    if spiral_params.rotation == "golden":
                        w = w * np.float32(spiral_params.n_interleaves / labels.size)
                    return np.broadcast_to(w, traj.shape[:2]).astype(np.float32), None
        started = time.perf_counter()
        w = pipe_menon_dcf(traj[first].reshape(-1, 2)).reshape(labels.size, -1).astype(np.float32)
        note = (f"trajectory does not follow a spiral design from the header: Pipe-Menon DCF of {labels.size} "
                f"interleaves computed in {time.perf_counter() - started:.1f} s")
        log.info(note)
        return w[inverse], note
