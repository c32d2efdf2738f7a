"""SVD temporal subspace of a dictionary (McGivney et al., IEEE TMI 33:2311, 2014).

FISP fingerprints with a constant RF phase are real up to one common phase (see mrf_core.physics.epg), so the
basis is a real matrix U (n_timepoints, rank) with orthonormal columns and a unit complex `signal_phase`:
a time course s is approximated by signal_phase * U @ c, and c = conj(signal_phase) * U^T s. Projecting a
dictionary atom gives real coefficients, which lets matching use real matrix products.

The SVD is taken through the Gram matrix F^T F (n_timepoints^2, accumulated in float64 over chunks of
normalised fingerprints), so a 100k-atom dictionary needs no copy of itself.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass

import numpy as np

from mrf_core.errors import MrfError

DEFAULT_RANK = 10  # basis rank when neither a rank nor a residual energy is asked for


class BasisError(MrfError):
    """A basis that does not fit the data or request: the message names the field and value."""


@dataclass(frozen=True)
class TemporalBasis:
    vectors: np.ndarray  # float32 (n_timepoints, rank), orthonormal columns
    singular_values: np.ndarray  # float64, all n_timepoints of them (descending), for energy queries
    signal_phase: complex  # common phase of the fingerprints, |signal_phase| = 1
    schedule_hash: str

    @property
    def rank(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def n_timepoints(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def hash(self) -> str:
        """Content hash of the basis vectors (rounded to 1e-5) and phase: what a model's archive records."""
        rounded = np.round(self.vectors.astype(np.float64), 5) + 0.0  # + 0.0 turns -0.0 into 0.0
        h = hashlib.sha256(rounded.tobytes())
        h.update(f"{self.signal_phase.real:.6f},{self.signal_phase.imag:.6f},{self.schedule_hash}".encode())
        return h.hexdigest()[:16]

    def residual_energy(self, rank: int | None = None) -> float:
        """Fraction of the (normalised) dictionary's energy outside the first `rank` components."""
        rank = self.rank if rank is None else rank
        energy = self.singular_values**2
        return float(energy[rank:].sum() / energy.sum())

    def truncated(self, rank: int) -> TemporalBasis:
        if not 1 <= rank <= self.rank:
            raise BasisError(f"rank = {rank} must be in [1, {self.rank}]")
        return TemporalBasis(self.vectors[:, :rank], self.singular_values, self.signal_phase, self.schedule_hash)

    def _check_time_axis(self, n: int, what: str) -> None:
        if n != self.n_timepoints:
            raise BasisError(f"{what} has {n} time points but the basis has {self.n_timepoints}")

    def project(self, signals):
        """Time courses (..., n_timepoints) -> complex coefficients (..., rank). numpy or torch in, same out."""
        self._check_time_axis(signals.shape[-1], "signal")
        torch = sys.modules.get("torch")  # a tensor means torch is loaded; numpy callers need not load it
        if torch is not None and torch.is_tensor(signals):
            u = torch.as_tensor(self.vectors, device=signals.device).to(signals.real.dtype)
            phase = complex(np.conj(self.signal_phase))
            return (signals.to(torch.complex64) @ u.to(torch.complex64)) * phase
        return (np.asarray(signals, dtype=np.complex64) @ self.vectors) * np.complex64(np.conj(self.signal_phase))

    def conversion_to(self, target: TemporalBasis, min_captured: float = 0.99) -> np.ndarray:
        """Complex (target.rank, self.rank) matrix taking coefficients in this basis to `target`'s:
        c_target = conj(p_t) p_s U_t^T U_s c. An error when `target` keeps less than min_captured of the
        signal energy this basis represents (each component weighted by its singular value squared), e.g. a
        basis of another schedule, since the conversion would lose signal."""
        self._check_time_axis(target.n_timepoints, "target basis")
        overlap = target.vectors.astype(np.float64).T @ self.vectors.astype(np.float64)
        energy = self.singular_values[: self.rank] ** 2
        captured = float(np.sum(overlap**2, axis=0) @ energy / energy.sum())
        if captured < min_captured:
            raise BasisError(
                f"basis {target.hash} captures {captured:.3%} of basis {self.hash}'s subspace (< {min_captured:.0%}): "
                "they were made for different schedules or dictionaries"
            )
        return (np.conj(target.signal_phase) * self.signal_phase * overlap).astype(np.complex64)

    def project_real(self, fingerprints: np.ndarray) -> np.ndarray:
        """Real fingerprints (..., n_timepoints) (signal = signal_phase * fingerprint) -> real coefficients."""
        self._check_time_axis(fingerprints.shape[-1], "fingerprint")
        return np.asarray(fingerprints, dtype=np.float32) @ self.vectors

    def expand(self, coefficients: np.ndarray) -> np.ndarray:
        """Coefficients (..., rank) -> complex time courses (..., n_timepoints)."""
        coefficients = np.asarray(coefficients)
        if coefficients.shape[-1] != self.rank:
            raise BasisError(f"coefficients have {coefficients.shape[-1]} components but the basis has {self.rank}")
        return (coefficients.astype(np.complex64) @ self.vectors.T) * np.complex64(self.signal_phase)


_NOISE_FLOOR = 1e-5  # eigenvalues below this fraction of the largest count as null (top_eigenvectors)


def gram_of_normalised(fingerprints: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """F^T F of the row-normalised real fingerprints, in float64, chunk by chunk (each chunk normalised in
    its own float64 copy: no further temporaries; 8 MB chunks of 1000 TRs, which the allocator reuses,
    where one 65 MB chunk cost its fresh pages on every build)."""
    n_t = fingerprints.shape[1]
    gram = np.zeros((n_t, n_t))
    for start in range(0, fingerprints.shape[0], chunk):
        block = np.array(fingerprints[start : start + chunk], dtype=np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        block /= np.where(norms > 0, norms, 1.0)[:, None]
        gram += block.T @ block
    return gram


def top_eigenvectors(gram: np.ndarray, rank: int, tolerance: float = 1e-8, max_iterations: int = 200) -> np.ndarray:
    """The `rank` leading eigenvectors (n, rank) of a symmetric positive semi-definite matrix, by subspace
    iteration with Rayleigh-Ritz on 2 x rank + 8 seeded vectors until each kept Ritz pair's residual
    |G v - lambda v| is below `tolerance` x lambda (its eigenvector then as accurate, relative to the gap),
    lambda floored at _NOISE_FLOOR x the largest (eigenvalues below are the Gram's rounding: null
    vectors). An MRF dictionary's spectrum falls by orders of magnitude past the kept rank, so a few
    iterations do it, where a LAPACK subset solve first reduces the whole matrix to tridiagonal form."""
    n = gram.shape[0]
    block = min(n, 2 * rank + 8)
    q = np.linalg.qr(np.random.default_rng(0).standard_normal((n, block)))[0]
    for _ in range(max_iterations):
        q = np.linalg.qr(gram @ q)[0]
        values, ritz = np.linalg.eigh(q.T @ gram @ q)
        values, vectors = values[::-1][:rank], q @ ritz[:, ::-1][:, :rank]
        residual = np.linalg.norm(gram @ vectors - vectors * values, axis=0)
        floor = _NOISE_FLOOR * max(float(values[0]), 1e-300)
        if np.all(residual <= tolerance * np.maximum(values, floor)):
            return vectors
    raise BasisError(f"the leading {rank} eigenvectors did not converge in {max_iterations} subspace iterations")


def basis_from_fingerprints(
    fingerprints: np.ndarray,
    signal_phase: complex,
    schedule_hash: str,
    rank: int | None = None,
    residual_energy: float | None = None,
) -> TemporalBasis:
    """SVD basis of real fingerprints (n_atoms, n_timepoints): a fixed `rank`, or the smallest rank whose
    residual energy is <= `residual_energy` (default: rank 10)."""
    if rank is not None and residual_energy is not None:
        raise BasisError("give either rank or residual_energy, not both")
    gram = gram_of_normalised(fingerprints)
    # all eigenvalues (for energy queries) but only the kept eigenvectors: a fraction of a full eigh's time
    eigenvalues = np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None)
    singular_values = np.sqrt(eigenvalues)
    n_t = gram.shape[0]
    if residual_energy is not None:
        if not 0 < residual_energy < 1:
            raise BasisError(f"residual_energy = {residual_energy} must be in (0, 1)")
        tail = 1.0 - np.cumsum(eigenvalues) / eigenvalues.sum()
        rank = int(np.argmax(tail <= residual_energy)) + 1
    rank = DEFAULT_RANK if rank is None else rank
    if not 1 <= rank <= n_t:
        raise BasisError(f"rank = {rank} must be in [1, {n_t}]")
    vectors = top_eigenvectors(gram, rank)
    # fix each vector's sign (SVD leaves it free) so that bases are reproducible: largest entry positive
    signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(rank)])
    vectors = (vectors * signs).astype(np.float32)
    return TemporalBasis(vectors, singular_values, complex(signal_phase), schedule_hash)
