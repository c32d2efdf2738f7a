"""NUFFT operators for spiral MRF with interchangeable backends; plans made once per set of points.

Convention (mrf_core.recon.trajectory): k-space points in cycles/FOV (kx with the image columns, ky with the
rows), an image of `matrix` pixels per side, pixel r = index - n // 2 on each axis of the grid, and

    forward  y(k) = sum_r x(r) exp(-2 pi i k.r / matrix)      (type 2)
    adjoint  x(r) = sum_k y(k) exp(+2 pi i k.r / matrix)      (type 1, the exact adjoint of forward)

with no normalisation: A^H(w y) / matrix^2 reconstructs an image when w is the density compensation in
(cycles/FOV)^2. The grid may be larger than the matrix (`shape`, e.g. (2N, 2N) for Toeplitz PSFs): the
frequencies stay 2 pi k / matrix, the grid just holds more pixels.

Backends (`BACKENDS`):
- "finufft" (default, CPU): one finufft.Plan per (direction, batch size), points set once, at most
  `n_threads` threads, each spreading whole transforms (batches padded to a multiple of the threads, so
  results are bitwise reproducible).
- "sigpy": sigpy.nufft / nufft_adjoint (numba on the CPU, cupy on a GPU with device="cuda[:n]"),
  rescaled from sigpy's orthonormal scaling to the convention above.
- "cufinufft": cufinufft plans on a GPU (needs cupy and cufinufft; numpy in and out).
- "dft": the explicit sum (small problems only), the independent reference the tests compare with.

Batches: leading axes of the input are transformed together (n_trans in finufft), e.g. coils x
subspace components.
"""

from __future__ import annotations

import math

import numpy as np

from mrf_core.errors import MrfError

BACKENDS = ("finufft", "sigpy", "cufinufft", "dft")
GPU_BACKENDS = ("cufinufft",)
DEFAULT_EPS = 1e-4  # relative accuracy; image noise at SNR 40 is ~1e-2
# finufft's grid oversampling: 1.25 instead of 2 makes the FFTs 2.6x smaller; measured 3x faster for the
# standard slice's adjoint and PSF at eps 1e-4 (benchmarks/bench_recon.py)
DEFAULT_UPSAMPLING = 1.25
DEFAULT_THREADS = 2
_DFT_MAX_ENTRIES = 50_000_000  # points x pixels of the explicit matrix
_SIGPY_OVERSAMPLING, _SIGPY_WIDTH = 1.25, 4
_MAX_CACHED_PLANS = 6
# finufft's spread_thread 2: threads take whole transforms of a batch, so each transform's sums run in a
# fixed order (its automatic choice splits one transform's points between threads when the batch is
# small). A batch that is not a multiple of the threads would leave its last transforms to all threads
# (measured: 1 run in ~300 differed at ~5e-7 relative with 1, 3 or 5 transforms on 2 threads), so batches
# are padded with zero transforms to a multiple of the threads: results are bitwise reproducible, whatever
# else runs on the machine, at the cost of the remainder running one transform per thread.
_FINUFFT_SPREAD_THREAD = 2


class NufftError(MrfError):
    """A NUFFT that cannot be set up or applied: the message names the field and the value."""


def gpu_available() -> bool:
    """True when cupy imports and sees a CUDA device (the GPU code paths need it)."""
    try:
        import cupy
    except ImportError:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # cupy raises its own CUDA errors when no driver is present
        return False


def backend_available(backend: str, device: str = "cpu") -> bool:
    """Whether `backend` can run on `device` here (imports present, a GPU for GPU work)."""
    if backend not in BACKENDS:
        return False
    on_gpu = device != "cpu"
    if backend == "cufinufft" or on_gpu:
        if not gpu_available():
            return False
    if backend == "cufinufft":
        try:
            import cufinufft  # noqa: F401
        except ImportError:
            return False
    if on_gpu and backend not in ("sigpy", "cufinufft"):
        return False
    return True


class Nufft:
    """Forward (type 2) and adjoint (type 1) NUFFT on fixed points; see the module docstring.

    traj: (..., 2) cycles/FOV, flattened to M points; matrix: the image size that sets the frequency
    scale; shape: the image grid (default (matrix, matrix)); eps: requested relative accuracy;
    upsampling: the fine grid's oversampling in finufft / cufinufft (1.25 or 2).
    """

    def __init__(self, traj, matrix: int, shape: tuple[int, int] | None = None, backend: str = "finufft",
                 eps: float = DEFAULT_EPS, n_threads: int = DEFAULT_THREADS, device: str = "cpu",
                 upsampling: float = DEFAULT_UPSAMPLING):
        if backend not in BACKENDS:
            raise NufftError(f"nufft backend = {backend!r} must be one of {', '.join(BACKENDS)}")
        if not backend_available(backend, device):
            raise NufftError(f"nufft backend {backend!r} on device {device!r} is not available here "
                             "(missing package or no GPU)")
        points = np.asarray(traj, dtype=np.float64).reshape(-1, 2)
        if points.shape[0] == 0:
            raise NufftError("traj has no points")
        if not np.all(np.isfinite(points)):
            raise NufftError("traj has non-finite values")
        reach = float(np.abs(points).max())
        if reach > 1.5 * matrix:  # finufft accepts |2 pi k / N| <= 3 pi
            raise NufftError(f"traj reaches {reach:.4g} cycles/FOV, outside +-1.5 x matrix = {1.5 * matrix:g}")
        self.matrix = int(matrix)
        self.shape = (self.matrix, self.matrix) if shape is None else tuple(int(s) for s in shape)
        self.backend, self.eps, self.n_threads, self.device = backend, float(eps), int(n_threads), device
        self.upsampling = float(upsampling)
        self.n_points = points.shape[0]
        scale = 2.0 * math.pi / self.matrix
        # finufft's (x, y) pair with the array's (rows, columns): (ky, kx) in radians
        self._rows = np.ascontiguousarray(points[:, 1] * scale, dtype=np.float32)
        self._cols = np.ascontiguousarray(points[:, 0] * scale, dtype=np.float32)
        self._plans: dict[tuple[int, int], object] = {}
        if backend == "sigpy":
            # sigpy's coordinates are in grid units of the output shape, last axis last: (ky, kx)
            self._coord = np.stack([points[:, 1] * self.shape[0] / self.matrix,
                                    points[:, 0] * self.shape[1] / self.matrix], axis=1).astype(np.float32)
            self._sigpy_scale = np.float32(math.sqrt(self.shape[0] * self.shape[1]))
        if backend == "dft":
            if self.n_points * self.shape[0] * self.shape[1] > _DFT_MAX_ENTRIES:
                raise NufftError(f"dft backend: {self.n_points} points x {self.shape} pixels is too large")
            r0 = np.arange(self.shape[0]) - self.shape[0] // 2
            r1 = np.arange(self.shape[1]) - self.shape[1] // 2
            phase = (np.outer(points[:, 1] * scale, r0)[:, :, None]
                     + np.outer(points[:, 0] * scale, r1)[:, None, :])
            self._matrix = np.exp(-1j * phase).reshape(self.n_points, -1)  # complex128 (M, n_pixels)

    # ---- public ---------------------------------------------------------------------------------
    def forward(self, images: np.ndarray) -> np.ndarray:
        """Images (*batch, *shape) -> samples (*batch, M) complex64."""
        images = np.asarray(images)
        if images.shape[-2:] != self.shape:
            raise NufftError(f"forward: images have shape {images.shape}, expected (..., {self.shape[0]}, "
                             f"{self.shape[1]})")
        batch = images.shape[:-2]
        flat = np.ascontiguousarray(images.reshape((-1,) + self.shape), dtype=np.complex64)
        out = self._run(2, flat)
        return out.reshape(batch + (self.n_points,))

    def adjoint(self, samples: np.ndarray) -> np.ndarray:
        """Samples (*batch, M) -> images (*batch, *shape) complex64."""
        samples = np.asarray(samples)
        if samples.shape[-1] != self.n_points:
            raise NufftError(f"adjoint: samples have {samples.shape[-1]} points on the last axis, expected "
                             f"{self.n_points}")
        batch = samples.shape[:-1]
        flat = np.ascontiguousarray(samples.reshape(-1, self.n_points), dtype=np.complex64)
        out = self._run(1, flat)
        return out.reshape(batch + self.shape)

    # ---- backends -------------------------------------------------------------------------------
    def _run(self, nufft_type: int, data: np.ndarray) -> np.ndarray:
        if self.backend == "finufft":
            return self._finufft(nufft_type, data)
        if self.backend == "cufinufft":
            return self._cufinufft(nufft_type, data)
        if self.backend == "sigpy":
            return self._sigpy(nufft_type, data)
        return self._dft(nufft_type, data)

    def _plan(self, nufft_type: int, n_trans: int, make):
        key = (nufft_type, n_trans)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _MAX_CACHED_PLANS:
                self._plans.pop(next(iter(self._plans)))
            plan = self._plans[key] = make()
        return plan

    def _finufft(self, nufft_type: int, data: np.ndarray) -> np.ndarray:
        import finufft

        n_data = data.shape[0]
        pad = -n_data % self.n_threads  # whole transforms per thread: see _FINUFFT_SPREAD_THREAD
        if pad:
            data = np.concatenate([data, np.zeros((pad,) + data.shape[1:], dtype=data.dtype)])
        n_trans = data.shape[0]

        def make():
            plan = finufft.Plan(nufft_type, self.shape, n_trans=n_trans, eps=self.eps,
                                isign=-1 if nufft_type == 2 else 1, dtype="complex64", nthreads=self.n_threads,
                                spread_thread=_FINUFFT_SPREAD_THREAD, upsampfac=self.upsampling)
            plan.setpts(self._rows, self._cols)
            return plan

        plan = self._plan(nufft_type, n_trans, make)
        out = plan.execute(data[0] if n_trans == 1 else data)
        return out.reshape((n_trans,) + (out.shape[-1:] if nufft_type == 2 else self.shape))[:n_data]

    def _cufinufft(self, nufft_type: int, data: np.ndarray) -> np.ndarray:
        import cufinufft
        import cupy

        n_trans = data.shape[0]

        def make():
            plan = cufinufft.Plan(nufft_type, self.shape, n_trans=n_trans, eps=self.eps,
                                  isign=-1 if nufft_type == 2 else 1, dtype="complex64", upsampfac=self.upsampling)
            plan.setpts(cupy.asarray(self._rows), cupy.asarray(self._cols))
            return plan

        plan = self._plan(nufft_type, n_trans, make)
        out = plan.execute(cupy.asarray(data[0] if n_trans == 1 else data))
        out = cupy.asnumpy(out)
        return out.reshape((n_trans,) + (out.shape[-1:] if nufft_type == 2 else self.shape))

    def _sigpy(self, nufft_type: int, data: np.ndarray) -> np.ndarray:
        import sigpy as sp

        device = sp.Device(-1 if self.device == "cpu" else int(self.device.partition(":")[2] or 0))
        with device:
            xp = device.xp
            coord = sp.to_device(self._coord, device)
            x = sp.to_device(data, device)
            if nufft_type == 2:
                out = sp.nufft(x, coord, oversamp=_SIGPY_OVERSAMPLING, width=_SIGPY_WIDTH) * self._sigpy_scale
            else:
                out = sp.nufft_adjoint(x, coord, oshape=(data.shape[0],) + self.shape,
                                       oversamp=_SIGPY_OVERSAMPLING, width=_SIGPY_WIDTH) * self._sigpy_scale
            out = xp.asarray(out, dtype=xp.complex64)
        return np.asarray(sp.to_device(out, sp.cpu_device))

    def _dft(self, nufft_type: int, data: np.ndarray) -> np.ndarray:
        if nufft_type == 2:
            return (data.reshape(data.shape[0], -1) @ self._matrix.T).astype(np.complex64)
        out = data @ self._matrix.conj()
        return out.reshape((data.shape[0],) + self.shape).astype(np.complex64)
