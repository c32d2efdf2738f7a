"""Coils: prewhitening against a known covariance, SVD compression, sensitivity estimation against the
simulator's sensitivities (lowres and ESPIRiT), combination."""

from __future__ import annotations

import numpy as np
import pytest

from mrf_core.recon.coils import CoilError, combine_coils, compression_matrix, estimate_coil_maps, noise_whitening
from mrf_core.sim.coil_sim import birdcage_sensitivities, correlated_noise, noise_covariance


def test_whitened_noise_is_white():
    sens = birdcage_sensitivities(6, 32, 240.0)[:, 0]
    psi = noise_covariance(sens[:, None], correlation=0.4)
    noise = correlated_noise(np.random.default_rng(0), np.linalg.cholesky(psi), 2.0, 40000)
    w, note = noise_whitening(noise)
    white = w @ noise
    cov = white @ white.conj().T / noise.shape[1]
    assert note is None
    np.testing.assert_allclose(cov, np.eye(6), atol=0.03)


def test_whitening_of_a_duplicated_channel_is_regularised_and_bad_noise_refused():
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal((3, 1000)) + 1j * rng.standard_normal((3, 1000))).astype(np.complex64)
    noise[2] = noise[1]
    w, note = noise_whitening(noise)
    assert "near singular" in note and np.all(np.isfinite(w))
    with pytest.raises(CoilError, match="fewer than"):
        noise_whitening(noise[:, :2])
    with pytest.raises(CoilError, match="all zero"):
        noise_whitening(np.zeros((3, 100), np.complex64))


def test_compression_keeps_the_energy_of_a_low_rank_array():
    rng = np.random.default_rng(2)
    mixing = rng.standard_normal((8, 2)) + 1j * rng.standard_normal((8, 2))
    sources = rng.standard_normal((2, 5000)) + 1j * rng.standard_normal((2, 5000))
    data = mixing @ sources + 1e-3 * rng.standard_normal((8, 5000))
    covariance = data @ data.conj().T
    m, kept = compression_matrix(covariance, 2)
    assert m.shape == (2, 8) and kept > 0.9999
    np.testing.assert_allclose(m @ m.conj().T, np.eye(2), atol=1e-5)
    assert np.linalg.norm(m @ data) / np.linalg.norm(data) > 0.9999
    # an energy goal takes the fewest virtual coils that keep it: 2 sources carry all but the noise
    m, kept = compression_matrix(covariance, 8, energy=0.999)
    assert m.shape == (2, 8) and kept == pytest.approx(np.linalg.norm(m @ data) ** 2 / np.linalg.norm(data) ** 2)
    assert compression_matrix(covariance, 8, energy=1.0)[0].shape == (8, 8)
    one = np.linalg.norm(compression_matrix(covariance, 1)[0] @ data) ** 2 / np.linalg.norm(data) ** 2
    assert compression_matrix(covariance, 8, energy=one * 0.999)[0].shape == (1, 8)


def _object(n):
    y, x = np.mgrid[:n, :n] - n // 2
    return ((x**2 + y**2) < (0.35 * n) ** 2).astype(np.complex64) * np.exp(0.3j)


@pytest.mark.parametrize("method", ["lowres", "espirit"])
def test_estimated_maps_match_the_true_sensitivities(method):
    """Up to a common per-voxel phase, estimated maps equal the true ones: |sum_c conj(S_est) S_true| ~ 1
    inside the object, and the combined image is the object."""
    n = 64
    true = birdcage_sensitivities(4, n, 240.0)[:, 0]
    obj = _object(n)
    maps = estimate_coil_maps(true * obj, method=method)
    y, x = np.mgrid[:n, :n] - n // 2
    interior = (x**2 + y**2) < (0.3 * n) ** 2
    alignment = np.abs(np.sum(np.conj(maps) * true, axis=0))[interior]
    assert alignment.min() > 0.97
    combined = np.abs(combine_coils(true * obj, maps))
    np.testing.assert_allclose(combined[interior], 1.0, atol=0.03)
    if method == "lowres":
        assert np.all(maps[:, 0, 0] == 0)  # background outside the support


def test_one_coil_gives_a_unit_map_on_the_object():
    obj = _object(32)
    maps = estimate_coil_maps(obj[None] * 2.0, method="espirit")
    inside = np.abs(obj) > 0
    np.testing.assert_allclose(np.abs(maps[0][inside][:10]), 1.0, atol=1e-5)
    with pytest.raises(CoilError, match="method"):
        estimate_coil_maps(obj[None], method="magic")
