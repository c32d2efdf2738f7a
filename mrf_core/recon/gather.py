"""Gather a stream of ISMRMRD acquisitions into complete MRF slices (file replay or Gadgetron stream).

Noise scans (ACQ_IS_NOISE_MEASUREMENT) are buffered and handed to every slice; other non-imaging scans
are skipped; imaging readouts are validated (mrf_core.io.rawio.AcquisitionValidator: its
RawAcquisitionError propagates) and filed by slice. A slice is complete when it holds all its readouts
(n_timepoints x interleaves_per_tr of the header's spiral, 1 per time point without one) or when its
ACQ_LAST_IN_SLICE readout arrives; `finish()` flushes what is left at the end of the stream.

A slice with missing time points is a GatherError naming the slice and the count, unless
`max_missing_fraction` allows it: then the slice is reconstructed from the readouts it has (the
subspace methods need no complete time series) and SliceData.notes (and the log) say how many were
missing. A repeated (time point, interleave) pair is always an error.

Layout of SliceData (one row per readout, sorted by time point, then arrival; with one readout per TR
row t is time point t): kspace (R, C, S) complex64, traj (R, S, 2) float32 cycles/FOV, interleave and
timepoint (R,) int64, dcf (R, S) float32, area per sample in (cycles/FOV)^2 of the union of the slice's
interleaves. The DCF: the header's spiral design when the readouts follow it ("sequential": the
design's uniform-set DCF; "golden": that scaled by n_interleaves / readouts, the same density spread
over more rotations), else Pipe-Menon on the union of the distinct trajectories.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import ismrmrd
import numpy as np

from mrf_core.errors import MrfError
from mrf_core.io.rawio import AcquisitionValidator, Readout, ScanInfo, is_imaging
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


@dataclass
class _Pending:
    readouts: list[Readout] = field(default_factory=list)
    keys: set[tuple[int, int]] = field(default_factory=set)
    header: ismrmrd.AcquisitionHeader | None = None


class SliceGatherer:
    """Accumulates acquisitions into SliceData (module docstring)."""

    def __init__(self, info: ScanInfo, max_missing_fraction: float = 0.0):
        if not 0.0 <= max_missing_fraction < 1.0:
            raise GatherError(f"max_missing_fraction = {max_missing_fraction} must be in [0, 1)")
        self.info = info
        self.max_missing_fraction = float(max_missing_fraction)
        self.validator = AcquisitionValidator(info)
        self.readouts_per_timepoint = info.spiral.interleaves_per_tr if info.spiral is not None else 1
        self.expected_readouts = info.schedule.n_timepoints * self.readouts_per_timepoint
        self._pending: dict[int, _Pending] = {}
        self._done: set[int] = set()
        self._noise: list[np.ndarray] = []
        self._count = 0

    def add(self, acq: ismrmrd.Acquisition) -> list[SliceData]:
        """File one acquisition; returns the slices it completed (usually none, at most one)."""
        number = self._count
        self._count += 1
        if acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            self._noise.append(np.array(acq.data, dtype=np.complex64))
            return []
        if not is_imaging(acq):
            return []
        readout = self.validator.readout(acq, number)
        if readout.slice in self._done:
            raise GatherError(f"acquisition {number}: slice {readout.slice} was already complete")
        pending = self._pending.setdefault(readout.slice, _Pending())
        key = (readout.timepoint, readout.interleave)
        if key in pending.keys:
            raise GatherError(f"acquisition {number}: slice {readout.slice} has time point {readout.timepoint}, "
                              f"interleave {readout.interleave} twice")
        pending.keys.add(key)
        pending.readouts.append(readout)
        if pending.header is None:
            pending.header = acq.getHead()
        if len(pending.readouts) == self.expected_readouts or acq.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE):
            return [self._complete(readout.slice)]
        return []

    def finish(self) -> list[SliceData]:
        """Slices still open at the end of the stream (each checked for missing time points)."""
        return [self._complete(s) for s in sorted(self._pending)]

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
    def _complete(self, slice_index: int) -> SliceData:
        pending = self._pending.pop(slice_index)
        self._done.add(slice_index)
        schedule = self.info.schedule
        notes = []
        present = np.unique([r.timepoint for r in pending.readouts])
        n_missing = schedule.n_timepoints - present.size
        if len(pending.readouts) < self.expected_readouts:
            missing = np.setdiff1d(np.arange(schedule.n_timepoints), present)
            what = (f"slice {slice_index}: {n_missing} of {schedule.n_timepoints} time points missing"
                    + (f" (first: {int(missing[0])})" if missing.size else "")
                    + f"; {len(pending.readouts)} of {self.expected_readouts} readouts")
            if n_missing > self.max_missing_fraction * schedule.n_timepoints or present.size == 0:
                raise GatherError(what)
            notes.append(what + ": reconstructed from the readouts present")
            log.warning(notes[-1])
        readouts = sorted(pending.readouts, key=lambda r: (r.timepoint, r.number))
        traj = np.stack([r.traj for r in readouts])
        interleave = np.array([r.interleave for r in readouts], dtype=np.int64)
        dcf, note = self._dcf(traj, interleave)
        if note:
            notes.append(note)
        return SliceData(
            slice_index=slice_index,
            kspace=np.stack([r.data for r in readouts]),
            traj=traj,
            interleave=interleave,
            dcf=dcf,
            matrix=self.info.matrix,
            fov_mm=self.info.fov_mm,
            noise=self.noise,
            schedule=schedule,
            acquisition_header=pending.header,
            timepoint=np.array([r.timepoint for r in readouts], dtype=np.int64),
            notes=notes,
        )

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
