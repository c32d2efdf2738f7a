"""Continuous matching on the fingerprint table, started at the network's estimate.

A network trained over a wide SNR range is an excellent global estimator but leaves a ~1 % approximation
error at high SNR, where dictionary matching on a fine grid does better (benchmarks/bench_mapping.py).
Matching's criterion -- the normalised correlation of the signal with a fingerprint -- can instead be
maximised over continuous parameters: starting from the network's T1/T2 (B1), a few Levenberg-Marquardt
steps on the residual y - g(theta) between the phase-aligned unit signal y and the unit interpolated
fingerprint g(theta) (|y - g|^2 = 2 - 2 y.g, so this maximises the correlation exactly) over theta = (log
T1, log T2 (, B1)), with the Jacobian of the table's cubic interpolation itself. Each step costs two table
lookups, from each voxel's cell nodes gathered once and kept while the voxel stays in the cell (Cells); a
step is kept only where it raises the correlation, so refining never makes a voxel's fit worse. The network
picks the basin (no grid search), the table removes the grid's quantisation.
"""

from __future__ import annotations

import torch

from mrf_core.mapping.table import Cells, FingerprintTable

# Noiseless Song setting (seed_tables.py (a), analytic Jacobian): T1/T2 RMSE 3.9/1.5 ms raw, 0.66/0.37 after 3
# iterations, 0.53/0.36 after 6, 0.52/0.36 after 10; noisy voxels (bench_mapping.py) settle after 2. Each
# iteration costs ~0.09 s per 65k voxels on one core (a 2-core AMD EPYC; without Cells 0.13 s).
DEFAULT_ITERATIONS = 4


def _params(theta: torch.Tensor) -> torch.Tensor:
    params = theta.clone()
    params[:, :2] = torch.exp(theta[:, :2])
    return params


def _unit(table: FingerprintTable, theta: torch.Tensor, cells: Cells) -> torch.Tensor:
    """Unit interpolated fingerprints (N, K) at table coordinates theta (N, P)."""
    f, _ = table.lookup(_params(theta), cells)
    return f / torch.linalg.vector_norm(f, dim=1, keepdim=True).clamp_min(1e-30)


def _unit_jacobian(table: FingerprintTable, theta: torch.Tensor, cells: Cells, n_free: int) -> torch.Tensor:
    """d(f/|f|)/d theta (N, K, n_free) for the first n_free coordinates, from the cubic's own derivatives."""
    f, df = table.lookup_gradient(_params(theta), cells, n_free)
    norm = torch.linalg.vector_norm(f, dim=1, keepdim=True).clamp_min(1e-30)
    g = f / norm
    return (df - g[:, :, None] * (g[:, None, :] @ df)) / norm[:, :, None]


def _feasible(theta: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Inside the table's range and T2 <= T1 (as the training and the dictionaries are): at T1 of a few ms
    the fingerprint hardly depends on T2, and the unconstrained optimum wandered to T2 of 100 x T1."""
    theta = torch.maximum(torch.minimum(theta, hi), lo)
    return torch.cat([theta[:, :1], torch.minimum(theta[:, 1:2], theta[:, :1]), theta[:, 2:]], dim=1)


def refine(table: FingerprintTable, params: torch.Tensor, x: torch.Tensor,
           iterations: int = DEFAULT_ITERATIONS, n_free: int | None = None, cells: Cells | None = None
           ) -> torch.Tensor:
    """Parameters (N, P) in their units, refined for complex coefficients x (N, K) in the table's basis;
    n_free: only the first n_free parameters move (B1 stays where a B1 map put it), default all (or those
    `cells` move along). cells: the table nodes gathered for these voxels (Cells(n_free)), kept for the
    caller's next lookup."""
    n_free = cells.n_moving if n_free is None and cells is not None else n_free
    cells = Cells(n_free) if cells is None else cells
    n_axes = len(table.shape)
    n_free = n_axes if n_free is None else n_free
    theta = params[:, :n_axes].to(torch.float32).clone()
    theta[:, :2] = torch.log(theta[:, :2].clamp_min(1e-30))
    lo = table.lo + table.step  # the range proper, inside the padding nodes
    hi = table.lo + table.step * (torch.tensor(table.shape, dtype=torch.float32) - 2)
    theta = _feasible(theta, lo, hi)
    angle = 0.5 * torch.angle((x * x).sum(dim=1, keepdim=True))
    y = (x * torch.exp(-1j * angle)).real
    g = _unit(table, theta, cells)
    y = y * torch.where((y * g).sum(dim=1, keepdim=True) >= 0, 1.0, -1.0)
    y = y / torch.linalg.vector_norm(y, dim=1, keepdim=True).clamp_min(1e-30)
    fit = (y * g).sum(dim=1)
    damping = torch.full((x.shape[0],), 1e-3)
    for _ in range(iterations):
        jacobian = _unit_jacobian(table, theta, cells, n_free)  # (N, K, P free)
        jtj = jacobian.transpose(1, 2) @ jacobian
        scale = jtj.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)
        system = jtj + (damping * scale)[:, None, None] * torch.eye(n_free)
        step = torch.zeros_like(theta)
        step[:, :n_free] = torch.linalg.solve(system, (jacobian.transpose(1, 2) @ (y - g)[:, :, None]))[:, :, 0]
        trial = _feasible(theta + step, lo, hi)
        g_trial = _unit(table, trial, cells)
        fit_trial = (y * g_trial).sum(dim=1)
        better = fit_trial > fit
        theta = torch.where(better[:, None], trial, theta)
        g = torch.where(better[:, None], g_trial, g)
        fit = torch.where(better, fit_trial, fit)
        damping = torch.where(better, damping / 3, damping * 4)
    out = params.clone().to(torch.float32)
    out[:, :2] = torch.exp(theta[:, :2])
    if n_axes > 2:
        out[:, 2:n_axes] = theta[:, 2:n_axes]
    return out
