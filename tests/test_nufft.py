"""NUFFT backends: the sign and scale convention against an explicit sum, agreement with the exact DFT,
adjointness, batching, and errors."""

from __future__ import annotations

import numpy as np
import pytest

from mrf_core.recon.nufft import BACKENDS, Nufft, NufftError, backend_available

N = 16
CPU_BACKENDS = [b for b in BACKENDS if b != "dft" and backend_available(b, "cpu")]
GPU_CASES = [(b, "cuda") for b in ("sigpy", "cufinufft") if backend_available(b, "cuda")]
TOLERANCE = {"finufft": 5e-4, "sigpy": 2e-2, "cufinufft": 5e-4}  # eps 1e-4; sigpy: width 4, oversampling 1.25


def _random(rng, shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


@pytest.fixture(scope="module")
def points():
    return np.random.default_rng(1).uniform(-N / 2, N / 2, (200, 2))


def test_dft_matches_the_documented_sum(points):
    """y(k) = sum_r x(r) exp(-2 pi i (kx r_col + ky r_row) / N), r = index - N // 2, written out by hand."""
    rng = np.random.default_rng(0)
    x = _random(rng, (N, N))
    r = np.arange(N) - N // 2
    expected = np.array([np.sum(x * np.exp(-2j * np.pi * (kx * r[None, :] + ky * r[:, None]) / N))
                         for kx, ky in points[:5]])
    got = Nufft(points[:5], N, backend="dft").forward(x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("grid", [N, 2 * N])
def test_backend_matches_dft(backend, grid, points):
    rng = np.random.default_rng(2)
    reference = Nufft(points, N, shape=(grid, grid), backend="dft")
    op = Nufft(points, N, shape=(grid, grid), backend=backend)
    x, y = _random(rng, (3, grid, grid)), _random(rng, (3, len(points)))
    for got, want in ((op.forward(x), reference.forward(x)), (op.adjoint(y), reference.adjoint(y))):
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < TOLERANCE[backend]


@pytest.mark.parametrize("backend, device", [(b, "cpu") for b in ["dft", *CPU_BACKENDS]] + GPU_CASES)
def test_adjointness(backend, device, points):
    rng = np.random.default_rng(3)
    op = Nufft(points, N, backend=backend, device=device)
    x, y = _random(rng, (N, N)), _random(rng, len(points))
    forward = op.forward(x)
    lhs, rhs = np.vdot(forward, y), np.vdot(x, op.adjoint(y))
    # the spreading/interpolation and the deconvolution are exact transposes, so only float32 rounding
    # separates the sides: sums of <= w^2 kernel terms (w <= 8 at eps 1e-4) and an FFT, each within
    # (w^2 + 2 log2 n^2) u of |A x| |y| (Cauchy-Schwarz scale, u = 2^-24): 1e-5. Relative to |lhs| there is
    # no bound: <Ax, y> of random vectors nearly cancels (seen at 4e-5 for some seeds)
    assert abs(lhs - rhs) <= 1e-5 * np.linalg.norm(forward) * np.linalg.norm(y)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_batches_equal_single_transforms_and_plans_are_reused(backend, points):
    rng = np.random.default_rng(4)
    op = Nufft(points, N, backend=backend)
    x = _random(rng, (2, 3, N, N))
    batched = op.forward(x)
    assert batched.shape == (2, 3, len(points)) and batched.dtype == np.complex64
    np.testing.assert_allclose(batched[1, 2], op.forward(x[1, 2]), rtol=1e-5, atol=1e-4)
    if backend == "finufft":
        plans = dict(op._plans)
        op.forward(x)
        assert all(op._plans[key] is plans[key] for key in plans)


def test_errors(points):
    with pytest.raises(NufftError, match="backend"):
        Nufft(points, N, backend="nope")
    bad = points.copy()
    bad[3, 0] = np.nan
    with pytest.raises(NufftError, match="non-finite"):
        Nufft(bad, N)
    with pytest.raises(NufftError, match="outside"):
        Nufft(points * 10, N)
    with pytest.raises(NufftError, match="shape"):
        Nufft(points, N).forward(np.zeros((N, N + 1), np.complex64))


@pytest.mark.skipif(backend_available("cufinufft", "cuda"), reason="a GPU is present")
def test_gpu_backend_is_refused_cleanly_without_a_gpu(points):
    with pytest.raises(NufftError, match="not available"):
        Nufft(points, N, backend="cufinufft", device="cuda")


def test_finufft_is_bitwise_reproducible_on_any_thread_count(points):
    """finufft spreads whole transforms per thread; a batch that is not a multiple of the threads left its
    last transforms to all threads, adding their subgrids in a varying order (seen: ~1 run in 300 differed
    at ~5e-7 with 3 transforms on 2 threads). Nufft pads batches to a multiple of the threads: identical
    bits over 200 runs each of 1, 3 and 5 transforms on 1, 2 and 3 threads, forward and adjoint."""
    rng = np.random.default_rng(6)
    for n_trans in (1, 3, 5):
        y = _random(rng, (n_trans, len(points)))
        for n_threads in (1, 2, 3):
            op = Nufft(points, N, n_threads=n_threads)
            first = op.adjoint(y)
            assert all(np.array_equal(op.adjoint(y), first) for _ in range(200)), (n_trans, n_threads)
            image = op.forward(first)
            assert all(np.array_equal(Nufft(points, N, n_threads=n_threads).forward(first), image)
                       for _ in range(3)), (n_trans, n_threads)
