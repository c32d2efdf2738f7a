"""Subspace operators: adjointness per backend, the Toeplitz normal operator against A^H W A (explicit
and as a dense matrix), the PSF cache, the data reduction, and the solvers."""

from __future__ import annotations

import numpy as np
import pytest

from mrf_core.recon.nufft import backend_available
from mrf_core.recon.subspace import (
    SubspaceOperator,
    SubspaceSampling,
    ToeplitzNormal,
    conjugate_gradient,
    fista_llr,
    largest_eigenvalue,
    llr_threshold,
    reduce_readouts,
)
from mrf_core.recon.trajectory import SpiralParams, design_spiral

N, T, K, C = 32, 30, 3, 2
BACKENDS = ["dft"] + [b for b in ("finufft", "sigpy") if backend_available(b)]
TOLERANCE = {"dft": 1e-5, "finufft": 5e-4, "sigpy": 2e-2}


def _random(rng, shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _problem(n=N, n_t=T, n_interleaves=8, rank=K, n_coils=C, seed=0):
    spiral = design_spiral(SpiralParams(fov_mm=240.0, matrix=n, n_interleaves=n_interleaves,
                                        centre_interleaves=n_interleaves // 2))
    interleave = np.arange(n_t) % n_interleaves
    sampling, note = SubspaceSampling.from_readouts(spiral.traj(interleave), np.tile(spiral.dcf(), (n_t, 1)),
                                                    np.arange(n_t), interleave, n)
    assert note is None and sampling.n_interleaves == min(n_t, n_interleaves)
    rng = np.random.default_rng(seed)
    vectors = np.linalg.qr(rng.standard_normal((n_t, rank)))[0]
    maps = _random(rng, (n_coils, n, n))
    return sampling, vectors, maps, rng


@pytest.mark.parametrize("backend", BACKENDS)
def test_operator_adjointness(backend):
    sampling, vectors, maps, rng = _problem()
    op = SubspaceOperator(sampling, vectors, maps, phase=np.exp(0.7j), backend=backend)
    c = _random(rng, (K, N, N))
    y = _random(rng, (T, C, sampling.n_samples))
    lhs, rhs = np.vdot(op.forward(c), y), np.vdot(c, op.adjoint(y))
    assert abs(lhs - rhs) / abs(lhs) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n_interleaves", [8, 4])  # J > K(K+1)/2 = 6: kernels made directly; J <= 6: from J spectra
def test_toeplitz_equals_normal_operator(backend, weighted, n_interleaves):
    sampling, vectors, maps, rng = _problem(n_interleaves=n_interleaves)
    op = SubspaceOperator(sampling, vectors, maps, phase=np.exp(0.7j), backend=backend)
    c = _random(rng, (K, N, N))
    y = op.forward(c)
    if weighted:
        y = y * sampling.dcf[sampling.group][:, None, :]
    expected = op.adjoint(y)
    got = ToeplitzNormal.compute(sampling, vectors, weighted=weighted, backend=backend).apply(c, maps)
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < TOLERANCE[backend]


def test_toeplitz_equals_dense_normal_matrix():
    """A as an explicit matrix (columns = forward of unit images) on an 8 x 8, rank-2 problem."""
    n, rank = 8, 2
    sampling, vectors, maps, rng = _problem(n=n, n_t=6, n_interleaves=3, rank=rank)
    op = SubspaceOperator(sampling, vectors, maps, backend="dft")
    size = rank * n * n
    columns = [op.forward(e.reshape(rank, n, n)).ravel() for e in np.eye(size, dtype=np.complex64)]
    a = np.stack(columns, axis=1).astype(np.complex128)
    w = np.broadcast_to(sampling.dcf[sampling.group][:, None, :], (6, C, sampling.n_samples)).ravel()
    dense = a.conj().T @ (w[:, None] * a)
    c = _random(rng, (rank, n, n))
    got = ToeplitzNormal.compute(sampling, vectors, weighted=True, backend="dft").apply(c, maps)
    np.testing.assert_allclose(got.ravel(), dense @ c.ravel(), rtol=1e-4, atol=1e-4 * np.abs(dense @ c.ravel()).max())


def test_one_channel_eigenvalue_bounds_the_coils_operator():
    """Dense, on an 8 x 8 rank-2 problem with coil maps zero outside a disc: the largest eigenvalue of
    A^H W A is at most that of the one channel 1_M on the maps' support times max sum_c |S_c|^2, which
    Lanczos on that channel reaches (from below)."""
    n, rank = 8, 2
    sampling, vectors, maps, _ = _problem(n=n, n_t=6, n_interleaves=3, rank=rank)
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    maps = np.where(np.hypot(yy, xx) < 3.2, maps, 0).astype(np.complex64)
    maps *= np.float32(np.sqrt(0.7 / (np.abs(maps) ** 2).sum(0).max()))  # max sum |S_c|^2 = 0.7
    normal = ToeplitzNormal.compute(sampling, vectors, backend="dft")
    support = ((np.abs(maps) ** 2).sum(0) > 0).astype(np.complex64)[None]

    def dense(channels):
        units = np.eye(rank * n * n, dtype=np.complex64).reshape(-1, rank, n, n)
        columns = np.stack([normal.apply(e, channels).ravel() for e in units], axis=1).astype(np.complex128)
        return np.linalg.eigvalsh((columns + columns.conj().T) / 2)[-1]

    coils, one = dense(maps), dense(support)
    assert coils <= 0.7 * one * (1 + 1e-5)
    assert normal.largest_eigenvalue(maps) <= 0.7 * one * (1 + 1e-5)
    assert normal.largest_eigenvalue(maps, n_iterations=40) == pytest.approx(0.7 * one, rel=1e-4)


def test_psf_cache_roundtrip(tmp_path, caplog):
    """Kernels made directly (8 interleaves > 6 pairs) are cached per basis; the per-interleave spectra (4
    interleaves) once per sampling, another basis on it reading them (no NUFFT) and getting the kernels
    that a cache-free computation makes."""
    sampling, vectors, _, _ = _problem()
    first = ToeplitzNormal.compute(sampling, vectors, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("psf_*.npy"))) == 1
    with caplog.at_level("INFO"):
        second = ToeplitzNormal.compute(sampling, vectors, cache_dir=tmp_path)
    assert "read from the cache" in caplog.text
    np.testing.assert_array_equal(first.kernels, second.kernels)
    ToeplitzNormal.compute(sampling, vectors[:, :2], cache_dir=tmp_path)  # another basis: another file
    assert len(list(tmp_path.glob("psf_*.npy"))) == 2
    few, vectors, _, rng = _problem(n_interleaves=4)
    ToeplitzNormal.compute(few, vectors, cache_dir=tmp_path / "few")
    other = np.linalg.qr(rng.standard_normal(vectors.shape))[0]
    caplog.clear()
    with caplog.at_level("INFO"):
        cached = ToeplitzNormal.compute(few, other, cache_dir=tmp_path / "few")
    assert "read from the cache" in caplog.text and len(list((tmp_path / "few").glob("psf_interleaves_*.npy"))) == 1
    np.testing.assert_array_equal(cached.kernels, ToeplitzNormal.compute(few, other).kernels)


def test_reduce_readouts_equals_explicit_sum():
    sampling, vectors, _, rng = _problem()
    y = _random(rng, (T, C, sampling.n_samples))
    z = reduce_readouts(y, sampling, vectors)
    j = 5
    rows = np.flatnonzero(sampling.group == j)
    np.testing.assert_allclose(z[:, :, j], np.einsum("rk,rcs->kcs", vectors[rows], y[rows]), rtol=1e-4, atol=1e-4)


def test_readouts_with_one_label_but_different_trajectories_are_kept_apart():
    spiral = design_spiral(SpiralParams(fov_mm=240.0, matrix=N, n_interleaves=8, centre_interleaves=4))
    traj = spiral.traj(np.arange(4))
    sampling, note = SubspaceSampling.from_readouts(traj, np.ones((4, traj.shape[1])), np.arange(4),
                                                    np.zeros(4, int), N)
    assert sampling.n_interleaves == 4 and "own interleave" in note


def test_cg_recovers_coefficients_from_noiseless_data():
    sampling, vectors, maps, rng = _problem(n_t=48, n_interleaves=8)  # each interleave 6 times: well posed
    op = SubspaceOperator(sampling, vectors, maps)
    normal = ToeplitzNormal.compute(sampling, vectors, weighted=True)
    c = _random(rng, (K, N, N))
    rhs = op.adjoint(op.forward(c) * sampling.dcf[sampling.group][:, None, :])
    x, record = conjugate_gradient(lambda v: normal.apply(v, maps), rhs, n_iterations=60, tolerance=1e-6)
    assert record.values[-1] < 1e-3 and record.values[-1] < record.values[1]
    assert np.linalg.norm(x - c) / np.linalg.norm(c) < 2e-2


def _svd_llr(x, threshold, block, shift):
    """Independent reference: roll, SVD of each block's Casorati matrix, soft-threshold, roll back."""
    rank, n, _ = x.shape
    y = np.roll(x.astype(np.complex128), shift, axis=(1, 2))
    m = n // block * block
    for i in range(0, m, block):
        for j in range(0, m, block):
            casorati = y[:, i:i + block, j:j + block].reshape(rank, -1).T
            u, s, vh = np.linalg.svd(casorati, full_matrices=False)
            y[:, i:i + block, j:j + block] = ((u * np.maximum(s - threshold, 0)) @ vh).T.reshape(rank, block, block)
    return np.roll(y, (-shift[0], -shift[1]), axis=(1, 2))


def test_llr_threshold():
    rng = np.random.default_rng(5)
    x = _random(rng, (K, 16, 16))
    np.testing.assert_allclose(llr_threshold(x, 0.0, 8, (3, 5)), x, atol=1e-5)
    # any size and shift equals the SVD's thresholding (float32 inputs: agreement to ~1e-6 relative)
    y = _random(rng, (K, 21, 21))
    for threshold, shift in ((0.5, (3, 5)), (2.0, (7, 1)), (0.0, (0, 0))):
        expected = _svd_llr(y, threshold, 8, shift)
        got = llr_threshold(y, threshold, 8, shift)
        assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-5
    assert np.abs(llr_threshold(x, 1e6, 8, (0, 0))).max() == 0
    # rank-1 blocks survive a threshold below their singular value up to a scale
    rank1 = np.einsum("k,ij->kij", np.array([1.0, 2.0, -1.0]), np.ones((16, 16))).astype(np.complex64)
    out = llr_threshold(rank1, 1.0, 8, (0, 0))
    s = np.linalg.norm(rank1[:, :8, :8])
    np.testing.assert_allclose(out, rank1 * (s - 1.0) / s, rtol=1e-4)


def test_fista_without_regularisation_approaches_least_squares():
    sampling, vectors, maps, rng = _problem(n_t=48, n_interleaves=8)
    op = SubspaceOperator(sampling, vectors, maps)
    normal = ToeplitzNormal.compute(sampling, vectors, weighted=True)
    c = _random(rng, (K, N, N))
    rhs = op.adjoint(op.forward(c) * sampling.dcf[sampling.group][:, None, :])
    x, record = fista_llr(lambda v: normal.apply(v, maps), rhs, n_iterations=40, lambda_llr=0.0)
    assert np.linalg.norm(x - c) / np.linalg.norm(c) < 0.1 and record.values[-1] < record.values[0]


def _hidden_eigenvalue_operator(shape, top):
    """N = I + (top - 1) u u^H (complex128), u a random unit vector: largest eigenvalue `top`, all others 1."""
    u = np.random.default_rng(1).standard_normal(int(np.prod(shape))) + 0j
    u /= np.linalg.norm(u)

    def normal(v):
        flat = np.asarray(v, dtype=np.complex128).ravel()
        return (flat + (top - 1.0) * u * np.vdot(u, flat)).reshape(shape)

    def solve(b):  # N^-1 b
        flat = b.ravel()
        return (flat - (1.0 - 1.0 / top) * u * np.vdot(u, flat)).reshape(shape)

    return normal, solve


def _data_objective(normal, rhs, x):
    x = np.asarray(x, dtype=np.complex128)
    return 0.5 * np.vdot(x, normal(x)).real - np.vdot(x, rhs).real


def test_largest_eigenvalue_is_lanczos():
    """On a diagonal operator of known spectrum: the estimate never exceeds the largest eigenvalue, beats the
    power iteration's Rayleigh quotient after as many products, and is exact once the Krylov space holds
    every eigenvector (n distinct eigenvalues: n steps)."""
    eigenvalues = np.linspace(1.0, 10.0, 6)[np.arange(6 * 64) % 6].reshape(6, 8, 8)

    def normal(v):
        return eigenvalues * v

    rng = np.random.default_rng(0)  # the estimate's own seeded start vector
    v = (rng.standard_normal(eigenvalues.shape) + 1j * rng.standard_normal(eigenvalues.shape)).astype(np.complex64)
    for steps in (2, 3, 4):
        rayleigh = v
        for _ in range(steps):
            w = rayleigh / np.linalg.norm(rayleigh)
            rayleigh = normal(w)
        power = float(np.vdot(w, rayleigh).real)
        estimate = largest_eigenvalue(normal, eigenvalues.shape, n_iterations=steps)
        assert power <= estimate <= 10.0 * (1 + 1e-6)
    assert largest_eigenvalue(normal, eigenvalues.shape, n_iterations=6) == pytest.approx(10.0, rel=1e-5)
    assert largest_eigenvalue(lambda x: 0 * x, eigenvalues.shape) == 0.0


def test_fista_backtracks_where_the_eigenvalue_estimate_is_low():
    """A step-size constant of 1.25 (what the eigenvalue 1 of N's other directions suggests) while N's largest is 4: a
    fixed step 1/1.25 diverges along u; backtracking keeps FISTA's rate, F(x_k) - F* <= 2 L ||x0 - x*||^2 /
    (k + 1)^2 with L <= 2 x 4 (Beck & Teboulle 2009, theorem 4.4), and converges to N^-1 rhs."""
    shape, top = (2, 8, 8), 4.0
    normal, solve = _hidden_eigenvalue_operator(shape, top)
    rhs = _random(np.random.default_rng(2), shape).astype(np.complex128)
    best = solve(rhs)
    f_best = _data_objective(normal, rhs, best)
    for k in (1, 2, 5, 10, 20, 40, 80):
        x, record = fista_llr(normal, rhs, n_iterations=k, lambda_llr=0.0, lipschitz=1.25)
        gap = _data_objective(normal, rhs, x) - f_best
        assert np.all(np.isfinite(x)) and record.lipschitz <= 2 * top
        assert gap <= 2 * (2 * top) * np.vdot(best, best).real / (k + 1) ** 2 + 1e-5 * abs(f_best)
    assert np.linalg.norm(x - best) / np.linalg.norm(best) < 1e-4
    # a given step-size constant far too small backtracks too; small LLR lambda stays near N^-1 rhs
    x, record = fista_llr(normal, rhs, n_iterations=80, lambda_llr=1e-3, lipschitz=1e-2)
    assert top / 2 <= record.lipschitz <= 2 * top
    assert np.linalg.norm(x - best) / np.linalg.norm(best) < 1e-2


def test_import_and_compile_without_a_writable_numba_cache(tmp_path):
    """An installed package run by another user has no writable cache folder for numba's cache=True; the
    module must still import and its compiled kernel run. As root permission bits stop no write, so every
    folder numba tries (NUMBA_CACHE_DIR, the module's __pycache__, the user's cache) lies under a regular
    file or is one, in a copy of the package."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import mrf_core

    copy = tmp_path / "src" / "mrf_core"
    shutil.copytree(Path(mrf_core.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "recon" / "__pycache__").write_text("")  # numba's in-tree cache folder cannot be made
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src"), "PYTHONDONTWRITEBYTECODE": "1",
           "NUMBA_CACHE_DIR": str(blocker / "numba"), "XDG_CACHE_HOME": str(blocker / "cache"), "HOME": str(blocker)}
    code = (
        "import numpy as np\n"
        "import mrf_core.recon.subspace as s\n"
        f"assert s.__file__.startswith({str(copy)!r}), s.__file__\n"
        "kernel = np.ones((3, 5000), np.float32)\n"
        "x = np.ones((1, 2, 5000), np.complex64)\n"
        "s._mix(kernel, np.array([[0, 1], [1, 2]]), x)\n"
        "assert np.allclose(x, 2.0)\n"
        "print('compiled without a cache')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiled without a cache" in done.stdout
    assert not any(tmp_path.rglob("*.nbi"))  # nothing was cached anywhere in the copy
