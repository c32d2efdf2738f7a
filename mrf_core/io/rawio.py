"""ISMRMRD raw data for spiral MRF: writer, streaming reader, and validation against what a
reconstruction needs.

File layout (the ISMRMRD HDF5 layout, readable by ismrmrd.Dataset and the C++ library):
  /<dataset>/xml        the header (ISMRMRD XML)
  /<dataset>/data       acquisitions (ismrmrd.hdf5.acquisition_dtype), noise readouts first
  /<dataset>/mrf_truth  simulated scans only: ground truth for evaluation, beside the raw data:
      t1_ms, t2_ms, pd, b1 (float32), mask (uint8), labels (int16): (n_slices, matrix, matrix);
      coil_sensitivities (n_coils, n_slices, matrix, matrix) complex64; noise_covariance
      (n_coils, n_coils) complex128; attributes: phantom, field_T, fov_mm, label_names (JSON:
      label -> name, e.g. NIST sphere numbers), phantom facts (batch, arrays, placement, ...) and
      `simulation` (JSON: SNR, noise sigma, SVD rank and residual per slice, seed, ...).

What the reader needs (`validate_header`, `AcquisitionValidator`): a non-Cartesian encoding with a
positive FOV and matrix; the MRF schedule in sequenceParameters (flipAngle_deg and TR lists, TE, TI; one
TR, as siemens_to_ismrmrd writes, is refused: the schedule must come from a file); per imaging readout a
time point in [0, n_timepoints), an interleave, a slice, one sample count and channel count throughout,
and a trajectory: `traj` (n_samples, 2) in `traj_units` (cycles/FOV, normalised to 0.5, cycles/m or
rad/m; auto: detected on the first readout from its largest |k|; a third column, density weights as some
converters write, is ignored: the reconstruction recomputes the DCF), or, without `traj`, an 'mrf_vds' or
Gadgetron 'HargreavesVDS2000' trajectoryDescription to compute it from. Errors are `RawHeaderError` /
`RawAcquisitionError` (ValueErrors) whose message names the field and the value.

Where the indices are (`IndexMap`, configurable because converters differ): by default the time point
in idx.repetition, the interleave in idx.kspace_encode_step_1, the slice in idx.slice, the partition of a
stack of spirals in idx.kspace_encode_step_2. Any of the idx counters, idx.user[i] or user_int[i] can be
named; the writer records its map in the header's user parameter MRF_index_map, which the reader uses
unless told otherwise. Without a stated map (ScanInfo.index_map_stated False) the gatherer detects time
point and interleave from the counters (mrf_core.recon.gather.Layout).
Time stamps: acquisition_time_stamp in ticks of TIMESTAMP_TICK_MS = 2.5 ms (the Siemens convention).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
from ismrmrd.hdf5 import acquisition_dtype, acquisition_header_dtype

from mrf_core.errors import MrfError
from mrf_core.io.atomic import atomic_path
from mrf_core.physics.sequence import FispSchedule, ScheduleError
from mrf_core.recon.trajectory import (
    HARGREAVES_ID,
    TRAJ_UNITS,
    TRAJECTORY_ID,
    HargreavesVds,
    SpiralParams,
    TrajectoryError,
    design_spiral,
    detect_units,
    unit_edges,
)
from mrf_core.sim.phantoms import Phantom

TIMESTAMP_TICK_MS = 2.5
TRUTH_GROUP = "mrf_truth"
INDEX_MAP_PARAMETER = "MRF_index_map"
_IDX_COUNTERS = ("kspace_encode_step_1", "kspace_encode_step_2", "average", "slice", "contrast", "phase",
                 "repetition", "set", "segment")
# idx counter -> its encodingLimits entry
_LIMIT_NAMES = {c: c.replace("encode", "encoding") for c in _IDX_COUNTERS}
# Readouts a reconstruction skips: noise and calibration-type scans.
_NON_IMAGING_FLAGS = (
    ismrmrd.ACQ_IS_NOISE_MEASUREMENT, ismrmrd.ACQ_IS_NAVIGATION_DATA, ismrmrd.ACQ_IS_PHASECORR_DATA,
    ismrmrd.ACQ_IS_DUMMYSCAN_DATA, ismrmrd.ACQ_IS_HPFEEDBACK_DATA, ismrmrd.ACQ_IS_RTFEEDBACK_DATA,
    ismrmrd.ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA, ismrmrd.ACQ_IS_PHASE_STABILIZATION_REFERENCE,
    ismrmrd.ACQ_IS_PHASE_STABILIZATION,
)
_READ_BLOCK = 64  # acquisitions per HDF5 read or write
ROLES = ("timepoint", "interleave", "slice", "partition")
# every field an index can be in, in the order detection prefers them (the default map's first)
COUNTER_FIELDS = ("repetition", "kspace_encode_step_1", "contrast", "segment", "set", "phase", "average",
                  "kspace_encode_step_2", "slice", *(f"user_int[{i}]" for i in range(8)),
                  *(f"user[{i}]" for i in range(8)))
log = logging.getLogger(__name__)


class RawDataError(MrfError):
    """Raw data a reconstruction cannot use: the message names the field and the value."""


class RawHeaderError(RawDataError):
    """The ISMRMRD header lacks or contradicts what the reconstruction needs."""


class RawAcquisitionError(RawDataError):
    """An acquisition lacks or contradicts what the reconstruction needs."""


# ---- where the indices are -------------------------------------------------------------------------
_COUNTER_ALTERNATIVES = "|".join(_IDX_COUNTERS)
_FIELD_PATTERN = re.compile(rf"^(?:idx\.)?(?:({_COUNTER_ALTERNATIVES})|(user|user_int)\[([0-7])\])$")


@dataclass(frozen=True)
class IndexMap:
    """Which acquisition field carries the time point, the interleave, the slice and the partition (3D).

    A field is an idx counter name ("repetition", "kspace_encode_step_1", ...), "user[i]" (idx.user)
    or "user_int[i]", i in 0..7.
    """

    timepoint: str = "repetition"
    interleave: str = "kspace_encode_step_1"
    slice: str = "slice"
    partition: str = "kspace_encode_step_2"

    def __post_init__(self) -> None:
        for role in ROLES:
            object.__setattr__(self, role, str(getattr(self, role)).strip().removeprefix("idx."))
            if not _FIELD_PATTERN.match(getattr(self, role)):
                raise RawHeaderError(
                    f"index map {role} = {getattr(self, role)!r}: expected an idx counter "
                    f"({', '.join(_IDX_COUNTERS)}), user[0..7] or user_int[0..7]"
                )
        used = [getattr(self, role) for role in ROLES]
        if len(set(used)) != len(ROLES):
            raise RawHeaderError(f"index map {self.to_string()!r} uses one field for two roles")

    def to_string(self) -> str:
        return ",".join(f"{role}={getattr(self, role)}" for role in ROLES)

    @classmethod
    def from_string(cls, text: str) -> IndexMap:
        """Parse 'timepoint=user_int[0],interleave=kspace_encode_step_1' (missing roles: defaults)."""
        values = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            role, sep, name = part.partition("=")
            if not sep or role.strip() not in ROLES:
                raise RawHeaderError(f"index map entry {part!r}: expected {'=, '.join(ROLES)}=")
            values[role.strip()] = name.strip()
        return cls(**values)

    @staticmethod
    def _locate(acq, name: str):
        m = _FIELD_PATTERN.match(name)
        counter, array, i = m.groups()
        if counter:
            return acq.idx, counter, None
        return (acq.idx if array == "user" else acq), ("user" if array == "user" else "user_int"), int(i)

    def get(self, acq, role: str) -> int:
        return field_value(acq, getattr(self, role))

    def set(self, acq, timepoint: int, interleave: int, slice_: int, partition: int = 0) -> None:
        for role, value in zip(ROLES, (timepoint, interleave, slice_, partition), strict=True):
            owner, attr, i = self._locate(acq, getattr(self, role))
            if i is None:
                setattr(owner, attr, int(value))
            else:
                getattr(owner, attr)[i] = int(value)

    def limit_name(self, role: str) -> str | None:
        """The encodingLimits entry describing a role's field (None for user fields)."""
        return _LIMIT_NAMES.get(getattr(self, role))

    def with_roles(self, **fields: str) -> IndexMap:
        return IndexMap(**{role: fields.get(role, getattr(self, role)) for role in ROLES})


def field_value(acq, name: str) -> int:
    """The value of one index field (an idx counter, user[i] or user_int[i]) of an acquisition."""
    owner, attr, i = IndexMap._locate(acq, name)
    return int(getattr(owner, attr) if i is None else getattr(owner, attr)[i])


def counter_values(acq) -> np.ndarray:
    """All COUNTER_FIELDS of an acquisition, (len(COUNTER_FIELDS),) int64."""
    idx = acq.idx
    return np.array([*(getattr(idx, c) for c in COUNTER_FIELDS[:9]), *acq.user_int, *idx.user], dtype=np.int64)


# ---- header ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanInfo:
    """What a validated header tells the reconstruction. Trajectory units: cycles per encoded FOV."""

    schedule: FispSchedule
    matrix: int
    fov_mm: float
    n_slices: int | None
    n_channels: int | None
    field_t: float | None
    spiral: SpiralParams | None
    n_samples: int | None
    index_map: IndexMap
    index_map_stated: bool = True
    vds: HargreavesVds | None = None
    traj_units: str = "auto"
    n_partitions: int = 1
    fov_z_mm: float = 1.0

    @property
    def described(self) -> bool:
        """Whether the header describes a trajectory to compute readouts without `traj` from."""
        return self.spiral is not None or self.vds is not None


def _user_string(header, name: str) -> str | None:
    if header.userParameters is None:
        return None
    return next((str(p.value) for p in header.userParameters.userParameterString if p.name == name), None)


def validate_header(header, index_map: IndexMap | None = None, traj_units: str = "auto") -> ScanInfo:
    """Check an ismrmrd.xsd.ismrmrdHeader against what spiral MRF reconstruction needs. Without an
    index_map and without the header's MRF_index_map, the gatherer detects the layout from the data."""
    if not header.encoding:
        raise RawHeaderError("header has no encoding")
    enc = header.encoding[0]
    trajectory = getattr(enc.trajectory, "value", enc.trajectory)
    if trajectory in ("cartesian", "epi", None):
        raise RawHeaderError(
            f"encoding[0].trajectory = {trajectory!r}: MRF reconstruction needs a non-Cartesian (spiral) one"
        )
    space = enc.encodedSpace
    if space is None or space.matrixSize is None or space.fieldOfView_mm is None:
        raise RawHeaderError("encoding[0].encodedSpace is missing its matrixSize or fieldOfView_mm")
    matrix, fov = space.matrixSize, space.fieldOfView_mm
    if not matrix.x >= 2 or matrix.y != matrix.x:
        raise RawHeaderError(
            f"encoding[0].encodedSpace.matrixSize = {matrix.x} x {matrix.y}: expected a square matrix >= 2"
        )
    if not (fov.x > 0 and fov.y > 0):
        raise RawHeaderError(f"encoding[0].encodedSpace.fieldOfView_mm = {fov.x} x {fov.y}: must be > 0")
    try:
        schedule = FispSchedule.from_ismrmrd(header)
    except ScheduleError as exc:
        raise RawHeaderError(f"sequenceParameters: {exc}; give the schedule with --schedule-file FILE "
                             "(property schedule_file)") from exc
    limits = enc.encodingLimits
    if schedule.n_timepoints == 1:
        counts = [int(getattr(getattr(limits, _LIMIT_NAMES[c], None), "maximum", 0) or 0) + 1
                  for c in _IDX_COUNTERS if c != "slice"] if limits else []
        many = f"{max(counts)} time points" if counts and max(counts) > 1 else "an MRF scan"
        raise RawHeaderError(
            f"the header holds 1 TR for {many} (sequenceParameters with the protocol's one TR and flip angle, "
            "as siemens_to_ismrmrd writes them): give the schedule with --schedule-file FILE (property "
            "schedule_file)"
        )
    if traj_units not in ("auto", *TRAJ_UNITS):
        raise RawHeaderError(f"traj_units = {traj_units!r}: expected auto or one of {', '.join(TRAJ_UNITS)}")
    spiral, n_samples, vds = None, None, None
    description = enc.trajectoryDescription
    if description is not None and description.identifier == HARGREAVES_ID:
        try:
            vds = HargreavesVds.from_ismrmrd(description)
        except TrajectoryError as exc:
            raise RawHeaderError(f"encoding[0].trajectoryDescription: {exc}") from exc
    if description is not None and description.identifier == TRAJECTORY_ID:
        try:
            spiral, n_samples = SpiralParams.from_ismrmrd(description)
        except TrajectoryError as exc:
            raise RawHeaderError(f"encoding[0].trajectoryDescription: {exc}") from exc
        if spiral.matrix != matrix.x or abs(spiral.fov_mm - fov.x) > 1e-3:
            raise RawHeaderError(
                f"trajectoryDescription matrix {spiral.matrix} / fov_mm {spiral.fov_mm:g} disagree with "
                f"encodedSpace {matrix.x} / {fov.x:g}"
            )
    stated = index_map is not None
    if index_map is None:
        text = _user_string(header, INDEX_MAP_PARAMETER)
        stated = bool(text)
        index_map = IndexMap.from_string(text) if text else IndexMap()
    slice_limit = getattr(limits, index_map.limit_name("slice") or "", None) if limits else None
    system = header.acquisitionSystemInformation
    return ScanInfo(
        schedule=schedule,
        matrix=int(matrix.x),
        fov_mm=float(fov.x),
        n_slices=int(slice_limit.maximum) + 1 if slice_limit is not None else None,
        n_channels=int(system.receiverChannels) if system and system.receiverChannels else None,
        field_t=float(system.systemFieldStrength_T) if system and system.systemFieldStrength_T else None,
        spiral=spiral,
        n_samples=n_samples,
        index_map=index_map,
        index_map_stated=stated,
        vds=vds,
        traj_units=traj_units,
        n_partitions=max(int(matrix.z or 1), 1),
        fov_z_mm=float(fov.z or 1.0),
    )


# ---- acquisitions ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Readout:
    """One validated imaging readout: data (n_channels, n_samples) complex64 and traj (n_samples, 2)
    float32 (kx, ky) in cycles/FOV; number is its position in the file or stream."""

    number: int
    timepoint: int
    interleave: int
    slice: int
    data: np.ndarray
    traj: np.ndarray
    flags: int
    time_stamp: int


def is_imaging(acq) -> bool:
    return not any(acq.is_flag_set(f) for f in _NON_IMAGING_FLAGS)


class AcquisitionValidator:
    """Turns imaging acquisitions of a stream into `Readout`s, checking each against the header and the
    first readout; usable on a file (`MrfRawFile.readouts`) or on a Gadgetron connection. The trajectory's
    units are the header's `traj_units`, or (auto) detected on the first readout with a `traj` and logged."""

    def __init__(self, info: ScanInfo):
        self.info = info
        self.n_samples = info.n_samples
        self.n_channels = info.n_channels
        self.traj_units = None if info.traj_units == "auto" else info.traj_units
        self.spiral = design_spiral(info.spiral) if info.spiral is not None else None  # the mrf_vds design

    @staticmethod
    def _agree(where: str, field: str, value: int, expected: int | None, source: str | None) -> int:
        """`value`, checked against `expected` (from the header `source`, or from the first readout)."""
        if expected is not None and value != expected:
            raise RawAcquisitionError(
                f"{where}: {field} = {value} disagrees with {expected} from {source or 'the first readout'}"
            )
        return value

    def checked(self, acq, number: int) -> tuple[np.ndarray, np.ndarray | None]:
        """An imaging acquisition's data and traj in cycles/FOV (None: to compute from the header's
        description once its interleave is known), checked against the header and the first readout."""
        info, where = self.info, f"acquisition {number}"
        n_samples, n_channels = int(acq.number_of_samples), int(acq.active_channels)
        if n_samples == 0:
            raise RawAcquisitionError(f"{where}: number_of_samples = 0")
        self.n_samples = self._agree(where, "number_of_samples", n_samples, self.n_samples,
                                     "the trajectoryDescription" if info.n_samples is not None else None)
        self.n_channels = self._agree(where, "active_channels", n_channels, self.n_channels,
                                      "receiverChannels in the header" if info.n_channels is not None else None)
        return self._data(acq, where), self._traj(acq, where)

    @property
    def n_interleaves(self) -> int | None:
        """Interleaves of the header's description whose indices are bounded (None: unbounded or none)."""
        spiral, vds = self.info.spiral, self.info.vds
        if spiral is not None:
            return spiral.n_interleaves if spiral.rotation == "sequential" else None
        return vds.interleaves if vds is not None else None

    def check_interleave(self, interleave: int, field: str, where: str) -> None:
        n_interleaves = self.n_interleaves
        if interleave < 0 or (n_interleaves is not None and interleave >= n_interleaves):
            raise RawAcquisitionError(
                f"{where}: interleave {field} = {interleave} is outside "
                f"[0, {n_interleaves or 'inf'}) (the interleaves of the trajectoryDescription)"
            )

    def described_traj(self, interleave, where: str) -> np.ndarray:
        """The header description's trajectory of interleave(s), cycles/FOV."""
        if self.spiral is not None:
            return self.spiral.traj(interleave)
        try:
            return self.info.vds.traj(interleave, self.n_samples, self.info.fov_mm)
        except TrajectoryError as exc:
            raise RawAcquisitionError(f"{where}: {exc}") from exc

    def readout(self, acq, number: int) -> Readout:
        """One acquisition as a Readout, its indices where the header's index map says."""
        info, where = self.info, f"acquisition {number}"
        data, traj = self.checked(acq, number)
        timepoint = info.index_map.get(acq, "timepoint")
        if not 0 <= timepoint < info.schedule.n_timepoints:
            raise RawAcquisitionError(
                f"{where}: time point {info.index_map.timepoint} = {timepoint} is outside "
                f"[0, {info.schedule.n_timepoints}) (the schedule's time points)"
            )
        interleave = info.index_map.get(acq, "interleave")
        self.check_interleave(interleave, info.index_map.interleave, where)
        slice_ = info.index_map.get(acq, "slice")
        if slice_ < 0 or (info.n_slices is not None and slice_ >= info.n_slices):
            raise RawAcquisitionError(
                f"{where}: slice {info.index_map.slice} = {slice_} is outside [0, {info.n_slices or 'inf'}) "
                "(encodingLimits)"
            )
        if traj is None:
            traj = self.described_traj(interleave, where)
        return Readout(number, timepoint, interleave, slice_, data, traj, int(acq.flags),
                       int(acq.acquisition_time_stamp))

    def _data(self, acq, where: str) -> np.ndarray:
        data = np.asarray(acq.data, dtype=np.complex64)
        if not np.all(np.isfinite(data)):
            raise RawAcquisitionError(f"{where}: data has non-finite samples")
        return data

    def _traj(self, acq, where: str) -> np.ndarray | None:
        dims = int(acq.trajectory_dimensions)
        if dims == 0:
            if not self.info.described:
                raise RawAcquisitionError(
                    f"{where}: trajectory_dimensions = 0 (no traj), and the header has no {TRAJECTORY_ID!r} or "
                    f"{HARGREAVES_ID!r} trajectoryDescription to compute the trajectory from"
                )
            return None
        if dims not in (2, 3):
            raise RawAcquisitionError(
                f"{where}: trajectory_dimensions = {dims}: expected 2 (kx, ky) or 3 (kx, ky, density weight)"
            )
        traj = np.asarray(acq.traj, dtype=np.float64)[:, :2]
        if not np.all(np.isfinite(traj)):
            raise RawAcquisitionError(f"{where}: traj has non-finite values")
        k_reach = float(np.sqrt((traj**2).sum(axis=1)).max())
        info = self.info
        if self.traj_units is None:
            try:
                self.traj_units = detect_units(k_reach, info.matrix, info.fov_mm)
            except TrajectoryError as exc:
                raise RawAcquisitionError(f"{where}: {exc}") from exc
            log.info("traj reaches |k| = %.4g: units %s (detected; set traj_units to choose)", k_reach,
                     self.traj_units)
        k_edge = info.matrix / 2.0
        scale = k_edge / unit_edges(info.matrix, info.fov_mm)[self.traj_units]
        k_reach *= scale
        units = f"traj_units {self.traj_units}"
        if k_reach > 1.01 * k_edge:
            raise RawAcquisitionError(
                f"{where}: traj reaches |k| = {k_reach:.4g} cycles/FOV ({units}), beyond matrix/2 = {k_edge:g}: "
                "the readouts' units differ, or traj_units is wrong"
            )
        if k_reach < 0.25 * k_edge:
            raise RawAcquisitionError(
                f"{where}: traj reaches only |k| = {k_reach:.4g} cycles/FOV ({units}) of matrix/2 = {k_edge:g}: "
                "the readouts are in other units than the first's, or traj_units is wrong"
            )
        return (traj * scale).astype(np.float32)


# ---- ground truth ----------------------------------------------------------------------------------
@dataclass
class GroundTruth:
    """What a simulated scan was made of (see the module docstring for its place in the file)."""

    phantom: Phantom
    coil_sensitivities: np.ndarray | None = None
    noise_covariance: np.ndarray | None = None
    simulation: dict | None = None


_PHANTOM_ATTRS = ("phantom", "field_T", "fov_mm", "label_names", "simulation")


def _write_truth(group: h5py.Group, truth: GroundTruth) -> None:
    p = truth.phantom
    for name in ("t1_ms", "t2_ms", "pd", "b1", "labels"):
        group.create_dataset(name, data=getattr(p, name), compression="gzip", compression_opts=4)
    group.create_dataset("mask", data=p.mask.astype(np.uint8), compression="gzip", compression_opts=4)
    if truth.coil_sensitivities is not None:
        group.create_dataset("coil_sensitivities", data=truth.coil_sensitivities.astype(np.complex64))
    if truth.noise_covariance is not None:
        group.create_dataset("noise_covariance", data=truth.noise_covariance.astype(np.complex128))
    for key, value in p.truth_attrs().items():
        group.attrs[key] = value
    group.attrs["simulation"] = json.dumps(truth.simulation or {})


def _read_truth(group: h5py.Group) -> GroundTruth:
    attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in group.attrs.items()}
    field_t = float(attrs["field_T"])
    phantom = Phantom(
        name=str(attrs["phantom"]),
        **{name: group[name][()] for name in ("t1_ms", "t2_ms", "pd", "b1", "labels")},
        label_names={int(k): v for k, v in json.loads(attrs["label_names"]).items()},
        fov_mm=float(attrs["fov_mm"]),
        field_t=None if np.isnan(field_t) else field_t,
        attrs={k: v for k, v in attrs.items() if k not in _PHANTOM_ATTRS},
    )
    return GroundTruth(
        phantom=phantom,
        coil_sensitivities=group["coil_sensitivities"][()] if "coil_sensitivities" in group else None,
        noise_covariance=group["noise_covariance"][()] if "noise_covariance" in group else None,
        simulation=json.loads(attrs.get("simulation", "{}")),
    )


# ---- writing ---------------------------------------------------------------------------------------
def write_raw(
    path: str | Path,
    header,
    acquisitions: Iterable,
    truth: GroundTruth | Callable[[], GroundTruth] | None = None,
    dataset: str = "dataset",
) -> int:
    """Write header, acquisitions (streamed in blocks) and ground truth to an ISMRMRD HDF5 file,
    atomically: on any error no file is left. `truth` may be a callable, called after the last
    acquisition (so it can hold facts learnt while they were made). Returns the acquisition count."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        group = f.create_group(dataset)
        xml = group.create_dataset("xml", (1,), dtype=h5py.special_dtype(vlen=bytes))
        xml[0] = ismrmrd.xsd.ToXML(header).encode()
        data = group.create_dataset("data", (0,), maxshape=(None,), dtype=acquisition_dtype,
                                    chunks=(_READ_BLOCK,))
        block, n = [], 0
        for acq in acquisitions:
            block.append(acq)
            if len(block) == _READ_BLOCK:
                n = _append(data, block, n)
                block = []
        n = _append(data, block, n)
        if callable(truth):
            truth = truth()
        if truth is not None:
            _write_truth(group.create_group(TRUTH_GROUP), truth)
    return n


def _append(dset: h5py.Dataset, block: list, n: int) -> int:
    if not block:
        return n
    rows = np.empty(len(block), dtype=acquisition_dtype)
    for i, acq in enumerate(block):
        rows[i]["head"] = np.frombuffer(acq.getHead(), dtype=acquisition_header_dtype)[0]
        rows[i]["data"] = np.ascontiguousarray(acq.data, dtype=np.complex64).view(np.float32).reshape(-1)
        rows[i]["traj"] = np.ascontiguousarray(acq.traj, dtype=np.float32).reshape(-1)
    dset.resize(n + len(block), axis=0)
    dset[n:n + len(block)] = rows
    return n + len(block)


# ---- reading ---------------------------------------------------------------------------------------
class MrfRawFile:
    """An ISMRMRD raw file opened for streaming: the header is parsed on opening and validated when `info`
    is first asked for (a pipeline may first replace its schedule or index map); acquisitions are read
    `_READ_BLOCK` at a time, never the whole file."""

    def __init__(self, path: str | Path, dataset: str = "dataset", index_map: IndexMap | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise RawDataError(f"raw file {self.path} does not exist")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise RawDataError(f"cannot open {self.path} as HDF5: {exc}") from exc
        try:
            if dataset not in self._file:
                raise RawDataError(f"{self.path} has no dataset group {dataset!r} (has: {', '.join(self._file)})")
            self._group = self._file[dataset]
            for name in ("xml", "data"):
                if name not in self._group:
                    raise RawDataError(f"{self.path}: dataset {dataset!r} has no {name!r} (header / acquisitions)")
            try:
                self.header = ismrmrd.xsd.CreateFromDocument(self._group["xml"][0])
            except Exception as exc:  # xsdata raises several types for malformed XML
                raise RawHeaderError(f"{self.path}: the ISMRMRD header does not parse: {exc}") from exc
        except BaseException:
            self._file.close()
            raise
        self._data = self._group["data"]
        self._index_map = index_map

    @functools.cached_property
    def info(self) -> ScanInfo:
        """The validated header (RawHeaderError says what it lacks)."""
        return validate_header(self.header, self._index_map)

    def __enter__(self) -> MrfRawFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def n_acquisitions(self) -> int:
        return int(self._data.shape[0])

    def acquisitions(self) -> Iterator:
        """All acquisitions in file order, as ismrmrd.Acquisition."""
        for start in range(0, self.n_acquisitions, _READ_BLOCK):
            for row in self._data[start:start + _READ_BLOCK]:
                yield acquisition_from_row(row)

    def readouts(self) -> Iterator[Readout]:
        """The imaging readouts, validated (noise and calibration scans are skipped), their indices where the
        index map says (the header's or the default: layout detection and partitions are the gatherer's)."""
        validator = AcquisitionValidator(self.info)
        for number, acq in enumerate(self.acquisitions()):
            if is_imaging(acq):
                yield validator.readout(acq, number)

    def noise(self) -> np.ndarray:
        """All noise-calibration samples (n_channels, n) complex64; (0, 0) when there are none."""
        flags = self._data.fields("head")[:]["flags"]
        rows = np.flatnonzero(flags & np.uint64(1 << (ismrmrd.ACQ_IS_NOISE_MEASUREMENT - 1)))
        if rows.size == 0:
            return np.zeros((0, 0), dtype=np.complex64)
        return np.concatenate([acquisition_from_row(self._data[int(i)]).data for i in rows], axis=1)

    def truth(self) -> GroundTruth | None:
        """The ground truth of a simulated scan, or None for a real one."""
        return _read_truth(self._group[TRUTH_GROUP]) if TRUTH_GROUP in self._group else None


def acquisition_from_row(row) -> ismrmrd.Acquisition:
    """One row of an ISMRMRD file's `data` dataset (head, traj, data) as an ismrmrd.Acquisition."""
    acq = ismrmrd.Acquisition(row["head"].tobytes())
    acq.data[:] = row["data"].view(np.complex64).reshape(acq.active_channels, acq.number_of_samples)
    if acq.trajectory_dimensions:
        acq.traj[:] = row["traj"].reshape(acq.number_of_samples, acq.trajectory_dimensions)
    return acq
