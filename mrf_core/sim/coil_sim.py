"""Simulated receive coils: birdcage-like sensitivities and correlated complex Gaussian noise.

Sensitivities (`birdcage_sensitivities`): n_coils small elements evenly spaced on a ring of radius
coil_radius_mm around the FOV centre (at z = 0; slices at other z are farther away), each with a
1/distance magnitude and a phase that turns with the azimuth around the element plus the element's
position angle (sigpy's birdcage model, in mm and with slice positions). They are normalised so that
the root-sum-of-squares over coils is 1 in every voxel: the optimally combined image is then the
magnetisation itself, which is what makes an SNR statement hold everywhere.

Noise (`noise_covariance`, `correlated_noise`): per-channel noise levels spread by +-20 % around 1,
and correlation psi_ij = (1 - rho) delta_ij + rho g_ij, g the normalised overlap of the coil
sensitivities (body noise couples coils whose fields overlap), scaled so that the mean channel
variance is 1. Noise samples are sigma * L z, L the Cholesky factor, z complex white with E|z|^2 = 1.
"""

from __future__ import annotations

import math

import numpy as np

from mrf_core.errors import MrfError
from mrf_core.sim.phantoms import pixel_coords_mm


class CoilSimulationError(MrfError):
    """Coil or noise parameters that make no sense: the message names the field and the value."""


def birdcage_sensitivities(
    n_coils: int,
    matrix: int,
    fov_mm: float,
    slice_positions_mm=(0.0,),
    coil_radius_mm: float | None = None,
) -> np.ndarray:
    """Sensitivities (n_coils, n_slices, matrix, matrix) complex64 with unit root-sum-of-squares.

    coil_radius_mm: ring radius (default 0.75 fov_mm, sigpy's r = 1.5 relative to the half FOV).
    """
    if not (isinstance(n_coils, int | np.integer) and n_coils >= 1):
        raise CoilSimulationError(f"n_coils = {n_coils!r} must be an integer >= 1")
    radius = 0.75 * fov_mm if coil_radius_mm is None else coil_radius_mm
    if not (math.isfinite(radius) and radius > 0):
        raise CoilSimulationError(f"coil_radius_mm = {radius} must be > 0")
    x, y = pixel_coords_mm(matrix, fov_mm)
    z = np.asarray(slice_positions_mm, dtype=np.float64).reshape(-1, 1, 1)
    angle = 2 * np.pi * np.arange(n_coils) / n_coils
    maps = np.empty((n_coils, z.shape[0], matrix, matrix), dtype=np.complex128)
    for c, a in enumerate(angle):
        dx, dy = x - radius * math.cos(a), y - radius * math.sin(a)
        distance = np.sqrt(dx**2 + dy**2 + z**2)
        maps[c] = np.exp(1j * (np.arctan2(dx, -dy) - a)) / distance
    maps /= np.sqrt(np.sum(np.abs(maps) ** 2, axis=0))
    return maps.astype(np.complex64)


def noise_covariance(sensitivities: np.ndarray, correlation: float = 0.3, seed: int = 0) -> np.ndarray:
    """Channel noise covariance (n_coils, n_coils) complex128, Hermitian positive definite, mean
    diagonal 1; `correlation` in [0, 1) is rho in the module docstring."""
    if not (math.isfinite(correlation) and 0 <= correlation < 1):
        raise CoilSimulationError(f"noise correlation = {correlation} must be in [0, 1)")
    s = sensitivities.reshape(sensitivities.shape[0], -1).astype(np.complex128)
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    overlap = s.conj() @ s.T
    levels = 1.0 + 0.2 * np.random.default_rng(seed).uniform(-1, 1, s.shape[0])
    psi = ((1 - correlation) * np.eye(s.shape[0]) + correlation * overlap) * np.outer(levels, levels)
    return psi / np.mean(np.real(np.diag(psi)))


def correlated_noise(
    rng: np.random.Generator, cholesky: np.ndarray, sigma: float, n_samples: int
) -> np.ndarray:
    """Complex noise (n_coils, n_samples) complex64 with covariance sigma^2 L L^H."""
    n = cholesky.shape[0]
    white = rng.standard_normal((2, n, n_samples), dtype=np.float32)
    z = (white[0] + 1j * white[1]).astype(np.complex64) * np.float32(sigma / math.sqrt(2.0))
    return cholesky.astype(np.complex64) @ z
