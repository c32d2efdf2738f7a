"""The shipped default models (B1-free, and B1 as an input for B1 maps): load, fit the default schedule, map
clean signals, convert bases."""

from __future__ import annotations

import numpy as np
import pytest

from mrf_core.mapping import ModelMismatchError, default_model_path, load_model
from mrf_core.physics.dictionary import build_dictionary, percent_grid
from mrf_core.physics.epg import simulate_fisp
from mrf_core.physics.sequence import default_schedule


@pytest.fixture(scope="module")
def default_model():
    return load_model(default_model_path())


def test_default_model_fits_the_default_schedule(default_model):
    schedule = default_schedule()
    default_model.check(schedule)
    with pytest.raises(ModelMismatchError, match="1000 TRs.*500 TRs"):
        default_model.check(schedule.truncated(500))
    assert default_model.input_kind == "coefficients" and default_model.basis.rank == 10
    assert default_model_path().stat().st_size < 5 * 2**20


def test_default_model_maps_clean_signals(default_model):
    t1, t2 = np.array([300.0, 800.0, 1400.0, 2500.0]), np.array([30.0, 60.0, 120.0, 400.0])
    pd = np.array([1.0, 0.5j, -2.0, 1 + 1j], dtype=np.complex64)
    signals = simulate_fisp(default_schedule(), t1, t2).numpy() * pd[:, None]
    network = default_model.map_signals(signals, refine=0)  # the network alone: its ~1 % approximation error
    np.testing.assert_allclose(network.t1_ms, t1, rtol=0.05)
    np.testing.assert_allclose(network.t2_ms, t2, rtol=0.08)
    np.testing.assert_allclose(network.pd, pd, rtol=0.05, atol=0.02)
    assert (network.score > 0.999).all()
    # refined on the fingerprint table (the default): noiseless signals are exact up to the table's
    # interpolation, as for the small model in test_mapping_training
    result = default_model.map_signals(signals)
    np.testing.assert_allclose(result.t1_ms, t1, rtol=1e-3)
    np.testing.assert_allclose(result.t2_ms, t2, rtol=1e-3)
    np.testing.assert_allclose(result.pd, pd, rtol=1e-3)
    # refining never lowers the fit; each score |f.x| / (|f| |x|) of K = 10 term float32 sums within (2K + 5) u
    assert (result.score >= network.score - 2 * (2 * 10 + 5) * 2.0**-24).all()


def test_default_model_takes_another_rank_10_basis(default_model):
    schedule = default_schedule()
    coarse = build_dictionary(schedule, percent_grid(25.0), rank=10, keep_fingerprints=False, progress=False)
    signals = simulate_fisp(schedule, [600.0, 1200.0], [50.0, 90.0]).numpy()
    direct = default_model.map_coefficients(default_model.basis.project(signals), default_model.basis)
    converted = default_model.map_coefficients(coarse.basis.project(signals), coarse.basis)
    np.testing.assert_allclose(converted.t1_ms, direct.t1_ms, rtol=0.01)
    np.testing.assert_allclose(converted.t2_ms, direct.t2_ms, rtol=0.02)
    with pytest.raises(ModelMismatchError, match="does not hold the model's subspace"):
        default_model.map_coefficients(coarse.basis.truncated(4).project(signals), coarse.basis.truncated(4))


def test_default_b1_model_maps_clean_signals_at_their_b1():
    """The model the chain maps with when a B1 map is given: B1 is an input, T1/T2 the outputs; refined on its
    (T1, T2, B1) table with B1 held at the given value, noiseless signals are exact up to the table's
    interpolation, at B1 on and between the table's nodes (0.6-1.4, step 0.05)."""
    model = load_model(default_model_path(b1_input=True))
    model.check(default_schedule())
    assert model.b1_input and model.output_names == ["t1_ms", "t2_ms"] and model.basis.rank == 10
    assert default_model_path(b1_input=True).stat().st_size < 5 * 2**20
    t1, t2 = np.array([300.0, 800.0, 1400.0, 2500.0]), np.array([30.0, 60.0, 120.0, 400.0])
    pd = np.array([1.0, 0.5j, -2.0, 1 + 1j], dtype=np.complex64)
    for b1 in (np.array([0.8, 0.9, 1.1, 1.2]), np.array([0.83, 0.97, 1.12, 1.18])):
        x = model.basis.project(simulate_fisp(default_schedule(), t1, t2, b1).numpy() * pd[:, None])
        network = model.map_coefficients(x, model.basis, refine=0, b1=b1)
        np.testing.assert_allclose(network.t1_ms, t1, rtol=0.05)
        np.testing.assert_allclose(network.t2_ms, t2, rtol=0.1)
        result = model.map_coefficients(x, model.basis, b1=b1)
        np.testing.assert_allclose(result.t1_ms, t1, rtol=1e-3)
        np.testing.assert_allclose(result.t2_ms, t2, rtol=1e-3)
        np.testing.assert_allclose(result.pd, pd, rtol=1e-3)
        # the B1 that was wrong by 10 % gives other T1/T2 (the input is used, not ignored)
        wrong = model.map_coefficients(x, model.basis, b1=b1 * 1.1)
        assert np.abs(wrong.t2_ms / t2 - 1).max() > 0.05
