"""Reconstruction of one MRF slice: raw readouts -> K temporal-subspace coefficient images.

Pipeline (`reconstruct_slice`; stage names are the keys of ReconResult.timings_s):
  validate   shapes, finite values, trajectory range (|k| <= matrix/2 in cycles/FOV), k-space coverage of
             the interleaves, all-zero readouts (dropped from the data, noted; all zero is an error)
  prewhiten  noise covariance from the noise scans -> whitening matrix (none: noted, identity)
  compress   the per-interleave mean of the readouts (mrf_core.recon.subspace.reduce_readouts), whose
             whitened channel covariance gives the SVD coil compression: the fewest virtual coils that
             keep coil_energy of its energy, at most n_virtual_coils; whitening and compression become one
             channel matrix
  coil_maps  coil images of the per-interleave mean (the time average, fully sampled over the TRs) ->
             sensitivities ("lowres" or "espirit", mrf_core.recon.coils) and the combined time-average image
  reduce     a second pass over the readouts: per interleave, the sums weighted by the basis rows, in the
             virtual coils (only those are stored)
  adjoint    A^H W y from the reduced data
  psf        Toeplitz PSF kernels (cg, llr; cached on disk with psf_cache_dir)
  iterations CG or FISTA iterations on the Toeplitz normal operator
  refit      (with a refit, reconstruct_slice) the basis for a second pass; reduce, adjoint, psf and
             iterations then run again in it
  gridding   (gridding only) per-readout adjoint NUFFTs

Methods (METHODS):
- "gridding" (Ma 2013): every time point gridded on its own (single-interleave density compensation,
  coil maps combine the coils), giving the full time series (ReconResult.time_series, T x N x N); the
  coefficients are its projection onto the basis. Matching the time series in time is the baseline.
  Because gridding is linear, the projection of the gridded series onto a basis equals the
  back-projection with that basis: matching in time equals matching in the dictionary's full SVD
  subspace (up to its residual energy), which is how the CLI and the benchmark match it at 256^2.
- "backprojection" (SVD-MRF, McGivney 2014): A^H W y scaled by the inverse of its expected gain,
  (N^2 / J sum_j G_j)^-1 (G_j the basis Gram matrix of interleave j's readouts, J interleaves).
- "cg": least squares min ||W^(1/2) (A c - y)||^2 (+ lambda_l2 ||c||^2, relative to that gain) by
  conjugate gradients on the Toeplitz normal equations, started from the back-projection.
- "llr": the same data term plus llr_lambda x the sum of nuclear norms of block x block x K Casorati
  blocks (FISTA, random block shifts), llr_lambda relative to the largest block singular value of the
  back-projection, started from the back-projection.
W is the DCF when dcf_weighting (a preconditioner), else 1.

Scale: coefficients are in whitened-channel units of A^H W y / N^2 with coil maps of unit RSS, so the
time-average image and the coefficients share a scale; PD from matching is relative.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from mrf_core.errors import MrfError
from mrf_core.physics.temporal_basis import TemporalBasis
from mrf_core.progress import bar as progress_bar
from mrf_core.recon.coils import COIL_METHODS, combine_coils, compression_matrix, estimate_coil_maps, noise_whitening
from mrf_core.recon.gather import SliceData
from mrf_core.recon.nufft import BACKENDS, DEFAULT_THREADS, Nufft, backend_available
from mrf_core.recon.subspace import (
    STEP_MARGIN,
    SubspaceOperator,
    SubspaceSampling,
    ToeplitzNormal,
    conjugate_gradient,
    fista_llr,
    reduce_readouts,
)

log = logging.getLogger(__name__)

METHODS = ("gridding", "backprojection", "cg", "llr")
_K_EDGE_TOLERANCE = 1.01  # trajectories may overshoot matrix/2 by 1 % (rounding of the last sample)
_COVERAGE_CELLS = 16  # k-space coverage is checked on a 16 x 16 grid of cells
_COVERAGE_RADIUS = 0.95  # ... inside this fraction of matrix/2
# Measured on the NIST plates (256^2, 1000 TRs; README): CG semi-converges (T2 error grows after ~5
# iterations: noise and the subspace model error); LLR at rank 10, lambda 1.2 needs 25 iterations (with
# FISTA's step margin; 30 at the former 1.25 x a power iteration) for the short-T1 spheres (T1 45-126 ms:
# 10 iterations leave them up to 13 % high, 20 up to 5.3 %, 25 within 4.4 %), and 27 for the brain slice's
# NRMSE of the former 30 (0.0401 / 0.0588 against 0.0404 / 0.0590; benchmarks/bench_convergence.py).
DEFAULT_ITERATIONS = {"cg": 5, "llr": 27}
# refit(coefficients, their basis, time_average) -> another basis or None (reconstruct_slice)
Refit = Callable[[np.ndarray, TemporalBasis, np.ndarray], "TemporalBasis | None"]


class ReconError(MrfError):
    """Data or settings a reconstruction cannot use: the message names the slice, field and value."""


@dataclass(frozen=True)
class ReconSettings:
    """How to reconstruct a slice (module docstring). rank: truncate the given basis to this many
    components (None: use it whole; the default model's and dictionary's bases have rank 10);
    n_virtual_coils: None or >= the channel count skips compression, else the most virtual coils, of which
    the fewest that keep coil_energy of the whitened data's energy are used; n_iterations None:
    DEFAULT_ITERATIONS of the method; step_margin: FISTA's first step-size constant over its eigenvalue
    estimate (subspace.STEP_MARGIN); coverage_min: fraction of the k-space disc the interleaves must reach
    (else ReconError); nufft_backend must run on device here (nufft.backend_available), else ReconError
    when the settings are made. Defaults measured with benchmarks/bench_qa.py --sweep,
    benchmarks/bench_convergence.py and benchmarks/bench_recon.py (README): llr at rank 10, lambda 1.2 puts
    every measurable NIST sphere within 5 % at 25 iterations, 27 for the brain's NRMSE (rank 5 leaves the
    short-T1 spheres 14-28 % high); 0.999 of the energy took 4 virtual coils on the simulated 16-channel
    scans with the maps of 8; lowres coil maps match ESPIRiT's map error at a fraction of its time; finufft
    is 3-4x faster than sigpy."""

    method: str = "llr"
    rank: int | None = None
    n_virtual_coils: int | None = 8
    coil_energy: float = 0.999
    coil_method: str = "lowres"
    coil_calibration_cycles: float = 24.0
    coil_mask_threshold: float = 0.05
    nufft_backend: str = "finufft"
    nufft_eps: float = 1e-4
    n_iterations: int | None = None
    tolerance: float = 1e-4
    dcf_weighting: bool = True
    lambda_l2: float = 0.0
    llr_lambda: float = 1.2
    llr_block: int = 8
    step_margin: float = STEP_MARGIN
    device: str = "cpu"
    n_threads: int = DEFAULT_THREADS
    psf_cache_dir: str | None = None
    coverage_min: float = 0.95

    def __post_init__(self) -> None:
        choices = (("method", METHODS), ("coil_method", COIL_METHODS), ("nufft_backend", BACKENDS))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ReconError(f"{name} = {getattr(self, name)!r} must be one of {', '.join(allowed)}")
        checks = (
            ("rank", self.rank is None or self.rank >= 1),
            ("n_virtual_coils", self.n_virtual_coils is None or self.n_virtual_coils >= 1),
            ("coil_energy", 0 < self.coil_energy <= 1),
            ("coil_calibration_cycles", self.coil_calibration_cycles > 0),
            ("coil_mask_threshold", 0 <= self.coil_mask_threshold < 1),
            ("nufft_eps", 1e-7 <= self.nufft_eps <= 1e-1),
            ("n_iterations", self.n_iterations is None or self.n_iterations >= 1),
            ("tolerance", self.tolerance >= 0), ("lambda_l2", self.lambda_l2 >= 0),
            ("llr_lambda", self.llr_lambda >= 0), ("llr_block", self.llr_block >= 2),
            ("step_margin", self.step_margin > 0),
            ("n_threads", self.n_threads >= 1), ("coverage_min", 0 <= self.coverage_min <= 1),
        )
        for name, ok in checks:
            if not ok:
                raise ReconError(f"{name} = {getattr(self, name)!r} is out of range")
        if self.method == "llr" and self.llr_lambda <= 0:
            raise ReconError("method 'llr' needs llr_lambda > 0")
        if not backend_available(self.nufft_backend, self.device):
            raise ReconError(f"nufft backend {self.nufft_backend!r} on device {self.device!r} is not available here")

    def basis_of(self, basis: TemporalBasis) -> TemporalBasis:
        """`basis` truncated to `rank` (whole when rank is None); ReconError when rank exceeds it."""
        if self.rank is None:
            return basis
        if self.rank > basis.rank:
            raise ReconError(f"rank = {self.rank} exceeds the basis' rank {basis.rank}")
        return basis.truncated(self.rank)

    @property
    def iterations(self) -> int:
        """n_iterations, or the method's measured default (DEFAULT_ITERATIONS)."""
        return self.n_iterations if self.n_iterations is not None else DEFAULT_ITERATIONS.get(self.method, 0)


@dataclass
class ReconResult:
    """Coefficients (K, N, N) complex64 in `basis`; time_average (N, N) complex64 coil-combined; coil_maps
    (V, N, N) of the virtual coils; time_series (T, N, N) only from "gridding"; timings_s per stage;
    convergence: relative residual (cg) or relative change (llr) per iteration; notes: fallbacks taken."""

    coefficients: np.ndarray
    basis: TemporalBasis
    time_average: np.ndarray
    coil_maps: np.ndarray | None
    timings_s: dict[str, float]
    notes: list[str] = field(default_factory=list)
    time_series: np.ndarray | None = None
    convergence: list[float] = field(default_factory=list)
    method: str = ""


class _Clock:
    def __init__(self):
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started

    def total(self) -> dict[str, float]:
        return {**self.timings, "total": time.perf_counter() - self._start}


def _note(notes: list[str], text: str) -> None:
    notes.append(text)
    log.warning(text)


# ---- input checks -----------------------------------------------------------------------------------
def _basis_for(basis: TemporalBasis, data: SliceData, settings: ReconSettings) -> TemporalBasis:
    if basis.schedule_hash != data.schedule.hash:
        raise ReconError(f"slice {data.slice_index}: the basis was made for schedule hash {basis.schedule_hash}, "
                         f"the scan's schedule is {data.schedule.hash} ({data.schedule.n_timepoints} TRs)")
    if basis.n_timepoints != data.schedule.n_timepoints:
        raise ReconError(f"slice {data.slice_index}: basis has {basis.n_timepoints} time points, the schedule "
                         f"{data.schedule.n_timepoints}")
    return settings.basis_of(basis)


def kspace_coverage(traj: np.ndarray, matrix: int) -> float:
    """Fraction of the k-space disc (cells of matrix/16 cycles/FOV inside 0.95 matrix/2) holding a sample."""
    cell = matrix / _COVERAGE_CELLS
    pts = np.asarray(traj, dtype=np.float64).reshape(-1, 2)
    idx = np.clip(np.floor((pts + matrix / 2.0) / cell).astype(np.int64), 0, _COVERAGE_CELLS - 1)
    occupied = np.zeros((_COVERAGE_CELLS, _COVERAGE_CELLS), dtype=bool)
    occupied[idx[:, 1], idx[:, 0]] = True
    centres = (np.arange(_COVERAGE_CELLS) + 0.5) * cell - matrix / 2.0
    inside = np.hypot(centres[:, None], centres[None, :]) + cell / math.sqrt(2) <= _COVERAGE_RADIUS * matrix / 2
    return float(occupied[inside].mean())


def _check_slice(data: SliceData, basis: TemporalBasis, settings: ReconSettings, notes: list[str]) -> np.ndarray:
    """Readouts to use (bool (R,)), or ReconError for data that cannot make an image."""
    where = f"slice {data.slice_index}"
    if data.kspace.ndim != 3:
        raise ReconError(f"{where}: kspace has shape {data.kspace.shape}, expected (readouts, coils, samples)")
    n_r, _, n_s = data.kspace.shape
    expected = {"traj": (n_r, n_s, 2), "dcf": (n_r, n_s), "interleave": (n_r,), "timepoint": (n_r,)}
    for name, shape in expected.items():
        if np.shape(getattr(data, name)) != shape:
            raise ReconError(f"{where}: {name} has shape {np.shape(getattr(data, name))}, expected {shape}")
    if data.timepoint.min() < 0 or data.timepoint.max() >= basis.n_timepoints:
        raise ReconError(f"{where}: time points reach {int(data.timepoint.max())}, outside [0, {basis.n_timepoints})")
    for name in ("traj", "dcf"):
        if not np.all(np.isfinite(getattr(data, name))):
            raise ReconError(f"{where}: {name} has non-finite values")
    if data.arrival_check is not None and data.arrival_check[0] is data.kspace:
        finite, nonzero = True, data.arrival_check[1]  # the gatherer's, from each readout as it arrived
    else:
        finite, nonzero = _finite_and_nonzero(data.kspace)
    if not finite:
        raise ReconError(f"{where}: kspace has non-finite values")
    if np.any(data.dcf < 0):
        raise ReconError(f"{where}: dcf has negative weights")
    k_edge = data.matrix / 2.0
    reach = math.sqrt(float(np.einsum("rsi,rsi->rs", data.traj, data.traj).max()))
    if reach > _K_EDGE_TOLERANCE * k_edge or reach < 0.25 * k_edge:
        raise ReconError(f"{where}: trajectory reaches |k| = {reach:.4g}; expected cycles/FOV up to matrix/2 = "
                         f"{k_edge:g}")
    if not nonzero.any():
        raise ReconError(f"{where}: all {n_r} readouts are zero")
    if not nonzero.all():
        _note(notes, f"{where}: {n_r - int(nonzero.sum())} of {n_r} readouts are all zero: left out of the data")
    used = np.flatnonzero(nonzero)
    _, first = np.unique(data.interleave[used], return_index=True)
    coverage = kspace_coverage(data.traj[used[first]], data.matrix)
    if coverage < settings.coverage_min:
        raise ReconError(f"{where}: the interleaves do not cover k-space: only {100 * coverage:.0f} % of the disc "
                         f"(cells of matrix/16 inside 0.95 x matrix/2) has a sample, < "
                         f"{100 * settings.coverage_min:.0f} %")
    return nonzero


def _finite_and_nonzero(kspace: np.ndarray, block: int = 32) -> tuple[bool, np.ndarray]:
    """Whether every sample is finite, and which readouts are not all zero, block by block of readouts
    (temporaries of a few MB instead of the raw data's size: fresh memory costs its page faults)."""
    n_r = kspace.shape[0]
    nonzero = np.empty(n_r, dtype=bool)
    for start in range(0, n_r, block):
        rows = kspace[start:start + block].reshape(min(block, n_r - start), -1)
        if not np.isfinite(rows).all():
            return False, nonzero
        nonzero[start:start + block] = (rows != 0).any(axis=1)
    return True, nonzero


# ---- pipeline ---------------------------------------------------------------------------------------
def reconstruct_slice(data: SliceData, basis: TemporalBasis, settings: ReconSettings = ReconSettings(),
                      progress: bool | None = None, observer: Callable[[int, np.ndarray], None] | None = None,
                      refit: Refit | None = None) -> ReconResult:
    """Coefficient images of one slice by `settings.method` (module docstring); observer(i, x) sees the
    iterate after each iteration (cg, llr: e.g. accuracy against iterations in one run). With `refit`
    (iterative methods), refit(coefficients, basis, time_average) may return another basis (e.g. one fitted to the
    slice's tissues, mrf_core.mapping.fitted_basis): the slice is then solved again in it, started from the
    first pass's coefficients converted into it (its PSF kernels not kept: the basis is the slice's own; with
    few interleaves they are a product of the cached per-interleave spectra, ToeplitzNormal.compute). BLAS runs
    single-threaded here: the stages' matrix products are small, and on a busy 2-core machine OpenBLAS's
    threads took up to 27 s for a 0.1 s stage (measured); finufft and the FFTs use settings.n_threads."""
    with threadpool_limits(limits=1, user_api="blas"):
        return _reconstruct(data, basis, settings, progress, observer, refit)


def _reconstruct(data: SliceData, basis: TemporalBasis, settings: ReconSettings, progress: bool | None,
                 observer: Callable[[int, np.ndarray], None] | None, refit: Refit | None) -> ReconResult:
    clock, notes = _Clock(), list(data.notes)
    basis = _basis_for(basis, data, settings)
    s = settings
    with clock("validate"):
        keep = _check_slice(data, basis, s, notes)
        rows = slice(None) if keep.all() else keep
        sampling, note = SubspaceSampling.from_readouts(data.traj[rows], data.dcf[rows], data.timepoint[rows],
                                                        data.interleave[rows], data.matrix)
        if note:
            notes.append(note)
        kspace = data.kspace[rows]
    n, n_coils = data.matrix, data.n_coils
    with clock("prewhiten"):
        whitening = _whitening(data, notes)
    with clock("compress"):
        counts = np.bincount(sampling.group, minlength=sampling.n_interleaves)
        mean = reduce_readouts(kspace, sampling, (1.0 / counts[sampling.group])[:, None].astype(np.float32))[0]
        whitening = _compression(mean, whitening, s)
        mean = (whitening @ mean.reshape(n_coils, -1)).reshape((-1,) + mean.shape[1:])  # (V, J, S)
    nufft = Nufft(sampling.traj, n, backend=s.nufft_backend, eps=s.nufft_eps, n_threads=s.n_threads,
                  device=s.device)
    with clock("coil_maps"):
        coil_images = nufft.adjoint((mean * sampling.dcf).reshape(mean.shape[0], -1)) / np.float32(n * n)
        if n_coils == 1:
            _note(notes, f"slice {data.slice_index}: one receive channel: its coil map is the phase of its "
                  "low-resolution image on the object")
        maps = estimate_coil_maps(coil_images, s.coil_method, s.coil_calibration_cycles, s.coil_mask_threshold,
                                  s.device)
        time_average = _combined(coil_images, maps)
    if s.method == "gridding":
        with clock("gridding"):
            series = _grid_time_series(kspace, sampling, whitening, maps, basis.n_timepoints, s, progress)
            coefficients = basis.project(np.moveaxis(series, 0, -1)).transpose(2, 0, 1)
        return ReconResult(np.ascontiguousarray(coefficients, dtype=np.complex64), basis, time_average, maps,
                           clock.total(), notes, time_series=series, method=s.method)

    def solve(basis: TemporalBasis, x0: np.ndarray | None = None,
              cache_kernels: bool = True) -> tuple[np.ndarray, list[float]]:
        """Coefficients in `basis` (and the convergence record), started from x0 or the back-projection;
        cache_kernels: keep its PSF kernels in the cache (not for a basis fitted to the slice)."""
        with clock("reduce"):
            z = reduce_readouts(kspace, sampling, sampling.readout_weights(basis.vectors), whitening)  # (K, V, J, S)
        op = SubspaceOperator(sampling, basis.vectors, maps, basis.signal_phase, nufft=nufft)
        with clock("adjoint"):
            rhs = op.adjoint_reduced(z, weighted=s.dcf_weighting)
            gain = _expected_gain(sampling, basis, n, s.dcf_weighting)
            backprojection = np.einsum("kl,lij->kij", np.linalg.inv(gain), rhs).astype(np.complex64)
        if s.method == "backprojection":
            return backprojection, []
        with clock("psf"):
            normal = ToeplitzNormal.compute(sampling, basis.vectors, weighted=s.dcf_weighting,
                                            backend=s.nufft_backend, eps=s.nufft_eps, n_threads=s.n_threads,
                                            device=s.device, cache_dir=s.psf_cache_dir,
                                            cache_kernels=cache_kernels)
        start = backprojection if x0 is None else x0
        with clock("iterations"), progress_bar(total=s.iterations, desc=f"{s.method} slice {data.slice_index}",
                                               unit="iteration", enabled=progress) as bar:
            def apply(c):
                return normal.apply(c, maps)

            def step(i, x):
                bar.update()
                if observer is not None:
                    observer(i, x)

            if s.method == "cg":
                scale = float(np.trace(gain)) / basis.rank
                coefficients, record = conjugate_gradient(apply, rhs, s.iterations, x0=start,
                                                          tolerance=s.tolerance, lambda_l2=s.lambda_l2 * scale,
                                                          callback=step)
            else:
                threshold = s.llr_lambda * _largest_block_value(backprojection, s.llr_block)
                lipschitz = s.step_margin * normal.largest_eigenvalue(maps)
                coefficients, record = fista_llr(apply, rhs, s.iterations, threshold, s.llr_block,
                                                 x0=start, lipschitz=lipschitz or None, callback=step)
        return coefficients, record.values

    coefficients, convergence = solve(basis)
    if refit is not None and s.method in ("cg", "llr"):
        with clock("refit"):
            fitted = refit(coefficients, basis, time_average)
        if fitted is not None:  # the second pass, from the first's coefficients in the fitted basis
            start = np.einsum("lk,kij->lij", basis.conversion_to(fitted, min_captured=0.0), coefficients)
            coefficients, convergence = solve(fitted, start.astype(np.complex64), cache_kernels=False)
            basis = fitted
    return ReconResult(np.ascontiguousarray(coefficients, dtype=np.complex64), basis, time_average, maps,
                       clock.total(), notes, convergence=convergence, method=s.method)


def warm_up(settings: ReconSettings) -> None:
    """Load what a slice's reconstruction needs on first use (the NUFFT library, the FFT, the compiled
    Toeplitz, LLR and FISTA kernels) on a tiny problem: a stream calls it while its first readouts arrive, so
    that its first slice does not pay these after its last readout."""
    if settings.method == "gridding" or settings.nufft_backend == "dft":
        return
    rng = np.random.default_rng(0)
    nufft = Nufft(rng.uniform(-4, 4, (64, 2)), 8, backend=settings.nufft_backend, eps=settings.nufft_eps,
                  n_threads=settings.n_threads, device=settings.device)
    image = nufft.adjoint(np.ones((2, 64), np.complex64))
    normal = ToeplitzNormal(np.ones((3, 16, 16), np.float32), settings.n_threads)  # rank 2 on an 8 x 8 grid
    maps = np.ones((1, 8, 8), np.complex64)
    fista_llr(lambda c: normal.apply(c, maps), normal.apply(image, maps), 1, 0.0, 8, x0=image,
              lipschitz=normal.largest_eigenvalue(maps))


def _whitening(data: SliceData, notes: list[str]) -> np.ndarray:
    where = f"slice {data.slice_index}"
    noise = data.noise
    if noise is None or noise.size == 0:
        _note(notes, f"{where}: no noise scans: channels are not prewhitened")
        return np.eye(data.n_coils, dtype=np.complex64)
    if noise.shape[0] != data.n_coils:
        _note(notes, f"{where}: noise scans have {noise.shape[0]} channels, the readouts {data.n_coils}: "
              "channels are not prewhitened")
        return np.eye(data.n_coils, dtype=np.complex64)
    matrix, note = noise_whitening(noise)
    if note:
        notes.append(f"{where}: {note}")
    return matrix


def _compression(mean: np.ndarray, whitening: np.ndarray, s: ReconSettings) -> np.ndarray:
    """The channel matrix for the raw readouts: whitening, then compression to the fewest virtual coils
    keeping s.coil_energy of the whitened energy (at most s.n_virtual_coils), from the channel covariance
    of the per-interleave mean (C, J, S): the time average, whose energy is the signal's (single readouts'
    energy is largely noise, spread evenly over the whitened channels)."""
    n_coils = mean.shape[0]
    if s.n_virtual_coils is None or s.n_virtual_coils >= n_coils:
        return whitening
    samples = whitening @ mean.reshape(n_coils, -1)
    matrix, kept = compression_matrix(samples @ samples.conj().T, s.n_virtual_coils, s.coil_energy)
    log.info("coil compression %d -> %d keeps %.2f %% of the energy", n_coils, matrix.shape[0], 100 * kept)
    return matrix @ whitening


def _combined(coil_images: np.ndarray, maps: np.ndarray) -> np.ndarray:
    weight = np.sum(np.abs(maps) ** 2, axis=0)
    combined = combine_coils(coil_images, maps)
    return np.where(weight > 0, combined / np.where(weight > 0, weight, 1.0), 0).astype(np.complex64)


def _expected_gain(sampling: SubspaceSampling, basis: TemporalBasis, n: int, weighted: bool) -> np.ndarray:
    """K x K gain of A^H W A on a smooth image: N^2 / J sum_j G_j with the DCF (each interleave carries
    1/J of the full set's unit response), sum_j (sum_s 1) G_j without."""
    gram = sampling.gram_per_interleave(basis.vectors)
    if weighted:
        return gram.sum(axis=0) * (n * n / sampling.n_interleaves)
    return gram.sum(axis=0) * sampling.n_samples


def _largest_block_value(coefficients: np.ndarray, block: int) -> float:
    rank, n, _ = coefficients.shape
    m = n // block * block
    tiles = coefficients[:, :m, :m].reshape(rank, m // block, block, m // block, block).transpose(1, 3, 2, 4, 0)
    return float(np.linalg.svd(tiles.reshape(-1, block * block, rank), compute_uv=False).max())


def _grid_time_series(kspace: np.ndarray, sampling: SubspaceSampling, coils: np.ndarray, maps: np.ndarray,
                      n_timepoints: int, s: ReconSettings, progress: bool | None) -> np.ndarray:
    """Per-time-point images (T, N, N) complex64: each readout gridded with its interleave's density
    (the union DCF x J), coils combined, readouts of one time point averaged."""
    n = sampling.matrix
    series = np.zeros((n_timepoints, n, n), dtype=np.complex64)
    per_timepoint = np.bincount(sampling.timepoint, minlength=n_timepoints)
    order = np.argsort(sampling.group, kind="stable")
    bounds = np.searchsorted(sampling.group[order], np.arange(sampling.n_interleaves + 1))
    scale = np.float32(sampling.n_interleaves / (n * n))
    for j in progress_bar(range(sampling.n_interleaves), desc="gridding", unit="interleave", enabled=progress):
        rows = order[bounds[j]:bounds[j + 1]]
        if rows.size == 0:
            continue
        y = np.einsum("vc,rcs->rvs", coils, kspace[rows], optimize=True) * (sampling.dcf[j] * scale)
        op = Nufft(sampling.traj[j], n, backend=s.nufft_backend, eps=s.nufft_eps, n_threads=s.n_threads,
                   device=s.device)
        images = combine_coils(op.adjoint(y), maps)  # (n_j, N, N)
        t = sampling.timepoint[rows]
        np.add.at(series, t, images / per_timepoint[t][:, None, None].astype(np.float32))
    return series
