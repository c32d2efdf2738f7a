"""A small trained model: beats a trivial predictor, recovers PD; the fingerprint table matches the EPG."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrf_core.mapping import load_model
from mrf_core.mapping.parameters import ParameterSpace
from mrf_core.mapping.table import Cells, FingerprintTable
from mrf_core.mapping.training import TrainConfig, model_basis, train_model
from mrf_core.physics.epg import simulate_fingerprints, simulate_fisp
from mrf_core.physics.sequence import default_schedule

SCHEDULE = default_schedule().truncated(100)
SPACE = ParameterSpace((100.0, 3000.0), (20.0, 300.0))


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "small.pt"
    config = TrainConfig(arch="mlp", rank=8, space=SPACE, n_train=10000, n_val=1000, epochs=6, batch_size=128,
                         lr=3e-3, snr_range=(100.0, 1000.0), n_states=20, table_nodes=33, progress=False,
                         arch_options={"width": 64}, basis_step_pct=10.0)
    train_model(SCHEDULE, config, path)
    return load_model(path)


def held_out(n: int, seed: int):
    rng = np.random.default_rng(seed)
    params = SPACE.sample(n, rng)
    pd = (rng.uniform(0.5, 2.0, n) * np.exp(1j * rng.uniform(-np.pi, np.pi, n))).astype(np.complex64)
    signals = simulate_fisp(SCHEDULE, params[:, 0], params[:, 1], n_states=20).numpy() * pd[:, None]
    return params, pd, signals


def test_trained_model_beats_the_mean_predictor(small_model):
    params, _, signals = held_out(1000, seed=11)
    result = small_model.map_signals(signals, refine=0)  # the network alone: refined, a poor one would pass too
    for column, predicted in ((0, result.t1_ms), (1, result.t2_ms)):
        truth = np.log(params[:, column])
        model_rmse = np.sqrt(np.mean((np.log(predicted) - truth) ** 2))
        mean_rmse = np.sqrt(np.mean((truth - truth.mean()) ** 2))
        assert model_rmse < 0.15 * mean_rmse, (column, model_rmse, mean_rmse)


def test_pd_is_recovered_by_projection(small_model):
    params, pd, signals = held_out(500, seed=12)
    result = small_model.map_signals(signals)
    ratio = result.pd / pd
    assert np.median(np.abs(ratio - 1)) < 0.02
    assert np.median(np.abs(np.angle(ratio))) < 0.01  # the phase is exact up to the fingerprint's sign
    assert np.median(result.score) > 0.999
    coefficients = small_model.basis.project(signals)
    from_coefficients = small_model.map_coefficients(coefficients, small_model.basis)
    np.testing.assert_allclose(from_coefficients.pd, result.pd, rtol=1e-5, atol=1e-6)


def test_table_matches_exact_epg_at_random_parameters():
    basis = model_basis(SCHEDULE, TrainConfig(space=SPACE, n_states=20, progress=False, basis_step_pct=10.0), rank=8)
    table = FingerprintTable.build(SCHEDULE, basis, SPACE, n_nodes=65, n_states=20)
    params = SPACE.sample(400, np.random.default_rng(5))
    fingerprints = simulate_fingerprints(SCHEDULE, params[:, 0], params[:, 1], n_states=20).numpy()
    exact = basis.project_real(fingerprints)
    coefficients, norms = table.lookup(torch.as_tensor(params))
    error = np.linalg.norm(coefficients.numpy() - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert error.max() < 1e-4
    np.testing.assert_allclose(norms.numpy(), np.linalg.norm(fingerprints, axis=1), rtol=1e-4)
    # PD by projection on the interpolated fingerprint at the true parameters
    pd = np.exp(0.7j) * 1.3
    estimate = (coefficients.numpy() * (pd * exact)).sum(1) / (coefficients.numpy() ** 2).sum(1)
    np.testing.assert_allclose(estimate, pd, rtol=2e-4)
    # the cubic's analytic derivatives (what the refinement uses) agree with finite differences
    _, gradient = table.lookup_gradient(torch.as_tensor(params[:50]))
    for axis in range(2):
        shifted = np.log(params[:50]).copy()
        shifted[:, axis] += 1e-3
        moved, _ = table.lookup(torch.as_tensor(np.exp(shifted)))
        finite = (moved - coefficients[:50]) / 1e-3
        torch.testing.assert_close(gradient[:, :, axis], finite.float(), rtol=2e-2, atol=2e-3)
    # outside the range the lookup clamps to the edge instead of extrapolating
    edge, _ = table.lookup(torch.tensor([[3000.0, 300.0], [1e5, 1e4]]))
    torch.testing.assert_close(edge[0], edge[1])


def test_cells_reuse_the_gathered_nodes_and_sum_fixed_axes_once():
    """Lookups through one Cells (the refinement's cache of each voxel's cell) equal fresh lookups as voxels
    move within and across cells, also with the B1 axis held fixed and summed into the nodes (its weights
    applied before the T1/T2 ones: the sums differ only in order, float32 rounding of <= 64 terms); a
    voxel whose fixed coordinate changes is gathered again."""
    space = ParameterSpace((100.0, 3000.0), (20.0, 300.0), b1_range=(0.7, 1.3))
    basis = model_basis(SCHEDULE, TrainConfig(space=space, n_states=20, progress=False, basis_step_pct=25.0), rank=6)
    table = FingerprintTable.build(SCHEDULE, basis, space, n_nodes=17, n_b1_nodes=5, n_states=20)
    rng = np.random.default_rng(3)
    params = torch.as_tensor(space.sample(300, rng), dtype=torch.float32)
    for n_moving in (None, 2):
        cells = Cells(n_moving)
        for step in (0.0, 0.002, 0.05, 0.3):  # within the cell, then across cells (T1/T2 nodes ~0.21 apart in log)
            moved = params.clone()
            moved[:, :2] *= torch.exp(torch.as_tensor(rng.normal(0, step, (300, 2)), dtype=torch.float32))
            if n_moving is None:
                moved[:, 2] += step
            fresh, fresh_norms = table.lookup(moved)
            cached, cached_norms = table.lookup(moved, cells)
            scale = torch.linalg.vector_norm(fresh, dim=1, keepdim=True)
            torch.testing.assert_close(cached / scale, fresh / scale, rtol=0, atol=64 * 2.0**-24 * 4)
            torch.testing.assert_close(cached_norms, fresh_norms, rtol=64 * 2.0**-24 * 4, atol=0)
            _, fresh_gradient = table.lookup_gradient(moved, n_axes=2)
            _, cached_gradient = table.lookup_gradient(moved, cells, n_axes=2)
            torch.testing.assert_close(cached_gradient, fresh_gradient, rtol=1e-4, atol=1e-5 * scale.max().item())
    shifted = moved.clone()
    shifted[:, 2] = 1.25 - shifted[:, 2] + 0.7  # B1 (the fixed axis of the last cells) changes: gathered again
    torch.testing.assert_close(table.lookup(shifted, cells)[0], table.lookup(shifted)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="derivative along 3 axes"):
        table.lookup_gradient(shifted, cells, n_axes=3)
    none = torch.zeros((0, 3))  # no voxels: empty results of the right shapes
    assert table.lookup(none, Cells(2))[0].shape == (0, 6) and table.lookup_gradient(none)[1].shape == (0, 6, 3)


def test_refinement_reaches_the_best_fit(small_model):
    params, pd, signals = held_out(500, seed=13)
    raw = small_model.map_signals(signals, refine=0)
    refined = small_model.map_signals(signals)
    # a step is kept only where it raises the fit; the two scores |f.x| / (|f| |x|) from K = 8 term float32 sums
    # are each within (2K + 5) u of exact (u = 2^-24)
    assert (refined.score >= raw.score - 2 * (2 * 8 + 5) * 2.0**-24).all()
    for column, name in ((0, "t1_ms"), (1, "t2_ms")):
        raw_error = np.median(np.abs(getattr(raw, name) / params[:, column] - 1))
        refined_error = np.median(np.abs(getattr(refined, name) / params[:, column] - 1))
        assert refined_error < 1e-3 < raw_error, (name, raw_error, refined_error)  # noiseless: exact up to the table
    assert np.median(np.abs(refined.pd / pd - 1)) < 1e-3


def test_refinement_stays_physical_on_pure_noise(small_model):
    rng = np.random.default_rng(21)
    noise = (rng.normal(size=(400, 8)) + 1j * rng.normal(size=(400, 8))).astype(np.complex64)
    result = small_model.map_coefficients(noise, small_model.basis)
    assert np.isfinite(result.t1_ms).all() and (result.t2_ms <= result.t1_ms * (1 + 1e-5)).all()
    assert result.t1_ms.min() >= 100 * (1 - 1e-5) and result.t1_ms.max() <= 3000 * (1 + 1e-5)
    assert (result.score < 0.9).mean() > 0.5  # noise does not look like a fingerprint
