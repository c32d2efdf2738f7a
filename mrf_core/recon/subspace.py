"""Low-rank temporal-subspace model of spiral MRF data: forward operator, adjoint, Toeplitz normal
operator, and the solvers (CG, FISTA with locally-low-rank regularisation).

Model (Zhao 2018, Assländer 2018, Tamir 2017): the image of time point t is x_t = phase * sum_k U[t, k] c_k
with K coefficient images c_k, U the real orthonormal temporal basis and `phase` its signal_phase, so
the coefficients are those `TemporalBasis.project` gives and matching takes. Readout r (time point
t_r, interleave j_r, coil c) samples

    y_{r,c} = F_{j_r}(S_c x_{t_r}) = phase * sum_k U[t_r, k] F_{j_r}(S_c c_k),

F_j the NUFFT onto interleave j (mrf_core.recon.nufft), S_c the coil maps. Readouts that share an interleave
share F_j, which is what makes the operators cheap (`SubspaceSampling` groups them):

- adjoint: A^H W y = conj(phase) sum_c conj(S_c) sum_j F_j^H(w_j z_{j,c}), z_{j,c,k} = sum_{r in j}
  U[t_r, k] y_{r,c} (`reduce_readouts`): one pass over the data, then K x C adjoint NUFFTs over the
  union of the J interleaves' points.
- normal: A^H W A c = sum_c conj(S_c) sum_l T_kl * (S_c c_l), T_kl the convolution with the PSF
  p_kl(d) = sum_j G_j[k, l] sum_s w_{j,s} exp(2 pi i k_{j,s}.d / N), G_j = sum_{r in j} U[t_r]^T U[t_r]:
  a linear convolution on a 2N x 2N grid (Toeplitz embedding, Wajer 2001, Fessler 2005), so each CG
  iteration costs 2 K C FFTs of (2N)^2 and no NUFFT. The PSFs are Hermitian (w real), so their
  spectra are real; only the K(K+1)/2 pairs k <= l are needed, made from the J interleaves' own PSF
  spectra (cached on disk, keyed by trajectory and weights) when J <= K(K+1)/2, else directly (one
  type-1 NUFFT with K(K+1)/2 weight vectors), and cached keyed by the basis too.

W is the density compensation (the `weighted` flag): weighting the normal equations with it is a
preconditioner (fast convergence) at the price of slightly non-optimal noise weighting; W = 1 gives
the plain least-squares problem.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import scipy.fft

from mrf_core.errors import MrfError
from mrf_core.io.atomic import atomic_path
from mrf_core.jit import njit_cached, numba_threads
from mrf_core.recon.coils import combine_coils
from mrf_core.recon.nufft import DEFAULT_EPS, DEFAULT_THREADS, Nufft

log = logging.getLogger(__name__)

_TRAJ_AGREEMENT_CYCLES = 1e-3  # readouts sharing an interleave label must agree to this (cycles/FOV)
_KERNEL_FORMAT = 2  # bump when the cached kernel layout changes
# FISTA's first step-size constant L, as a multiple of a 5-step Lanczos estimate of N's largest eigenvalue.
# The reconstruction's estimate (ToeplitzNormal.largest_eigenvalue: one channel on the coils' support) is
# 3911 on the standard slice, whose largest eigenvalue is 4252: 0.8 gave the NIST accuracy and brain NRMSE
# of the former 0.9 x the coil-wise estimate (3715) in the same 25 iterations; 0.7 backtracked (L doubled)
# on every slice of the sweep, 0.9 converged more slowly (README sweep)
STEP_MARGIN = 0.8
_LANCZOS_STEPS = 5
_BACKTRACK_FACTOR = 2.0  # FISTA's step-size backtracking: L grows by this factor (at least) per failed step
_MAX_BACKTRACKS = 100  # 2^100: far beyond any finite operator norm reached from a positive estimate
# d^H N d is the difference of two float32 normal-operator outputs: a backtracking check tolerates this
# relative rounding of them (otherwise steps at float32's noise level would grow L for nothing)
_CURVATURE_ROUNDING = 1e-5
_MIX_CHUNK = 512  # pixels per numba work item: its K(K+1)/2 kernel rows (~110 kB at K = 10) stay in cache


class SubspaceError(MrfError):
    """Sampling, basis or images that do not fit together: the message names the field and value."""


# ---- sampling ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SubspaceSampling:
    """Readouts grouped by the interleave (distinct trajectory) they sampled.

    traj: (J, S, 2) float32 cycles/FOV, one per distinct interleave; dcf: (J, S) float32 area per
    sample; group: (R,) readout -> interleave row in traj; timepoint: (R,) readout -> time point;
    matrix: image size N.
    """

    traj: np.ndarray
    dcf: np.ndarray
    group: np.ndarray
    timepoint: np.ndarray
    matrix: int

    @property
    def n_interleaves(self) -> int:
        return int(self.traj.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.traj.shape[1])

    @property
    def n_readouts(self) -> int:
        return int(self.group.size)

    @classmethod
    def from_readouts(cls, traj: np.ndarray, dcf: np.ndarray, timepoint: np.ndarray, interleave: np.ndarray,
                      matrix: int) -> tuple[SubspaceSampling, str | None]:
        """Group readouts (traj (R, S, 2), dcf (R, S)) by interleave label. Returns (sampling, note): when
        readouts with one label have different trajectories, every readout becomes its own group and
        the note says so."""
        traj = np.asarray(traj, dtype=np.float32)
        labels, first, group = np.unique(np.asarray(interleave), return_index=True, return_inverse=True)
        note = None
        spread = float(np.abs(traj - traj[first][group]).max()) if traj.size else 0.0
        if spread > _TRAJ_AGREEMENT_CYCLES:
            note = (f"readouts with the same interleave index have trajectories up to {spread:.3g} cycles/FOV "
                    "apart: every readout is treated as its own interleave (slower)")
            log.warning(note)
            first, group = np.arange(traj.shape[0]), np.arange(traj.shape[0])
        return cls(np.ascontiguousarray(traj[first]), np.ascontiguousarray(np.asarray(dcf, np.float32)[first]),
                   group.astype(np.int64), np.asarray(timepoint, dtype=np.int64), int(matrix)), note

    def readout_weights(self, vectors: np.ndarray) -> np.ndarray:
        """Rows of the basis for each readout: (R, K) float32."""
        return np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[self.timepoint])

    def gram_per_interleave(self, vectors: np.ndarray) -> np.ndarray:
        """G_j = sum_{r in j} U[t_r]^T U[t_r]: (J, K, K) float64."""
        u = np.asarray(vectors, dtype=np.float64)[self.timepoint]
        gram = np.zeros((self.n_interleaves, u.shape[1], u.shape[1]))
        np.add.at(gram, self.group, u[:, :, None] * u[:, None, :])
        return gram


def reduce_readouts(kspace: np.ndarray, sampling: SubspaceSampling, weights: np.ndarray,
                    channels: np.ndarray | None = None) -> np.ndarray:
    """z[m, v, j] = sum_{r in j} weights[r, m] sum_c channels[v, c] kspace[r, c]: readouts (R, C, S) ->
    (M, V, J, S) complex64 (channels None: the identity, V = C).

    The one pass over the raw data the subspace methods need (weights: basis rows, or 1/n_j for the
    per-interleave mean; channels: prewhitening and coil compression as one matrix, applied here so that
    only the V virtual coils' sums are ever stored). The layout puts the channel axis before the points so
    that the NUFFT sees (M, V) transforms of J x S points."""
    n_r, n_c, n_s = kspace.shape
    weights = np.asarray(weights)
    if weights.shape[0] != n_r or sampling.n_readouts != n_r:
        raise SubspaceError(f"reduce_readouts: {n_r} readouts, {weights.shape[0]} weight rows, "
                            f"{sampling.n_readouts} readouts in the sampling")
    if channels is not None and (channels.ndim != 2 or channels.shape[1] != n_c):
        raise SubspaceError(f"reduce_readouts: channel matrix of shape {channels.shape} for {n_c} channels")
    n_m, n_v = weights.shape[1], n_c if channels is None else channels.shape[0]
    out = np.zeros((n_m, n_v, sampling.n_interleaves, n_s), dtype=np.complex64)
    order = np.argsort(sampling.group, kind="stable")
    bounds = np.searchsorted(sampling.group[order], np.arange(sampling.n_interleaves + 1))
    flat = kspace.reshape(n_r, n_c * n_s)
    w = weights.astype(np.complex64)
    mix = None if channels is None else np.asarray(channels, dtype=np.complex64)
    for j in range(sampling.n_interleaves):
        rows = order[bounds[j]:bounds[j + 1]]
        if rows.size:
            sums = (w[rows].T @ flat[rows]).reshape(n_m, n_c, n_s)
            out[:, :, j, :] = sums if mix is None else mix @ sums
    return out


# ---- forward and adjoint ----------------------------------------------------------------------------
class SubspaceOperator:
    """A: coefficient images (K, N, N) -> readouts (R, C, S), and its (weighted) adjoint.

    vectors: basis (T, K) real; coil_maps (C, N, N) complex; phase: the basis' signal_phase.
    """

    def __init__(self, sampling: SubspaceSampling, vectors: np.ndarray, coil_maps: np.ndarray, phase: complex = 1.0,
                 backend: str = "finufft", eps: float = DEFAULT_EPS, n_threads: int = DEFAULT_THREADS,
                 device: str = "cpu", nufft: Nufft | None = None):
        n = sampling.matrix
        coil_maps = np.asarray(coil_maps, dtype=np.complex64)
        if coil_maps.ndim != 3 or coil_maps.shape[1:] != (n, n):
            raise SubspaceError(f"coil_maps have shape {coil_maps.shape}, expected (n_coils, {n}, {n})")
        if int(sampling.timepoint.max()) >= vectors.shape[0]:
            raise SubspaceError(f"readouts reach time point {int(sampling.timepoint.max())} but the basis has "
                                f"{vectors.shape[0]} time points")
        self.sampling, self.coil_maps, self.phase = sampling, coil_maps, np.complex64(phase)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.rank = int(self.vectors.shape[1])
        # the NUFFT over the union of the interleaves' points (a caller that already has it passes it)
        self.nufft = nufft if nufft is not None else Nufft(sampling.traj, n, backend=backend, eps=eps,
                                                           n_threads=n_threads, device=device)

    @property
    def n_coils(self) -> int:
        return int(self.coil_maps.shape[0])

    def forward(self, coefficients: np.ndarray) -> np.ndarray:
        """c (K, N, N) -> y (R, C, S) complex64."""
        s = self.sampling
        images = self.coil_maps[:, None] * np.asarray(coefficients, dtype=np.complex64)[None]  # (C, K, N, N)
        k = self.nufft.forward(images).reshape(self.n_coils, self.rank, s.n_interleaves, s.n_samples)
        u = s.readout_weights(self.vectors) * self.phase  # (R, K)
        per = k[:, :, s.group, :]  # (C, K, R, S)
        return np.einsum("rk,ckrs->rcs", u, per).astype(np.complex64)

    def adjoint(self, kspace: np.ndarray, weighted: bool = False) -> np.ndarray:
        """A^H y (or A^H W y, W the DCF): readouts (R, C, S) -> (K, N, N) complex64."""
        z = reduce_readouts(kspace, self.sampling, self.sampling.readout_weights(self.vectors))
        return self.adjoint_reduced(z, weighted)

    def adjoint_reduced(self, z: np.ndarray, weighted: bool = False) -> np.ndarray:
        """The adjoint from reduced data z (K, C, J, S) (`reduce_readouts` with the basis rows)."""
        data = np.asarray(z, dtype=np.complex64)
        if weighted:
            data = data * self.sampling.dcf
        images = self.nufft.adjoint(data.reshape(self.rank, self.n_coils, -1))  # (K, C, N, N)
        return combine_coils(images, self.coil_maps) * np.conj(self.phase)


# ---- Toeplitz normal operator -----------------------------------------------------------------------
@njit_cached(parallel=True)
def _mix(kernel, pair, x):  # pragma: no cover - compiled
    """x[b, k, p] <- sum_l kernel[pair[k, l], p] x[b, l, p], in place: chunks of pixels in parallel, each
    chunk's kernel values read once for every channel b, its K sums in a local buffer (vectorised)."""
    n_b, n_k, n_p = x.shape
    n_chunks = (n_p + _MIX_CHUNK - 1) // _MIX_CHUNK
    for item in numba.prange(n_chunks):
        lo = item * _MIX_CHUNK
        hi = min(n_p, lo + _MIX_CHUNK)
        acc = np.empty((n_k, hi - lo), dtype=x.dtype)
        for b in range(n_b):
            acc[:] = 0
            for k in range(n_k):
                for m in range(n_k):
                    values = kernel[pair[k, m], lo:hi]
                    xm = x[b, m, lo:hi]
                    for i in range(hi - lo):
                        acc[k, i] += values[i] * xm[i]
            x[b, :, lo:hi] = acc


@njit_cached(parallel=True)
def _spread(coil_maps, x, work):  # pragma: no cover - compiled
    """work[c, k] <- coil_maps[c] * x[k] (N x N) in the top-left corner of a zero 2N x 2N grid, in parallel
    (numpy's products and fills run on one core)."""
    n_c, n_k, n = work.shape[0], work.shape[1], x.shape[1]
    for item in numba.prange(n_c * n_k):
        c, k = item // n_k, item % n_k
        for i in range(n):
            for j in range(n):
                work[c, k, i, j] = coil_maps[c, i, j] * x[k, i, j]
            work[c, k, i, n:] = 0
        work[c, k, n:, :] = 0


@njit_cached(parallel=True)
def _combine(work, coil_maps, out):  # pragma: no cover - compiled
    """out[k] <- sum_c conj(coil_maps[c]) work[c, k] over the top-left N x N corner, rows in parallel."""
    n_c, n_k, n = work.shape[0], work.shape[1], out.shape[1]
    for item in numba.prange(n_k * n):
        k, i = item // n, item % n
        out[k, i, :] = 0
        for c in range(n_c):
            for j in range(n):
                out[k, i, j] += np.conj(coil_maps[c, i, j]) * work[c, k, i, j]


def symmetric_pairs(rank: int) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The K(K+1)/2 pairs k <= l of a symmetric K x K table, and the (K, K) index of (k, l) into them."""
    pairs = [(k, m) for k in range(rank) for m in range(k, rank)]
    index = np.empty((rank, rank), dtype=np.int64)
    for i, (k, m) in enumerate(pairs):
        index[k, m] = index[m, k] = i
    return pairs, index


class ToeplitzNormal:
    """A^H W A as K x K convolutions on the 2N grid (module docstring). kernels: (K(K+1)/2, 2N, 2N)
    float32, the real spectra of the PSFs of the pairs k <= l (`symmetric_pairs`; p_lk = p_kl)."""

    def __init__(self, kernels: np.ndarray, n_threads: int = DEFAULT_THREADS):
        self.kernels = np.ascontiguousarray(kernels, dtype=np.float32).view()
        self.kernels.flags.writeable = False  # one compiled _mix for computed and memory-mapped kernels
        self.rank = int(round((math.sqrt(8 * kernels.shape[0] + 1) - 1) / 2))
        if self.rank * (self.rank + 1) // 2 != kernels.shape[0]:
            raise SubspaceError(f"kernels hold {kernels.shape[0]} PSFs, not K(K+1)/2 for any rank K")
        self._pair = symmetric_pairs(self.rank)[1]
        self.matrix = int(kernels.shape[-1]) // 2
        self.n_threads = int(n_threads)
        self._work: np.ndarray | None = None

    @classmethod
    def compute(cls, sampling: SubspaceSampling, vectors: np.ndarray, weighted: bool = True,
                backend: str = "finufft", eps: float = DEFAULT_EPS, n_threads: int = DEFAULT_THREADS,
                device: str = "cpu", cache_dir: str | Path | None = None, cache_kernels: bool = True
                ) -> ToeplitzNormal:
        """PSF kernels of the sampling and basis, cached in `cache_dir` when given (memory-mapped when read;
        cache_kernels=False: a basis not worth keeping, e.g. one fitted to a slice). A PSF is linear in its
        weights, which depend on the interleave only through G_j, so p_kl = sum_j G_j[k, l] p_j with p_j the
        PSF of interleave j's weights alone: with no more interleaves than pairs (J <= K(K+1)/2) the J
        spectra are made (one type-1 NUFFT of J weight vectors onto the 2N grid) and cached without the
        basis, and a basis's kernels are one matrix product from them (another basis on the same sampling
        costs no NUFFT); otherwise the K(K+1)/2 pairs' kernels are made directly."""
        gram = sampling.gram_per_interleave(vectors)  # (J, K, K)
        pairs = symmetric_pairs(gram.shape[1])[0]
        pair_gram = np.stack([gram[:, k, m] for k, m in pairs])  # (P, J)
        n, n_interleaves = sampling.matrix, sampling.n_interleaves

        def spectra(weights: np.ndarray) -> np.ndarray:
            """Real spectra (M, 2N, 2N) float32 of the PSFs of per-interleave weights (M, J)."""
            density = sampling.dcf if weighted else np.ones_like(sampling.dcf)
            values = (weights[:, :, None] * density[None]).reshape(len(weights), -1)  # (M, J S)
            nufft = Nufft(sampling.traj, n, shape=(2 * n, 2 * n), backend=backend, eps=eps, n_threads=n_threads,
                          device=device)
            psf = nufft.adjoint(values.astype(np.complex64))  # (M, 2N, 2N), d = index - N
            psf[:, 0, :] = 0.0  # d = -N is outside the linear convolution's reach; dropping it makes p Hermitian
            psf[:, :, 0] = 0.0
            return scipy.fft.fft2(np.fft.ifftshift(psf, axes=(-2, -1)), workers=n_threads).real.astype(np.float32)

        def kernels() -> np.ndarray:
            if n_interleaves > len(pairs):
                return spectra(pair_gram)
            name = f"psf_interleaves_{_kernel_key(sampling, weighted, eps)}.npy"
            per_interleave = _cached(cache_dir, name, lambda: spectra(np.eye(n_interleaves, dtype=np.float32)))
            product = pair_gram.astype(np.float32) @ per_interleave.reshape(n_interleaves, -1)
            return product.reshape(len(pairs), 2 * n, 2 * n)

        kernel_dir = cache_dir if cache_kernels else None
        return cls(_cached(kernel_dir, f"psf_{_kernel_key(sampling, weighted, eps, gram)}.npy", kernels), n_threads)

    def largest_eigenvalue(self, coil_maps: np.ndarray, n_iterations: int = _LANCZOS_STEPS) -> float:
        """An estimate of the largest eigenvalue of A^H W A with these coil maps, from one channel: for S_c
        zero outside a support M and sum_c |S_c|^2 <= s everywhere, x^H A^H W A x = sum_c (S_c x)^H T (S_c x)
        <= lambda_M s |x|^2, lambda_M the largest eigenvalue of T (this operator with the one channel 1_M).
        Lanczos (`largest_eigenvalue`) on that one channel costs 1/C of a product per step. On the standard
        slice (4 virtual coils): 3911 after 5 steps, where 5 steps with the coils give 3715 and 40 give 4252."""
        power = np.sum(np.abs(coil_maps) ** 2, axis=0)
        support = (power > 0).astype(np.complex64)[None]
        shape = (self.rank, self.matrix, self.matrix)
        self._workspace(coil_maps.shape[0])  # sized for the products with the coils that follow
        return float(power.max()) * largest_eigenvalue(lambda c: self.apply(c, support), shape, n_iterations)

    def _workspace(self, n_coils: int) -> np.ndarray:
        """The (C, K, 2N, 2N) grid of `apply`, kept between calls and grown to the most coils asked for."""
        if self._work is None or self._work.shape[0] < n_coils:
            self._work = np.empty((n_coils, self.rank, 2 * self.matrix, 2 * self.matrix), dtype=np.complex64)
        return self._work[:n_coils]

    def apply(self, coefficients: np.ndarray, coil_maps: np.ndarray) -> np.ndarray:
        """A^H W A c for c (K, N, N) and coil maps (C, N, N): (K, N, N) complex64. The (C, K, 2N, 2N) grid is
        one workspace kept between calls, transformed in place; the zero padding's rows are not transformed
        (their row FFTs are zero) and only the image's rows come back."""
        n, w = self.matrix, self.n_threads
        c = np.ascontiguousarray(coefficients, dtype=np.complex64)
        maps = np.ascontiguousarray(coil_maps, dtype=np.complex64)
        n_c = maps.shape[0]
        work, out = self._workspace(n_c), np.empty_like(c)
        top = work[:, :, :n, :]
        with numba_threads(w):
            _spread(maps, c, work)
            _fft_in_place(top, -1, w)
            _fft_in_place(work, -2, w)
            _mix(self.kernels.reshape(len(self.kernels), -1), self._pair, work.reshape(n_c, self.rank, -1))
            _fft_in_place(work, -2, w, inverse=True)
            _fft_in_place(top, -1, w, inverse=True)
            _combine(work, maps, out)
        return out


def _fft_in_place(x: np.ndarray, axis: int, workers: int, inverse: bool = False) -> None:
    """FFT of x along `axis` into x (pocketfft works in place on strided complex64 views; copied back
    where it did not)."""
    out = (scipy.fft.ifft if inverse else scipy.fft.fft)(x, axis=axis, workers=workers, overwrite_x=True)
    if not np.shares_memory(out, x):
        x[...] = out


def _kernel_key(sampling: SubspaceSampling, weighted: bool, eps: float, gram: np.ndarray | None = None) -> str:
    h = hashlib.sha256()
    h.update(f"v{_KERNEL_FORMAT},N={sampling.matrix},w={weighted},eps={eps:g},traj={sampling.traj.shape},".encode())
    h.update(np.ascontiguousarray(sampling.traj, dtype=np.float32).tobytes())
    if weighted:
        h.update(np.ascontiguousarray(sampling.dcf, dtype=np.float32).tobytes())
    if gram is not None:
        h.update(np.round(gram, 6).astype(np.float64).tobytes())
    return h.hexdigest()[:24]


def _cached(cache_dir: str | Path | None, name: str, make: Callable[[], np.ndarray]) -> np.ndarray:
    """The array in cache_dir/name (memory-mapped: pages from the file cache), else make() written there."""
    path = Path(cache_dir) / name if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            array = np.load(path, allow_pickle=False, mmap_mode="r")
            log.info("PSF kernels: %s read from the cache", path.name)
            return array
        except (OSError, ValueError) as exc:
            log.warning("PSF cache file %s is unreadable (%s): recomputing", path, exc)
    array = make()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, array)
        except OSError as exc:
            log.warning("cannot write the PSF cache %s: %s", path, exc)
    return array


# ---- solvers ----------------------------------------------------------------------------------------
@dataclass
class SolverLog:
    """Convergence record. values: CG, the relative residual |r| / |rhs| before the first iteration and
    after each one (n_iterations + 1 values); FISTA, the relative change |x_k - x_(k-1)| / |x_k| of each
    iteration (n_iterations values). lipschitz: FISTA's final step-size constant L (after backtracking);
    CG's largest Ritz value of N (a lower bound of its largest eigenvalue)."""

    values: list[float]
    n_iterations: int = 0
    lipschitz: float | None = None


def conjugate_gradient(normal: Callable[[np.ndarray], np.ndarray], rhs: np.ndarray, n_iterations: int,
                       x0: np.ndarray | None = None, tolerance: float = 0.0, lambda_l2: float = 0.0,
                       callback: Callable[[int, np.ndarray], None] | None = None) -> tuple[np.ndarray, SolverLog]:
    """Solve (N + lambda_l2 I) x = rhs by CG (N Hermitian positive semi-definite); stops after
    n_iterations or when |r| / |rhs| <= tolerance. callback(i, x): after iteration i, with its iterate.
    The record's lipschitz is the largest eigenvalue of the Lanczos tridiagonal matrix that CG's step
    lengths define (Saad 2003, section 6.7.3; of N + lambda_l2 I): an estimate of the operator's norm at no
    extra cost, since Lanczos finds extreme eigenvalues in few steps."""
    x = np.zeros_like(rhs) if x0 is None else np.array(x0, dtype=rhs.dtype)

    def apply(v):
        out = normal(v)
        return out + lambda_l2 * v if lambda_l2 else out

    r = rhs - apply(x) if x0 is not None else rhs.copy()
    p = r.copy()
    rr = float(np.vdot(r, r).real)
    norm_rhs = math.sqrt(float(np.vdot(rhs, rhs).real)) or 1.0
    record = SolverLog([math.sqrt(rr) / norm_rhs])
    alphas, betas = [], []
    for i in range(n_iterations):
        if record.values[-1] <= tolerance:
            break
        ap = apply(p)
        curvature = float(np.vdot(p, ap).real)
        if not curvature > 0:  # p in N's null space (N = 0 in practice): nothing more to solve
            break
        alpha = rr / curvature
        x += alpha * p
        r -= alpha * ap
        rr_new = float(np.vdot(r, r).real)
        p = r + (rr_new / rr) * p
        alphas.append(alpha)
        betas.append(rr_new / rr)
        rr = rr_new
        record.values.append(math.sqrt(rr) / norm_rhs)
        record.n_iterations = i + 1
        if callback is not None:
            callback(i, x)
    record.lipschitz = _lanczos_max(alphas, betas)
    return x, record


def _lanczos_max(alphas: list[float], betas: list[float]) -> float | None:
    """Largest eigenvalue of the Lanczos matrix of CG's step lengths alpha_j and ratios beta_j =
    |r_(j+1)|^2 / |r_j|^2: diagonal 1/alpha_j + beta_(j-1)/alpha_(j-1), off-diagonal sqrt(beta_j)/alpha_j."""
    if not alphas:
        return None
    a, b = np.asarray(alphas), np.asarray(betas)
    diagonal = 1.0 / a
    diagonal[1:] += b[:-1] / a[:-1]
    off = np.sqrt(b[:-1]) / a[:-1]
    tridiagonal = np.diag(diagonal) + np.diag(off, 1) + np.diag(off, -1)
    return float(np.linalg.eigvalsh(tridiagonal)[-1])


def largest_eigenvalue(normal: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...], n_iterations: int = 5,
                       seed: int = 0) -> float:
    """An estimate (from below) of the largest eigenvalue of a Hermitian positive semi-definite operator: the
    largest Ritz value of `n_iterations` Lanczos steps from a seeded random vector, via CG's coefficients
    (conjugate_gradient). Lanczos finds the extreme eigenvalues far sooner than the power iteration."""
    rng = np.random.default_rng(seed)
    v = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    return conjugate_gradient(normal, v, n_iterations)[1].lipschitz or 0.0


@njit_cached(parallel=True)
def _llr_blocks(x, threshold, block, shift_rows, shift_cols, out):  # pragma: no cover - compiled
    """Singular-value soft thresholding of every block x block x K Casorati matrix of x (K, N, N), the blocks
    offset cyclically by the shifts, into out (which holds x where no whole block reaches). Per block: the
    K x K Gram matrix's eigenvectors V and values s^2 (float64), then X V diag(max(s - t, 0) / s) V^H, the
    same matrix as thresholding the SVD's singular values."""
    rank, n, _ = x.shape
    m = n // block
    for item in numba.prange(m * m):
        top, left = (item // m) * block, (item % m) * block
        tile = np.empty((block * block, rank), dtype=np.complex128)
        for a in range(block):
            r = (top + a - shift_rows) % n
            for b in range(block):
                c = (left + b - shift_cols) % n
                for k in range(rank):
                    tile[a * block + b, k] = x[k, r, c]
        values, vectors = np.linalg.eigh(np.conj(tile.T) @ tile)
        shrink = np.zeros((rank, rank), dtype=np.complex128)
        for e in range(rank):
            singular = math.sqrt(max(values[e], 0.0))
            if singular > threshold:
                factor = 1.0 - threshold / singular
                for k in range(rank):
                    for j in range(rank):
                        shrink[k, j] += factor * vectors[k, e] * np.conj(vectors[j, e])
        result = tile @ shrink
        for a in range(block):
            r = (top + a - shift_rows) % n
            for b in range(block):
                c = (left + b - shift_cols) % n
                for k in range(rank):
                    out[k, r, c] = result[a * block + b, k]


def llr_threshold(coefficients: np.ndarray, threshold: float, block: int, shift: tuple[int, int],
                  n_threads: int = DEFAULT_THREADS) -> np.ndarray:
    """Locally-low-rank proximal step: soft-threshold the singular values of every block x block Casorati
    matrix (pixels x K) of the coefficient images, blocks offset by `shift` (cyclic, as np.roll would);
    pixels of no whole block (N not a multiple of block) are kept."""
    x = np.ascontiguousarray(coefficients, dtype=np.complex64)
    out = x.copy()
    if x.shape[1] >= block:
        with numba_threads(n_threads):
            _llr_blocks(x, float(threshold), int(block), int(shift[0]), int(shift[1]), out)
    return out


# FISTA's vector arithmetic, fused and in parallel (numpy's would be ~15 single-threaded passes per iteration)
def _flat(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1)


def _gradient_step(y: np.ndarray, ny: np.ndarray, rhs: np.ndarray, step: float) -> np.ndarray:
    """y - step (N y - rhs)."""
    out = np.empty_like(rhs)
    _gradient_step_flat(_flat(y), _flat(ny), _flat(rhs), step, out.reshape(-1))
    return out


@njit_cached(parallel=True)
def _gradient_step_flat(y, ny, rhs, step, out):  # pragma: no cover - compiled
    for i in numba.prange(out.size):
        out[i] = y[i] - (ny[i] - rhs[i]) * step


@njit_cached(parallel=True)
def _step_check(x_new, y, nx_new, ny):  # pragma: no cover - compiled
    """|d|^2, Re d^H (N x_new - N y) with d = x_new - y, |N x_new|^2, |N y|^2 (float64 sums)."""
    dd = curvature = n_new = n_old = 0.0
    for i in numba.prange(x_new.size):
        d = x_new[i] - y[i]
        e = nx_new[i] - ny[i]
        dd += d.real * d.real + d.imag * d.imag
        curvature += d.real * e.real + d.imag * e.imag
        n_new += nx_new[i].real * nx_new[i].real + nx_new[i].imag * nx_new[i].imag
        n_old += ny[i].real * ny[i].real + ny[i].imag * ny[i].imag
    return dd, curvature, n_new, n_old


@njit_cached(parallel=True)
def _momentum(x_new, x, nx_new, nx, beta, y, ny):  # pragma: no cover - compiled
    """y = x_new + beta (x_new - x), ny likewise (N is linear); returns |x_new - x|^2, |x_new|^2."""
    moved = size = 0.0
    for i in numba.prange(x_new.size):
        d = x_new[i] - x[i]
        y[i] = x_new[i] + beta * d
        ny[i] = nx_new[i] + beta * (nx_new[i] - nx[i])
        moved += d.real * d.real + d.imag * d.imag
        size += x_new[i].real * x_new[i].real + x_new[i].imag * x_new[i].imag
    return moved, size


def fista_llr(normal: Callable[[np.ndarray], np.ndarray], rhs: np.ndarray, n_iterations: int, lambda_llr: float,
              block: int = 8, x0: np.ndarray | None = None, lipschitz: float | None = None, seed: int = 0,
              step_margin: float = STEP_MARGIN, callback: Callable[[int, np.ndarray], None] | None = None
              ) -> tuple[np.ndarray, SolverLog]:
    """min_x 1/2 x^H N x - Re(x^H rhs) + lambda_llr sum_blocks ||X_block||_* by FISTA (Beck & Teboulle
    2009) with random block shifts per iteration (seeded: deterministic). callback(i, x): after iteration
    i, with its iterate.

    Step 1/L with backtracking (Beck & Teboulle 2009, section 4): L starts at `lipschitz`, or step_margin x
    a 5-step Lanczos estimate of N's largest eigenvalue (`largest_eigenvalue`, which never exceeds it; a
    margin below 1 takes longer steps where the data term's curvature allows), and a step x+ from y is
    redone with a larger L while the data term's quadratic bound fails:
    f(x+) > f(y) + Re<grad f(y), d> + L/2 |d|^2 (d = x+ - y), which for this quadratic f is d^H N d >
    L |d|^2. So no operator makes the iterations diverge. N x+ (for the check) gives the next gradient
    by linearity (N y = N x+ + beta (N x+ - N x)): one normal-operator apply per iteration as without
    the check, plus one per backtrack (none when the estimate holds) and one for x0."""
    if lipschitz is None:
        lipschitz = step_margin * largest_eigenvalue(normal, rhs.shape, n_iterations=_LANCZOS_STEPS)
        if not lipschitz > 0:  # N vanishes on a random vector (N = 0 in practice): backtracking finds L
            lipschitz = 1.0
    elif not (math.isfinite(lipschitz) and lipschitz > 0):
        raise SubspaceError(f"fista_llr: lipschitz = {lipschitz!r} must be positive and finite")
    big_l = float(lipschitz)
    rng = np.random.default_rng(seed)
    if x0 is None:
        x, nx = np.zeros_like(rhs), np.zeros_like(rhs)
    else:
        x = np.array(x0, dtype=rhs.dtype)
        nx = normal(x)
    y, ny, t = x, nx, 1.0
    record = SolverLog([])
    for i in range(n_iterations):
        shift = tuple(int(v) for v in rng.integers(0, block, 2))
        for _ in range(_MAX_BACKTRACKS + 1):
            x_new = llr_threshold(_gradient_step(y, ny, rhs, 1.0 / big_l), lambda_llr / big_l, block, shift)
            nx_new = np.asarray(normal(x_new), dtype=rhs.dtype)
            dd, curvature, n_new, n_old = _step_check(_flat(x_new), _flat(y), _flat(nx_new), _flat(ny))
            if not math.isfinite(curvature):  # curvature = d^H N d, d = x_new - y
                raise SubspaceError(f"fista_llr: the normal operator gave non-finite values (iteration {i + 1})")
            slack = _CURVATURE_ROUNDING * math.sqrt(dd) * (math.sqrt(n_new) + math.sqrt(n_old))
            if curvature <= big_l * dd + slack:
                break
            big_l = max(_BACKTRACK_FACTOR * big_l, curvature / dd)
            log.debug("FISTA iteration %d: step size backtracked, L = %.4g", i + 1, big_l)
        t_new = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y, ny = np.empty_like(x_new), np.empty_like(nx_new)
        moved, size = _momentum(_flat(x_new), _flat(x), _flat(nx_new), _flat(nx), (t - 1.0) / t_new,
                                _flat(y), _flat(ny))
        change = math.sqrt(moved) / max(math.sqrt(size), 1e-30)
        x, nx, t = x_new, nx_new, t_new
        record.values.append(change)
        record.n_iterations = i + 1
        if callback is not None:
            callback(i, x)
    if big_l > lipschitz:
        log.info("FISTA: step size backtracked from L = %.4g to %.4g", lipschitz, big_l)
    record.lipschitz = big_l
    return x, record
