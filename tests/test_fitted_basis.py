"""The basis fitted to a slice's tissues (mrf_core.mapping.fitted_basis) and the second reconstruction pass
the pipeline makes in it when a B1 map is given."""

from __future__ import annotations

import numpy as np
import pytest

from mrf_core.mapping.fitted_basis import fit_basis
from mrf_core.physics.dictionary import build_dictionary, percent_grid
from mrf_core.physics.epg import simulate_fingerprints
from mrf_core.physics.sequence import default_schedule
from mrf_core.pipeline import PipelineError, dictionary_for, fits_basis, run_scan
from mrf_core.settings import defaults


def outside(vectors: np.ndarray, signals: np.ndarray) -> float:
    """Fraction of the signals' energy outside the span of the (orthonormal) vectors."""
    u = vectors.astype(np.float64)
    residual = signals - (signals @ u) @ u.T
    return float((np.abs(residual) ** 2).sum() / (np.abs(signals) ** 2).sum())


@pytest.fixture(scope="module")
def wide_dictionary():
    schedule = default_schedule().truncated(120)
    grid = percent_grid(12.0, (100.0, 3000.0), (10.0, 1000.0), b1_axis=np.round(np.arange(0.7, 1.31, 0.1), 2))
    return build_dictionary(schedule, grid, rank=24, keep_fingerprints=True, progress=False, device="cpu")


def test_the_fitted_basis_is_the_best_one_for_the_tissues_and_maps_exactly(wide_dictionary):
    """Six tissues between grid nodes at B1 0.8-1.2, seen through the dictionary's leading 10 components: the
    basis fitted to them keeps as much of their signal as the best rank-10 basis in the dictionary's wide
    subspace (the SVD of the true signals, computed here) and far more than the dictionary's own rank 10; it
    lies in the wide subspace, so the dictionary's atoms in it are the exact projections of its fingerprints."""
    d = wide_dictionary
    rng = np.random.default_rng(1)
    tissues = np.array([[1500, 150], [900, 80], [400, 45], [2400, 600], [250, 30], [3000, 900]], dtype=float)
    which = rng.integers(0, len(tissues), 400)
    b1 = np.round(rng.uniform(0.8, 1.2, 400), 3)
    pd = rng.uniform(0.5, 1.5, 400) * np.exp(1j * rng.uniform(-np.pi, np.pi, 400))
    signals = simulate_fingerprints(d.schedule, tissues[which, 0], tissues[which, 1], b1, device="cpu").numpy()
    signals = signals.astype(np.float64) * pd[:, None]
    first = d.basis.truncated(10)
    x = first.project((signals * d.signal_phase).astype(np.complex64))
    fitted = fit_basis(d, x, first, b1)

    wide = d.basis.vectors.astype(np.float64)
    projected = signals @ wide
    _, eigenvectors = np.linalg.eigh((projected.conj().T @ projected).real)
    best = wide @ eigenvectors[:, ::-1][:, :10]
    assert fitted.rank == 10 and fitted.signal_phase == d.signal_phase
    assert outside(fitted.vectors, signals) <= 1.1 * outside(best, signals)
    assert outside(fitted.vectors, signals) <= 0.3 * outside(first.vectors, signals)
    np.testing.assert_allclose(fitted.vectors.T.astype(np.float64) @ fitted.vectors, np.eye(10), atol=1e-5)
    exact = d.fingerprints.astype(np.float64) @ fitted.vectors.astype(np.float64)
    np.testing.assert_allclose(d.in_basis(fitted).compressed, exact, atol=1e-5 * np.abs(exact).max())


def test_too_few_voxels_fit_nothing(wide_dictionary):
    d = wide_dictionary
    first = d.basis.truncated(10)
    assert fit_basis(d, np.zeros((3, 10), np.complex64), first, np.ones(3)) is None  # zero voxels match nothing
    assert fit_basis(d, np.ones((50, 24), np.complex64), d.basis, np.ones(50)) is None  # no room beyond rank 24


def test_fitted_basis_needs_a_b1_map():
    settings = defaults()
    settings.basis = "fitted"
    with pytest.raises(PipelineError, match="basis = fitted needs a b1_map"):
        fits_basis(settings)
    settings.b1_map, settings.basis = "map.nii", "auto"
    assert fits_basis(settings)
    for one_pass in ("dictionary", "model"):
        settings.basis = one_pass
        assert not fits_basis(settings)


def test_the_pipeline_reconstructs_again_in_the_fitted_basis(sim_small_scan, tmp_path):
    """The small brain scan in its B1 field (0.9-1.1) with its true B1 map: each slice is solved a second time
    in a basis fitted to it, which holds the slice's true signals (the phantom's T1/T2/B1, simulated here)
    better than the dictionary's leading components the first pass used; the dictionary maps it at the map's
    B1 in that basis."""
    scan, acquisitions, _ = sim_small_scan
    phantom = scan.truth().phantom
    np.save(tmp_path / "b1.npy", np.where(phantom.mask, phantom.b1, np.nan))
    settings = defaults()
    settings.b1_map, settings.mapper, settings.threads = tmp_path / "b1.npy", "dictionary", 1
    settings.grid_step_pct, settings.b1_values = 20.0, (0.8, 0.9, 1.0, 1.1, 1.2)
    settings.dictionary_cache_dir = tmp_path / "cache"
    outputs = list(run_scan(scan.header, acquisitions, settings))
    leading = dictionary_for(scan.schedule, settings).basis.truncated(10)
    for output in outputs:
        s = output.coefficients.slice_index
        mask = phantom.mask[s]
        signals = simulate_fingerprints(scan.schedule, phantom.t1_ms[s][mask], phantom.t2_ms[s][mask],
                                        phantom.b1[s][mask], device="cpu").numpy() * phantom.pd[s][mask][:, None]
        result = output.coefficients.result
        assert "refit" in result.timings_s and result.basis.rank == 10
        assert result.basis.hash != leading.hash
        assert outside(result.basis.vectors, signals) < 0.5 * outside(leading.vectors, signals)
        assert output.maps.b1_correction == "map" and np.isfinite(output.maps.t1_ms[mask]).mean() > 0.9
