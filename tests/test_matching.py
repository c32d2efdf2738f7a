"""Dictionary matching: exact recovery, pruned == exhaustive, PD, and unmatched voxels."""

import numpy as np
import pytest
import torch

from mrf_core.mapping.matching import match
from mrf_core.physics.dictionary import DictionaryError, build_dictionary, percent_grid
from mrf_core.physics.epg import simulate_fisp
from mrf_core.physics.sequence import default_schedule

U32, U64 = 2.0**-24, 2.0**-53  # unit roundoffs


@pytest.fixture(scope="module")
def dictionary():
    grid = percent_grid(8, (20, 3000), (5, 1000), b1_axis=(0.85, 1.0, 1.15))
    return build_dictionary(default_schedule().truncated(200), grid, n_states=30, rank=10, device="cpu",
                            progress=False)


def noisy_voxels(dictionary, n, noise, seed=0):
    rng = np.random.default_rng(seed)
    t1 = np.exp(rng.uniform(np.log(40), np.log(2500), n))
    t2 = np.minimum(t1 * np.exp(rng.uniform(np.log(0.03), np.log(0.6), n)), 900)
    b1 = rng.uniform(0.88, 1.12, n)
    pd = rng.uniform(0.3, 2.0, n) * np.exp(1j * rng.uniform(-np.pi, np.pi, n))
    clean = simulate_fisp(dictionary.schedule, t1, t2, b1, n_states=30, device="cpu").numpy() * pd[:, None]
    scale = noise * np.abs(clean).mean()
    return clean + scale * (rng.normal(size=clean.shape) + 1j * rng.normal(size=clean.shape))


@pytest.mark.parametrize("domain", ["time", "subspace"])
@pytest.mark.parametrize("search", ["exhaustive", "pruned"])
def test_atoms_are_recovered_exactly_with_pd(dictionary, domain, search):
    pick = np.arange(0, dictionary.n_atoms, 37)
    pd = (0.5 + np.arange(pick.size) / pick.size) * np.exp(1j * np.linspace(-3, 3, pick.size))
    signals = dictionary.signals(pick) * pd[:, None].astype(np.complex64)
    data = signals if domain == "time" else dictionary.basis.project(signals)
    result = match(dictionary, data, domain=domain, search=search, stride=3, device="cpu")
    # the atom itself, or a neighbour whose normalised atom (in the domain searched) is the same to float32
    # precision (short-T2 neighbours are): each score |d^T x| / |x| of F terms is within (F + 2) u of exact
    # and the float32 data within u, so a different atom must correlate with the true one (score 1) to
    # 1 - 2 (F + 3) u
    n_features = data.shape[1]
    atoms = (dictionary.fingerprints if domain == "time" else dictionary.compressed).astype(np.float64)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    correlation = np.sum(atoms[result.atom_index] * atoms[pick], axis=1)
    same = result.atom_index == pick
    assert np.all(same | (correlation >= 1 - 2 * (n_features + 3) * U32))
    assert np.mean(same) > 0.9
    # PD = d^T x / |d|^2: the data went through a float32 projection of T terms (subspace), the inner product
    # has F: within 2 (T + F + 2) u (T = 200 time points)
    n_timepoints = dictionary.schedule.n_timepoints
    np.testing.assert_allclose(result.pd[same], pd[same], rtol=2 * (n_timepoints + n_features + 2) * U32)
    assert result.score.min() >= 1 - 2 * (n_features + 3) * U32


def unit_atoms(dictionary) -> np.ndarray:
    """The subspace atoms normalised in float32 as the matcher does (so that near-duplicate atoms are the same
    numbers on both sides), as float64."""
    compressed = torch.as_tensor(dictionary.compressed)
    return (compressed / torch.linalg.vector_norm(compressed, dim=1, keepdim=True)).double().numpy()


def squared_scores(dictionary, coefficients, atom_index) -> np.ndarray:
    """|d^T x|^2 / |x|^2 in float64 of each voxel's given atom."""
    x = coefficients.astype(np.complex128)
    inner = np.sum(unit_atoms(dictionary)[atom_index] * x, axis=1)
    return np.abs(inner) ** 2 / np.sum(np.abs(x) ** 2, axis=1)


def exact_best(dictionary, coefficients):
    """Reference: float64 argmax of |d^T x| over all atoms."""
    x = coefficients.astype(np.complex128)
    return np.argmax(np.abs(x @ unit_atoms(dictionary).T), axis=1)


def assert_same_atoms(dictionary, coefficients, got, want, rounding):
    """got == want except between atoms whose squared normalised scores are within `rounding` of each other:
    near-duplicate atoms (short T2s, neighbours at high noise) leave top-two gaps down to 1e-11, which the
    two computations' roundings may order either way."""
    differ = got != want
    gap = squared_scores(dictionary, coefficients[differ], want[differ]) - squared_scores(
        dictionary, coefficients[differ], got[differ])
    assert (np.abs(gap) <= rounding).all(), (np.flatnonzero(differ), gap)


@pytest.mark.parametrize("noise", [0.01, 0.3])
@pytest.mark.parametrize("stride", [2, 4])
def test_pruned_search_is_exact(dictionary, noise, stride):
    coefficients = dictionary.basis.project(noisy_voxels(dictionary, 1500, noise))
    n_features = coefficients.shape[1]
    pruned = match(dictionary, coefficients, search="pruned", stride=stride, device="cpu")
    # both score |d^T x|^2 in float64 from the same float32 unit atoms and data, summing F terms in another
    # order: each within 2 (F + 1) u64 of |x|^2 (|d| = 1), so ties closer than twice that may go either way;
    # twice again for this check's own float64 gap
    assert_same_atoms(dictionary, coefficients, pruned.atom_index, exact_best(dictionary, coefficients),
                      rounding=8 * (n_features + 1) * U64)
    assert (pruned.atom_index >= 0).all()
    exhaustive = match(dictionary, coefficients, search="exhaustive", device="cpu")
    # exhaustive scores in float32: |d^T x| of F terms within F u32 |x|, its square, sum and sqrt and the
    # norm |x| add ~2 u32; pruned's float64 scores are exact to that
    np.testing.assert_allclose(pruned.score, exhaustive.score, rtol=0, atol=(n_features + 2) * U32)


def test_noisy_off_grid_parameters_are_close(dictionary):
    rng_voxels = noisy_voxels(dictionary, 400, 0.02, seed=3)
    result = match(dictionary, dictionary.basis.project(rng_voxels), device="cpu")
    rng = np.random.default_rng(3)
    t1 = np.exp(rng.uniform(np.log(40), np.log(2500), 400))
    assert np.median(np.abs(result.t1_ms / t1 - 1)) < 0.05  # an 8 % grid: half a step is 4 %


def test_small_memory_budget_gives_same_result(dictionary):
    coefficients = dictionary.basis.project(noisy_voxels(dictionary, 700, 0.05))
    a = match(dictionary, coefficients, search="exhaustive", device="cpu")
    b = match(dictionary, coefficients, search="exhaustive", max_memory_mb=0.01, device="cpu")
    assert a.atom_index.size == 700 and (a.atom_index >= 0).all()
    # other block shapes may take another float32 matrix-product kernel: each squared score within
    # 2 (F + 1) u32 (F = rank), so the two runs may order atoms closer than twice that either way
    n_features = coefficients.shape[1]
    assert_same_atoms(dictionary, coefficients, b.atom_index, a.atom_index, rounding=4 * (n_features + 1) * U32)
    np.testing.assert_allclose(b.score, a.score, rtol=0, atol=2 * (n_features + 2) * U32)


def test_unmatched_voxels_are_documented_values(dictionary):
    coefficients = dictionary.basis.project(noisy_voxels(dictionary, 12, 0.01)).reshape(3, 4, -1)
    coefficients[0, 0] = 0
    coefficients[0, 1, 2] = np.nan
    coefficients[1, 1, 0] = np.inf
    mask = np.ones((3, 4), bool)
    mask[2, 3] = False
    result = match(dictionary, torch.as_tensor(coefficients), mask=mask, device="cpu")
    unmatched = np.zeros((3, 4), bool)
    unmatched[0, 0] = unmatched[0, 1] = unmatched[1, 1] = unmatched[2, 3] = True
    assert result.t1_ms.shape == (3, 4)
    np.testing.assert_array_equal(result.matched, ~unmatched)
    assert np.all(np.isnan(result.t1_ms[unmatched])) and np.all(np.isnan(result.t2_ms[unmatched]))
    assert np.all(result.pd[unmatched] == 0) and np.all(result.score[unmatched] == 0)
    assert np.all(result.atom_index[unmatched] == -1)
    assert np.all(np.isfinite(result.t1_ms[~unmatched]))
    empty = match(dictionary, np.zeros((5, dictionary.basis.rank), np.complex64), device="cpu")
    assert not empty.matched.any()


def test_bad_input_is_named(dictionary):
    with pytest.raises(DictionaryError, match="needs data with 10 values on the last axis; got shape"):
        match(dictionary, np.zeros((4, 7), np.complex64), device="cpu")
    with pytest.raises(DictionaryError, match="mask has shape"):
        match(dictionary, np.ones((4, 10), np.complex64), mask=np.ones(3, bool), device="cpu")
    with pytest.raises(ValueError, match="search = 'fast'"):
        match(dictionary, np.ones((4, 10), np.complex64), search="fast", device="cpu")
    compressed_only = build_dictionary(dictionary.schedule, percent_grid(30), n_states=20,
                                       keep_fingerprints=False, device="cpu", progress=False)
    with pytest.raises(DictionaryError, match="compressed-only"):
        match(compressed_only, np.ones((2, 200), np.complex64), domain="time", device="cpu")


def test_auto_search_takes_the_cheaper_by_the_cost_model(dictionary, monkeypatch):
    from mrf_core.mapping import matching

    voxels = noisy_voxels(dictionary, 300, 0.3)
    sample = torch.as_tensor(voxels * np.conj(dictionary.signal_phase)).to(torch.complex64)
    atoms = matching._Atoms(dictionary, "time", torch.device("cpu"))
    chosen, _ = matching._choose_search(atoms, matching.DEFAULT_STRIDE, sample)
    cluster_of = matching._cluster_of(dictionary, matching.DEFAULT_STRIDE)
    stride = matching.DEFAULT_STRIDE
    index = torch.as_tensor(dictionary.grid_index) // torch.tensor([stride, stride, 1])
    np.testing.assert_array_equal(cluster_of, torch.unique(index, dim=0, return_inverse=True)[1])  # cells in order
    pruned = matching._ClusterSearch(atoms, cluster_of).cost_per_voxel(sample)
    assert chosen == ("pruned" if pruned < atoms.unit.numel() else "exhaustive")
    auto = match(dictionary, voxels, domain="time", search="auto", device="cpu")
    np.testing.assert_array_equal(auto.atom_index, match(dictionary, voxels, domain="time", search=chosen,
                                                         device="cpu").atom_index)
    counts = torch.bincount(cluster_of)
    floor = matching._pruned_cost(counts.numel(), int(counts.max()), atoms.unit, kept=1.0)
    assert floor <= pruned  # the seed's own cluster is always among those kept
    monkeypatch.setattr(matching, "_CACHE_BYTES", 0)  # candidates gathered from memory cost ~200 GEMM terms

    def unbuilt(*args):
        raise AssertionError("the floor alone decides: no clusters are built")

    monkeypatch.setattr(matching, "_ClusterSearch", unbuilt)
    assert matching._choose_search(atoms, matching.DEFAULT_STRIDE, sample)[0] == "exhaustive"
