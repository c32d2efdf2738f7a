"""Receive coils in reconstruction: noise prewhitening, SVD coil compression, sensitivity estimation and
coil combination.

- Prewhitening (`noise_whitening`): Psi = noise noise^H / n from the noise scans, W = L^-1 with
  Psi = L L^H, so the whitened channels carry unit-variance white noise. A near-singular Psi (a dead
  channel) is regularised with 1e-6 of its largest eigenvalue, and the returned note says so.
- Compression (`compression_matrix`): the leading eigenvectors of the (whitened) data's channel
  covariance; M (V, C) maps C channels to V virtual coils, ordered by energy, V the fewest that keep a
  given fraction of the energy, up to a maximum.
- Sensitivities from coil images (the time-averaged image of each virtual coil, which a spiral MRF scan
  samples fully over its TRs):
  "lowres": a Hann window `calibration_cycles` cycles/FOV wide on the images' k-space, then
  each smoothed coil image over the root-sum-of-squares, with the phase of virtual coil 0 (the strongest)
  removed; voxels whose smoothed RSS is below `mask_threshold` x its 99th percentile get zero maps.
  "espirit": sigpy's ESPIRiT calibration (Uecker 2014) on the central `calibration_cycles` x
  `calibration_cycles` of that k-space (first eigenvector maps; zero where the eigenvalue is below
  `crop`).
  With maps S (unit RSS on the object), sum_c conj(S_c) x_c is the combined image (`combine_coils`).
"""

from __future__ import annotations

import logging

import numpy as np

from mrf_core.errors import MrfError

log = logging.getLogger(__name__)

COIL_METHODS = ("lowres", "espirit")
_REGULARISATION = 1e-6


class CoilError(MrfError):
    """Noise or coil data that cannot be used: the message names what and why."""


def noise_whitening(noise: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Prewhitening matrix W (C, C) complex64 from noise samples (C, n), and a note on regularisation."""
    noise = np.asarray(noise)
    n_c, n = noise.shape
    if n < n_c:
        raise CoilError(f"noise scans hold {n} samples per channel, fewer than the {n_c} channels")
    if not np.all(np.isfinite(noise)):
        raise CoilError("noise scans have non-finite samples")
    psi = (noise.astype(np.complex128) @ noise.conj().T.astype(np.complex128)) / n
    values = np.linalg.eigvalsh(psi)
    if values[-1] <= 0:
        raise CoilError("noise scans are all zero")
    note = None
    if values[0] < _REGULARISATION * values[-1]:
        psi = psi + _REGULARISATION * values[-1] * np.eye(n_c)
        note = (f"noise covariance is near singular (eigenvalues {values[0]:.3g} .. {values[-1]:.3g}: a dead or "
                "duplicated channel?): regularised")
        log.warning(note)
    lower = np.linalg.cholesky(psi)
    return np.linalg.inv(lower).astype(np.complex64), note


def compression_matrix(covariance: np.ndarray, n_virtual: int, energy: float = 1.0) -> tuple[np.ndarray, float]:
    """M (V, C) complex64 from the channels' covariance (C, C), and the fraction of the energy the V virtual
    coils keep: V is the fewest principal components keeping `energy` of the total, at most n_virtual."""
    covariance = np.asarray(covariance, dtype=np.complex128)
    n_c = covariance.shape[0]
    n_virtual = min(int(n_virtual), n_c)
    if n_virtual < 1:
        raise CoilError(f"n_virtual = {n_virtual} must be >= 1")
    values, vectors = np.linalg.eigh(covariance)
    values, vectors = np.maximum(values[::-1], 0.0), vectors[:, ::-1]
    total = values.sum()
    fractions = np.cumsum(values) / total if total > 0 else np.ones(n_c)
    n_virtual = min(n_virtual, int(np.searchsorted(fractions, energy * (1 - 1e-12))) + 1)
    return np.ascontiguousarray(vectors[:, :n_virtual].conj().T).astype(np.complex64), float(fractions[n_virtual - 1])


def combine_coils(images: np.ndarray, coil_maps: np.ndarray) -> np.ndarray:
    """sum_c conj(S_c) x_c over the coil axis: (..., C, N, N) -> (..., N, N) complex64."""
    return np.einsum("...cij,cij->...ij", images, np.conj(coil_maps)).astype(np.complex64)


def _centred_fft2(images: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(images, axes=(-2, -1))), axes=(-2, -1))


def _centred_ifft2(kspace: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1))), axes=(-2, -1))


def coil_maps_lowres(coil_images: np.ndarray, calibration_cycles: float = 24.0,
                     mask_threshold: float = 0.05) -> np.ndarray:
    """Sensitivities (C, N, N) complex64 from coil images (C, N, N) (module docstring)."""
    coil_images = np.asarray(coil_images, dtype=np.complex64)
    n = coil_images.shape[-1]
    k = np.arange(n) - n // 2
    radius = np.hypot(k[:, None], k[None, :]) / (calibration_cycles / 2.0)
    window = np.where(radius < 1.0, 0.5 + 0.5 * np.cos(np.pi * radius), 0.0)
    smooth = _centred_ifft2(_centred_fft2(coil_images) * window)
    rss = np.sqrt(np.sum(np.abs(smooth) ** 2, axis=0))
    reference = np.exp(-1j * np.angle(smooth[0]))
    scale = np.percentile(rss, 99)
    if scale <= 0:
        raise CoilError("coil images are all zero: no sensitivities can be estimated")
    support = rss > mask_threshold * scale
    maps = np.where(support, smooth * reference / np.where(support, rss, 1.0), 0.0)
    return maps.astype(np.complex64)


def coil_maps_espirit(coil_images: np.ndarray, calibration_cycles: float = 24.0, threshold: float = 0.02,
                      crop: float = 0.95, device: str = "cpu") -> np.ndarray:
    """ESPIRiT sensitivities (C, N, N) complex64 through sigpy from coil images (C, N, N)."""
    import sigpy as sp
    from sigpy.mri.app import EspiritCalib

    coil_images = np.asarray(coil_images, dtype=np.complex64)
    kspace = _centred_fft2(coil_images).astype(np.complex64)
    sp_device = sp.Device(-1 if device == "cpu" else int(device.partition(":")[2] or 0))
    width = int(min(calibration_cycles, coil_images.shape[-1]))
    maps = EspiritCalib(sp.to_device(kspace, sp_device), calib_width=width, thresh=threshold, crop=crop,
                        device=sp_device, show_pbar=False).run()
    return np.asarray(sp.to_device(maps, sp.cpu_device), dtype=np.complex64)


def estimate_coil_maps(coil_images: np.ndarray, method: str = "lowres", calibration_cycles: float = 24.0,
                       mask_threshold: float = 0.05, device: str = "cpu") -> np.ndarray:
    """Sensitivities by `method` (COIL_METHODS); one coil gives its own phase with unit magnitude on the
    support (the combined image is then that coil's image)."""
    if method not in COIL_METHODS:
        raise CoilError(f"coil method = {method!r} must be one of {', '.join(COIL_METHODS)}")
    if method == "espirit" and coil_images.shape[0] > 1:
        return coil_maps_espirit(coil_images, calibration_cycles, device=device)
    return coil_maps_lowres(coil_images, calibration_cycles, mask_threshold)
