"""Grids, dictionary generation, the SVD basis and HDF5 storage."""

import h5py
import numpy as np
import pytest

from mrf_core.physics.dictionary import (
    Dictionary,
    DictionaryError,
    DictionaryGrid,
    build_dictionary,
    cache_key,
    cached_dictionary,
    oksuz_grid,
    percent_grid,
    song_grid,
)
from mrf_core.physics.epg import simulate_fisp
from mrf_core.physics.sequence import default_schedule
from mrf_core.physics.temporal_basis import BasisError, TemporalBasis


@pytest.fixture(scope="module")
def schedule():
    return default_schedule().truncated(150)


@pytest.fixture(scope="module")
def small(schedule):
    grid = percent_grid(15, (20, 3000), (5, 1000), b1_axis=(0.9, 1.1))
    return build_dictionary(schedule, grid, n_states=30, rank=8, device="cpu", progress=False)


def test_seed_grid_sizes():
    assert song_grid().n_atoms == 80_100  # Song et al.: T2 <= T1
    oksuz = oksuz_grid()
    assert oksuz.n_atoms == 114_400  # ~115k (their zero T1/T2 dropped)
    t1, t2, _, _ = oksuz.atoms()
    assert np.all(t2 < t1) and t1.min() == 2 and t1.max() == 4000 and t2.max() == 500
    assert 9_000 < percent_grid(5).n_atoms < 13_000


def test_grid_order_and_rules():
    grid = DictionaryGrid("g", [100, 200, 300], [100, 200], [0.8, 1.2], "le")
    t1, t2, b1, index = grid.atoms()
    assert np.all(t2 <= t1) and len(t1) == 2 * 5
    assert np.all(np.diff(b1) >= 0)  # B1 slowest: generation chunks share one B1
    np.testing.assert_array_equal(grid.t1_axis_ms[index[:, 0]], t1)
    with pytest.raises(DictionaryError, match="t2_axis_ms must be finite and > 0"):
        DictionaryGrid("g", [100], [0, 10])
    with pytest.raises(DictionaryError, match="step_pct = 0"):
        percent_grid(0)


def test_fingerprints_are_the_simulator_signals(small, schedule):
    pick = [0, small.n_atoms // 2, small.n_atoms - 1]
    direct = simulate_fisp(schedule, small.t1_ms[pick], small.t2_ms[pick], small.b1[pick], n_states=30,
                           device="cpu").numpy()
    np.testing.assert_allclose(small.signals(pick), direct, atol=1e-6)


def test_basis_is_orthonormal_and_compresses(small):
    u = small.basis.vectors
    np.testing.assert_allclose(u.T @ u, np.eye(small.basis.rank), atol=1e-5)
    np.testing.assert_allclose(small.compressed, small.fingerprints @ u, rtol=1e-4, atol=1e-6)
    energies = [small.basis.residual_energy(k) for k in range(1, 12)]
    assert all(a >= b for a, b in zip(energies, energies[1:], strict=False))
    # the kept energy equals what projection actually keeps, computed independently
    f = small.fingerprints / np.linalg.norm(small.fingerprints, axis=1, keepdims=True)
    kept = np.linalg.norm(f @ u) ** 2 / np.linalg.norm(f) ** 2
    assert 1 - kept == pytest.approx(small.basis.residual_energy(), rel=1e-2, abs=1e-7)
    # a time course goes through project -> expand unchanged up to the residual
    signal = small.signals([5])
    back = small.basis.expand(small.basis.project(signal))
    assert np.linalg.norm(back - signal) / np.linalg.norm(signal) < 0.05


def test_jiang_schedule_rank_against_design_anchor():
    """Published for the Jiang schedule (B1 = 1): residual energy ~1e-3 at rank 5 and ~3e-5 at rank 10."""
    d = build_dictionary(default_schedule(), percent_grid(10, (20, 4000), (5, 500)), n_states=20,
                         device="cpu", progress=False, keep_fingerprints=False)
    assert 3e-4 < d.basis.residual_energy(5) < 3e-3
    assert 1e-5 < d.basis.residual_energy(10) < 1.5e-4


def test_rank_by_energy(schedule):
    grid = percent_grid(20, (20, 3000), (5, 1000))
    d = build_dictionary(schedule, grid, n_states=20, residual_energy=1e-4, device="cpu", progress=False)
    assert d.basis.residual_energy() <= 1e-4 < d.basis.residual_energy(d.basis.rank - 1)


def test_save_load_round_trip(small, schedule, tmp_path):
    path = tmp_path / "d.h5"
    small.save(path)
    back = Dictionary.load(path, schedule=schedule)
    np.testing.assert_array_equal(back.fingerprints, small.fingerprints)
    np.testing.assert_array_equal(back.compressed, small.compressed)
    np.testing.assert_array_equal(back.grid_index, small.grid_index)
    assert back.basis.hash == small.basis.hash and back.grid.name == small.grid.name
    assert Dictionary.load(path, fingerprints=False).fingerprints is None
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]


def test_wrong_schedule_truncated_and_foreign_files(small, tmp_path):
    path = tmp_path / "d.h5"
    small.save(path)
    with pytest.raises(DictionaryError, match=r"made for schedule .* \(hash \w+, 150 TRs\) but the scan.s schedule"):
        Dictionary.load(path, schedule=default_schedule())
    (tmp_path / "cut.h5").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DictionaryError, match="cut.h5"):
        Dictionary.load(tmp_path / "cut.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(DictionaryError, match="format attribute"):
        Dictionary.load(tmp_path / "other.h5")
    with h5py.File(path, "a") as f:
        del f["compressed"]
        f["compressed"] = np.zeros((3, 3), np.float32)
    with pytest.raises(DictionaryError, match=r"dataset compressed has shape \(3, 3\)"):
        Dictionary.load(path)
    with pytest.raises(DictionaryError, match="does not exist"):
        Dictionary.load(tmp_path / "missing.h5")


def test_compressed_only_has_no_signals(schedule):
    d = build_dictionary(schedule, percent_grid(30), n_states=20, keep_fingerprints=False, device="cpu",
                         progress=False)
    with pytest.raises(DictionaryError, match="compressed-only"):
        d.signals([0])


def test_dictionary_in_another_basis_of_its_subspace(small):
    truncated = small.basis.truncated(4)
    projected = small.in_basis(truncated)
    assert projected.basis is truncated and small.in_basis(small.basis) is small
    np.testing.assert_allclose(projected.compressed, small.compressed[:, :4], atol=1e-5)
    # a rotated basis of the same subspace: the atoms' projections keep their norms
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))
    rotated = TemporalBasis((truncated.vectors @ rotation).astype(np.float32), truncated.singular_values,
                            truncated.signal_phase, truncated.schedule_hash)
    np.testing.assert_allclose(np.linalg.norm(small.in_basis(rotated).compressed, axis=1),
                               np.linalg.norm(projected.compressed, axis=1), rtol=1e-4)
    flipped = TemporalBasis(np.ascontiguousarray(small.basis.vectors[::-1]), small.basis.singular_values,
                            small.basis.signal_phase, "other")
    with pytest.raises(BasisError, match="different schedules or dictionaries"):
        small.in_basis(flipped)
    with pytest.raises(BasisError, match="another signal phase"):
        small.in_basis(TemporalBasis(truncated.vectors, truncated.singular_values, 1j * truncated.signal_phase, "x"))


def test_cached_dictionary_reuses_and_rebuilds_an_unusable_file(schedule, tmp_path, caplog):
    grid = percent_grid(40.0)
    built = cached_dictionary(schedule, grid, rank=4, cache_dir=tmp_path)
    (path,) = tmp_path.glob("dict_*.h5")
    assert path.name == f"dict_{cache_key(schedule, grid, 50, 4)}.h5" and built.fingerprints is None
    assert cache_key(schedule, grid, 20, 4) != cache_key(schedule, grid, 50, 4)
    caplog.set_level("INFO")
    again = cached_dictionary(schedule, grid, rank=4, cache_dir=tmp_path)
    assert "from cache" in caplog.text
    np.testing.assert_array_equal(again.compressed, built.compressed)
    path.write_bytes(b"truncated")
    rebuilt = cached_dictionary(schedule, grid, rank=4, cache_dir=tmp_path)
    assert "unusable" in caplog.text and rebuilt.basis.hash == built.basis.hash
    assert Dictionary.load(path, schedule=schedule, fingerprints=False).n_atoms == built.n_atoms


def test_top_eigenvectors_are_the_leading_eigenvectors_of_a_known_spectrum():
    """G = Q diag(lambda) Q^T with a spectrum falling like a dictionary's: the subspace iteration returns
    Q's leading columns (up to sign) to float64 rounding, in order; a flat spectrum that cannot converge in
    the allowed products is an error, not a silent basis."""
    from mrf_core.physics.temporal_basis import BasisError, top_eigenvectors

    rng = np.random.default_rng(3)
    q = np.linalg.qr(rng.standard_normal((200, 200)))[0]
    values = 10.0 ** -np.arange(200, dtype=float) * 0.5 ** 0  # a decade per component
    values = np.maximum(values, 1e-300)
    gram = (q * values) @ q.T
    vectors = top_eigenvectors(gram, 10)
    np.testing.assert_allclose(np.abs(np.sum(vectors * q[:, :10], axis=0)), 1.0, atol=1e-8)
    flat = (q * np.linspace(1.0, 0.99, 200)) @ q.T
    with pytest.raises(BasisError, match="did not converge"):
        top_eigenvectors(flat, 10, max_iterations=2)
