"""Spiral MRF raw-data simulator: phantom + schedule + spiral + coils + noise -> ISMRMRD acquisitions.

Signal: every object voxel's fingerprint comes from the EPG (`simulate_fingerprints`) at that voxel's own
(continuous) T1, T2 and B1, times its PD; voxels that share all three values share one simulation. With a
`slice_profile` (mrf_core.physics.slice_profile) it is the sum over sub-slices of the fingerprints at the
profile's flip scales, and the header states the pulse (user parameter MRF_slice_profile).
The EPG signal is i exp(i rf_phase) times a real fingerprint (see mrf_core.physics.epg), so the slice's
fingerprints are compressed in real arithmetic to a temporal subspace: U (n_timepoints, K), the
leading eigenvectors of the PD^2-weighted Gram matrix of the slice's own fingerprints, with K the
smallest rank whose discarded energy is <= svd_tolerance (relative, default 1e-6, i.e. ~1e-3 in
amplitude; K <= max_rank). The exact figure is reported per slice (`SliceModel.residual`) and stored
with the ground truth. The image of TR t is then x_t = sum_k U[t, k] c_k with K coefficient images c_k.

k-space: y_{t,c} = NUFFT_{j(t)}(S_c x_t) = sum_k U[t, k] NUFFT_{j(t)}(S_c c_k), so the K x n_coils
coefficient-images are transformed once per distinct interleave (finufft type 2, one plan per block
of interleaves, n_trans = K) and every readout is a K-term sum: 1000 TRs x 16 coils never exist as
images. The forward model is y(k) = sum_r x(r) exp(-2 pi i k.r / N) (mrf_core.recon.trajectory).

Noise (mrf_core.sim.coil_sim): complex Gaussian, correlated across channels, with per-channel standard
deviation ~ sigma = matrix * s_mean / SNR, where s_mean is the mean over the object's voxels and time
points of |PD x fingerprint|: with this forward model sigma / matrix is the image-domain noise of a
Nyquist-sampled Cartesian image of one time point, so SNR is that image's mean object signal over its
noise standard deviation. Noise readouts (ACQ_IS_NOISE_MEASUREMENT) come first; a noiseless scan
(snr None) has none.

Timing: slices are played one after another, each as inversion + the whole schedule, separated by
slice_delay_ms; readouts of one TR (several only in fully sampled test scans) share a time stamp.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import finufft
import ismrmrd
import numpy as np

from mrf_core.errors import MrfError
from mrf_core.io.rawio import INDEX_MAP_PARAMETER, TIMESTAMP_TICK_MS, GroundTruth, IndexMap, write_raw
from mrf_core.physics.epg import DEFAULT_N_STATES, signal_phase, simulate_fingerprints
from mrf_core.physics.sequence import FispSchedule
from mrf_core.physics.slice_profile import SliceProfile, profile_fingerprints
from mrf_core.progress import bar as progress_bar
from mrf_core.recon.trajectory import GAMMA_HZ_PER_T, Spiral, SpiralParams, design_spiral, nufft_coords
from mrf_core.sim.coil_sim import birdcage_sensitivities, correlated_noise, noise_covariance
from mrf_core.sim.phantoms import Phantom

_EPG_CHUNK = 4096  # atoms per EPG call
_FINGERPRINT_CACHE_BYTES = 256 * 2**20  # keep a slice's fingerprints for the projection pass below this
_NUFFT_EPS = 1e-6
_START_OF_MEASUREMENT_MS = 10 * 3600 * 1000.0  # 10:00:00
_NOISE_READOUT_SPACING_MS = 10.0


class SimulationSetupError(MrfError):
    """Simulation settings that cannot work together: the message names the field and the value."""


@dataclass(frozen=True)
class ScanSettings:
    """Receive chain, noise, slice geometry and numerics of a simulated scan (the spiral and the
    schedule are separate). snr None: noiseless. slice_profile None: an ideal profile. block_mb: memory
    for the transformed coefficient images of one block of interleaves (rank x coils x interleaves x
    samples x 8 bytes: ~180 MB for all 48 interleaves of the standard scan at rank 14; golden-angle scans
    go in blocks)."""

    n_coils: int = 16
    snr: float | None = 40.0
    noise_correlation: float = 0.3
    n_noise_readouts: int = 4
    slice_thickness_mm: float = 5.0
    slice_spacing_mm: float = 10.0
    slice_delay_ms: float = 3000.0
    n_states: int = DEFAULT_N_STATES
    svd_tolerance: float = 1e-6
    max_rank: int = 64
    block_mb: float = 512.0
    seed: int = 0
    index_map: IndexMap = field(default_factory=IndexMap)
    stack_of_spirals: bool = False
    slice_profile: SliceProfile | None = None

    def __post_init__(self) -> None:
        checks = (
            ("n_coils", self.n_coils >= 1), ("n_noise_readouts", self.n_noise_readouts >= 0),
            ("slice_thickness_mm", self.slice_thickness_mm > 0), ("slice_spacing_mm", self.slice_spacing_mm >= 0),
            ("slice_delay_ms", self.slice_delay_ms >= 0), ("n_states", self.n_states >= 2),
            ("svd_tolerance", 0 <= self.svd_tolerance < 1), ("max_rank", self.max_rank >= 1),
            ("block_mb", self.block_mb > 0),
        )
        for name, ok in checks:
            if not ok:
                raise SimulationSetupError(f"{name} = {getattr(self, name)!r} is out of range")
        if self.snr is not None and not (math.isfinite(self.snr) and self.snr > 0):
            raise SimulationSetupError(f"snr = {self.snr!r} must be > 0 (or None for a noiseless scan)")


@dataclass
class SliceModel:
    """A slice in the temporal subspace: coefficients (K, N, N) float32 (PD included; the complex
    factor i exp(i rf_phase) is applied in k-space), basis (n_timepoints, K) float64 real, the
    relative energy the rank leaves out, and sum over voxels of PD * mean_t |fingerprint|."""

    coefficients: np.ndarray
    basis: np.ndarray
    residual: float
    n_atoms: int
    n_voxels: int
    signal_sum: float

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])


def _fingerprints(schedule: FispSchedule, atoms: np.ndarray, n_states: int,
                  profile: SliceProfile | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """Real fingerprints of atoms (b1, t1_ms, t2_ms), in chunks: (rows, (n, n_timepoints) float32).

    Atoms come sorted by B1, so a chunk holds few B1 values and the EPG groups them onto its
    one-rotation-per-TR path (the phantoms quantise B1 for this)."""
    for lo in progress_bar(range(0, len(atoms), _EPG_CHUNK), desc="EPG of the phantom's distinct voxels",
                           unit="chunk"):
        rows = slice(lo, min(lo + _EPG_CHUNK, len(atoms)))
        if profile is not None:
            yield rows, profile_fingerprints(schedule, atoms[rows, 1], atoms[rows, 2], atoms[rows, 0], profile,
                                             n_states=n_states, device="cpu").numpy()
        else:
            yield rows, simulate_fingerprints(schedule, atoms[rows, 1], atoms[rows, 2], atoms[rows, 0],
                                              n_states=n_states, device="cpu").numpy()


def subspace_model(
    phantom: Phantom,
    slice_index: int,
    schedule: FispSchedule,
    n_states: int = DEFAULT_N_STATES,
    svd_tolerance: float = 1e-6,
    max_rank: int = 64,
    profile: SliceProfile | None = None,
) -> SliceModel:
    """Simulate the slice's distinct voxels with the EPG and compress them (module docstring)."""
    mask = phantom.mask[slice_index]
    pd = phantom.pd[slice_index][mask].astype(np.float64)
    keys = np.stack([phantom.b1[slice_index][mask], phantom.t1_ms[slice_index][mask],
                     phantom.t2_ms[slice_index][mask]], axis=1).astype(np.float64)
    atoms, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    weight = np.bincount(inverse, weights=pd**2, minlength=len(atoms))
    pd_sum = np.bincount(inverse, weights=pd, minlength=len(atoms))
    n_t = schedule.n_timepoints
    gram = np.zeros((n_t, n_t))
    mean_abs = np.empty(len(atoms))
    cache = [] if len(atoms) * n_t * 4 <= _FINGERPRINT_CACHE_BYTES else None
    for rows, f in _fingerprints(schedule, atoms, n_states, profile):
        g = f.astype(np.float64) * np.sqrt(weight[rows])[:, None]
        gram += g.T @ g
        mean_abs[rows] = np.abs(f).mean(axis=1)
        if cache is not None:
            cache.append((rows, f))
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    eigenvalues, eigenvectors = np.clip(eigenvalues[::-1], 0, None), eigenvectors[:, ::-1]
    total = eigenvalues.sum()
    left_out = (total - np.cumsum(eigenvalues)) / total if total > 0 else np.zeros(n_t)
    enough = np.flatnonzero(left_out <= svd_tolerance)
    rank = min(int(enough[0]) + 1 if enough.size else n_t, max_rank, len(atoms))
    basis = np.ascontiguousarray(eigenvectors[:, :rank])
    coeff_atoms = np.empty((len(atoms), rank))
    for rows, f in cache if cache is not None else _fingerprints(schedule, atoms, n_states, profile):
        coeff_atoms[rows] = f @ basis
    n = phantom.matrix
    coefficients = np.zeros((rank, n, n), dtype=np.float32)
    coefficients[:, mask] = (coeff_atoms[inverse] * pd[:, None]).T
    return SliceModel(coefficients, basis, float(max(left_out[rank - 1], 0.0)), len(atoms), int(mask.sum()),
                      float(pd_sum @ mean_abs))


@dataclass
class SimulationStats:
    """Where the time went (seconds; "readouts": synthesis and noise, not the consumer's writing) and
    what the subspace did, filled in while simulating."""

    seconds: dict[str, float] = field(default_factory=lambda: {"epg_subspace": 0.0, "nufft": 0.0, "readouts": 0.0})
    ranks: list[int] = field(default_factory=list)
    residuals: list[float] = field(default_factory=list)
    n_atoms: list[int] = field(default_factory=list)


class SimulatedScan:
    """A spiral MRF scan of a phantom, ready to stream: the header, the ground truth and a generator of
    acquisitions. The EPG and subspace work happens here; k-space is made while iterating."""

    def __init__(
        self,
        phantom: Phantom,
        schedule: FispSchedule,
        spiral_params: SpiralParams,
        settings: ScanSettings = ScanSettings(),
        progress: bool | None = None,
    ):
        if phantom.matrix != spiral_params.matrix or abs(phantom.fov_mm - spiral_params.fov_mm) > 1e-6:
            raise SimulationSetupError(
                f"phantom grid {phantom.matrix} over {phantom.fov_mm:g} mm disagrees with the spiral's matrix "
                f"{spiral_params.matrix} over fov_mm {spiral_params.fov_mm:g}"
            )
        if phantom.field_t is None:
            raise SimulationSetupError("phantom field_t is None: the header needs a field strength")
        self.phantom, self.schedule, self.settings, self.progress = phantom, schedule, settings, progress
        self.spiral: Spiral = design_spiral(spiral_params)
        self.spiral.check_schedule_length(schedule.n_timepoints)
        if settings.stack_of_spirals:  # partition image z at (z - n // 2) * thickness: the centred kz encoding's
            offsets = np.arange(phantom.n_slices) - phantom.n_slices // 2
            self.slice_positions_mm = offsets * settings.slice_thickness_mm
        else:
            self.slice_positions_mm = ((np.arange(phantom.n_slices) - (phantom.n_slices - 1) / 2)
                                       * settings.slice_spacing_mm)
        self.sensitivities = birdcage_sensitivities(settings.n_coils, phantom.matrix, phantom.fov_mm,
                                                    self.slice_positions_mm)
        self.noise_covariance = noise_covariance(self.sensitivities, settings.noise_correlation, settings.seed)
        self.stats = SimulationStats()
        started = time.perf_counter()
        self.models = [
            subspace_model(phantom, s, schedule, settings.n_states, settings.svd_tolerance, settings.max_rank,
                           settings.slice_profile)
            for s in range(phantom.n_slices)
        ]
        self.stats.seconds["epg_subspace"] = time.perf_counter() - started
        for m in self.models:
            self.stats.ranks.append(m.rank)
            self.stats.residuals.append(m.residual)
            self.stats.n_atoms.append(m.n_atoms)
        self.reference_signal = sum(m.signal_sum for m in self.models) / sum(m.n_voxels for m in self.models)
        self.noise_sigma = 0.0 if settings.snr is None else phantom.matrix * self.reference_signal / settings.snr
        self.n_noise_readouts = settings.n_noise_readouts if settings.snr is not None else 0
        self.n_acquisitions = (self.n_noise_readouts
                               + phantom.n_slices * schedule.n_timepoints * spiral_params.interleaves_per_tr)
        self.header = self._header()

    # ---- header and truth -----------------------------------------------------------------------
    def _header(self):
        xsd, p, sp = ismrmrd.xsd, self.phantom, self.spiral.params
        n, fov, imap = p.matrix, p.fov_mm, self.settings.index_map
        header = xsd.ismrmrdHeader(experimentalConditions=xsd.experimentalConditionsType(
            H1resonanceFrequency_Hz=int(round(GAMMA_HZ_PER_T * p.field_t))
        ))
        header.measurementInformation = xsd.measurementInformationType(
            measurementID=f"mrf_simulate_{self.settings.seed}", patientPosition=xsd.patientPositionType.HFS,
            protocolName="FISP-MRF spiral (simulated)", sequenceName="mrf_fisp_spiral",
        )
        header.acquisitionSystemInformation = xsd.acquisitionSystemInformationType(
            systemVendor="mrf-gadgetron", systemModel="spiral MRF simulator",
            systemFieldStrength_T=float(p.field_t), relativeReceiverNoiseBandwidth=1.0,
            receiverChannels=self.settings.n_coils,
            coilLabel=[xsd.coilLabelType(coilNumber=c, coilName=f"SIM{c:02d}") for c in range(self.settings.n_coils)],
        )
        n_z = p.n_slices if self.settings.stack_of_spirals else 1
        space = xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=n, y=n, z=n_z),
            fieldOfView_mm=xsd.fieldOfViewMm(x=fov, y=fov, z=self.settings.slice_thickness_mm * n_z),
        )
        last_interleave = (sp.n_interleaves - 1 if sp.rotation == "sequential"
                           else int(self.spiral.interleaves_of_tr(self.schedule.n_timepoints - 1).max()))
        limits = xsd.encodingLimitsType()
        roles = (("timepoint", self.schedule.n_timepoints - 1), ("interleave", last_interleave),
                 ("slice", 0 if n_z > 1 else p.n_slices - 1), ("partition", n_z - 1))
        for role, maximum in roles:
            name = imap.limit_name(role)
            if name is not None:
                setattr(limits, name, xsd.limitType(minimum=0, maximum=int(maximum), center=0))
        header.encoding = [xsd.encodingType(
            encodedSpace=space, reconSpace=space, encodingLimits=limits, trajectory=xsd.trajectoryType.SPIRAL,
            trajectoryDescription=sp.to_ismrmrd(self.spiral.n_samples),
        )]
        self.schedule.to_ismrmrd(header)  # sequenceParameters and the MRF user parameters
        header.userParameters.userParameterString.append(
            xsd.userParameterStringType(name=INDEX_MAP_PARAMETER, value=imap.to_string())
        )
        if self.settings.slice_profile is not None:
            header.userParameters.userParameterString.append(
                xsd.userParameterStringType(name="MRF_slice_profile", value=self.settings.slice_profile.spec))
        return header

    def truth(self) -> GroundTruth:
        s = self.settings
        return GroundTruth(
            phantom=self.phantom,
            coil_sensitivities=self.sensitivities,
            noise_covariance=self.noise_covariance,
            simulation={
                "snr": s.snr, "noise_sigma": self.noise_sigma, "reference_signal": self.reference_signal,
                "noise_correlation": s.noise_correlation, "n_coils": s.n_coils, "seed": s.seed,
                "n_states": s.n_states, "svd_tolerance": s.svd_tolerance, "svd_rank": self.stats.ranks,
                "slice_profile": s.slice_profile.spec if s.slice_profile else "none",
                "svd_residual_energy": self.stats.residuals, "n_distinct_voxels": self.stats.n_atoms,
                "slice_positions_mm": self.slice_positions_mm.tolist(),
                "schedule": self.schedule.name, "schedule_hash": self.schedule.hash,
                "spiral": asdict(self.spiral.params), "n_samples": self.spiral.n_samples,
            },
        )

    # ---- acquisitions ---------------------------------------------------------------------------
    def acquisitions(self) -> Iterator[ismrmrd.Acquisition]:
        """Noise readouts, then every slice's readouts in time order (the module docstring)."""
        rng = np.random.default_rng(self.settings.seed)
        cholesky = np.linalg.cholesky(self.noise_covariance)
        schedule, spiral = self.schedule, self.spiral
        counter = itertools.count(1)
        for i in range(self.n_noise_readouts):
            noise = correlated_noise(rng, cholesky, self.noise_sigma, spiral.n_samples)
            time_ms = _START_OF_MEASUREMENT_MS + i * _NOISE_READOUT_SPACING_MS
            acq = self._acquisition(noise, None, next(counter), time_ms, 0)
            acq.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
            yield acq
        inversion_ms = schedule.ti_ms if schedule.inversion else 0.0
        pulse_ms = inversion_ms + np.concatenate([[0.0], np.cumsum(schedule.tr_ms)[:-1]]) + schedule.te_ms
        slice_ms = inversion_ms + schedule.tr_ms.sum() + self.settings.slice_delay_ms
        first_ms = _START_OF_MEASUREMENT_MS + self.n_noise_readouts * _NOISE_READOUT_SPACING_MS
        per_tr = spiral.params.interleaves_per_tr
        stack = self.settings.stack_of_spirals
        bar = progress_bar(total=self.n_acquisitions, desc="simulating readouts", unit="readout",
                           enabled=self.progress)
        for s in range(len(self.models)):  # a stack of spirals: s is the partition, each a whole train
            for t_start, t_stop, interleaves in self._blocks(sum(m.rank for m in self.models) if stack
                                                            else self.models[s].rank):
                kspace = self._kspace(s, interleaves)
                position = {j: i for i, j in enumerate(interleaves)}
                for t in range(t_start, t_stop):
                    for r, j in enumerate(spiral.interleaves_of_tr(t)):
                        started = time.perf_counter()
                        data = kspace(t, position[j])
                        if self.noise_sigma:
                            data += correlated_noise(rng, cholesky, self.noise_sigma, spiral.n_samples)
                        # a slab's readouts have its centre's position: partition n // 2 sits at 0
                        acq = self._acquisition(data, spiral.traj(j), next(counter), first_ms + s * slice_ms
                                                + pulse_ms[t], len(self.models) // 2 if stack else s)
                        self.settings.index_map.set(acq, t, j, 0 if stack else s, s if stack else 0)
                        if t == 0 and r == 0:
                            acq.set_flag(ismrmrd.ACQ_FIRST_IN_SLICE)
                        if t == schedule.n_timepoints - 1 and r == per_tr - 1:
                            acq.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
                            if s == len(self.models) - 1:
                                acq.set_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
                        self.stats.seconds["readouts"] += time.perf_counter() - started
                        yield acq
                        bar.update()
                del kspace  # before the next block's is made: one block in memory at a time
        bar.close()

    def _kspace(self, s: int, interleaves: list[int]) -> Callable[[int, int], np.ndarray]:
        """(t, position of the interleave in the block) -> the noiseless readout (C, S) of slice s, or with
        stack_of_spirals of partition s: the centred orthonormal DFT over the slices' readouts,
        y_p = sum_z x_z exp(-2 pi i (p - n//2)(z - n//2) / n) / sqrt(n)."""
        if not self.settings.stack_of_spirals:
            model, kspace = self.models[s], self._kspace_basis(self.models[s], s, interleaves)
            return lambda t, i: np.tensordot(model.basis[t].astype(np.float32), kspace[:, :, i], axes=1)
        n = len(self.models)
        kspaces = [self._kspace_basis(m, z, interleaves) for z, m in enumerate(self.models)]  # again per partition
        phase = (np.exp(-2j * np.pi * (s - n // 2) * (np.arange(n) - n // 2) / n) / np.sqrt(n)).astype(np.complex64)

        def partition(t: int, i: int) -> np.ndarray:
            return sum(phase[z] * np.tensordot(m.basis[t].astype(np.float32), k[:, :, i], axes=1)
                       for z, (m, k) in enumerate(zip(self.models, kspaces, strict=True)))

        return partition

    def _blocks(self, rank: int) -> Iterator[tuple[int, int, list[int]]]:
        """Contiguous TR ranges whose distinct interleaves fit the block_mb budget."""
        per_interleave = rank * self.settings.n_coils * self.spiral.n_samples * 8
        budget = max(self.spiral.params.interleaves_per_tr, int(self.settings.block_mb * 2**20 // per_interleave))
        start, seen = 0, set()
        for t in range(self.schedule.n_timepoints):
            now = set(self.spiral.interleaves_of_tr(t).tolist())
            if len(seen | now) > budget:
                yield start, t, sorted(seen)
                start, seen = t, set()
            seen |= now
        yield start, self.schedule.n_timepoints, sorted(seen)

    def _kspace_basis(self, model: SliceModel, slice_index: int, interleaves: list[int]) -> np.ndarray:
        """NUFFT of S_c * i exp(i rf_phase) * c_k on the given interleaves: (K, n_coils, J, n_samples)."""
        started = time.perf_counter()
        n, rank = self.phantom.matrix, model.rank
        rows, cols = nufft_coords(self.spiral.traj(np.asarray(interleaves)), n)
        plan = finufft.Plan(2, (n, n), n_trans=rank, eps=_NUFFT_EPS, isign=-1, dtype="complex64")
        plan.setpts(rows.astype(np.float32), cols.astype(np.float32))
        factor = np.complex64(signal_phase(self.schedule))
        out = np.empty((rank, self.settings.n_coils, len(interleaves) * self.spiral.n_samples), dtype=np.complex64)
        for c in range(self.settings.n_coils):
            out[:, c] = plan.execute((self.sensitivities[c, slice_index] * factor) * model.coefficients)
        self.stats.seconds["nufft"] += time.perf_counter() - started
        return out.reshape(rank, self.settings.n_coils, len(interleaves), self.spiral.n_samples)

    def _acquisition(self, data: np.ndarray, traj: np.ndarray | None, counter: int, time_ms: float,
                     slice_index: int) -> ismrmrd.Acquisition:
        acq = ismrmrd.Acquisition.from_array(
            np.ascontiguousarray(data, dtype=np.complex64), traj,
            version=1, measurement_uid=1, scan_counter=counter,
            acquisition_time_stamp=int(round(time_ms / TIMESTAMP_TICK_MS)),
            sample_time_us=float(self.spiral.params.dwell_us), center_sample=0,
        )
        _set_channels_active(acq, self.settings.n_coils)
        acq.position[:] = (0.0, 0.0, float(self.slice_positions_mm[slice_index]))
        acq.read_dir[:] = (1.0, 0.0, 0.0)
        acq.phase_dir[:] = (0.0, 1.0, 0.0)
        acq.slice_dir[:] = (0.0, 0.0, 1.0)
        return acq


def _set_channels_active(acq: ismrmrd.Acquisition, n_channels: int) -> None:
    """Mark channels 0..n-1 active in the channel mask, as ismrmrd >= 1.15's setChannelActive does (channel c:
    bit c % 64 of word c // 64); by hand, because ismrmrd 1.14 (Gadgetron's image) has no such method."""
    mask = acq.channel_mask  # the header's uint64[16] array, written in place
    for channel in range(n_channels):
        word, bit = divmod(channel, 64)
        mask[word] |= 1 << bit


@dataclass
class SimulationReport:
    """What `simulate_to_file` did: the path, counts, sizes, timings (s) and the subspace figures."""

    path: Path
    n_acquisitions: int
    n_samples: int
    file_bytes: int
    seconds_total: float
    seconds: dict[str, float]
    ranks: list[int]
    residuals: list[float]
    noise_sigma: float

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        ranks = ", ".join(f"{k} (residual energy {r:.1e})" for k, r in zip(self.ranks, self.residuals, strict=True))
        return (
            f"wrote {self.path}: {self.n_acquisitions} acquisitions of {self.n_samples} samples, "
            f"{self.file_bytes / 2**20:.1f} MiB in {self.seconds_total:.1f} s ({parts}, write and rest "
            f"{self.seconds_total - sum(self.seconds.values()):.1f} s); subspace rank per slice {ranks}; "
            f"noise sigma {self.noise_sigma:.4g}"
        )


def simulate_to_file(
    path: str | Path,
    phantom: Phantom,
    schedule: FispSchedule,
    spiral_params: SpiralParams,
    settings: ScanSettings = ScanSettings(),
    dataset: str = "dataset",
    progress: bool | None = None,
) -> SimulationReport:
    """Simulate a scan and write it (header, acquisitions, ground truth) atomically to `path`."""
    started = time.perf_counter()
    scan = SimulatedScan(phantom, schedule, spiral_params, settings, progress)
    n = write_raw(path, scan.header, scan.acquisitions(), scan.truth, dataset=dataset)
    path = Path(path)
    return SimulationReport(
        path=path, n_acquisitions=n, n_samples=scan.spiral.n_samples, file_bytes=path.stat().st_size,
        seconds_total=time.perf_counter() - started, seconds=dict(scan.stats.seconds),
        ranks=scan.stats.ranks, residuals=scan.stats.residuals, noise_sigma=scan.noise_sigma,
    )
