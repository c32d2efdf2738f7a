"""Precomputed fingerprints for PD and match quality at a network's continuous T1/T2 (and B1).

PD is the projection of the measured signal on the simulated fingerprint of the predicted parameters,
and the score is their normalised correlation. Simulating the EPG per voxel at inline time (65k voxels x
1000 TRs, ~7 s at 50 states on 2 cores) would eat a quarter of the chain's budget, so the archive carries
a table of the fingerprints' subspace coefficients on a regular grid over log T1, log T2 (and B1), and a
voxel's fingerprint is interpolated from it with separable Catmull-Rom cubics (4 nodes per axis).

Error (tests/test_mapping_training.py checks it against exact EPG at random points;
benchmarks/bench_mapping.py measures it): with 129 nodes per log axis over the default ranges the
interpolated coefficients are within 2.7e-6 (relative; median 5e-7) of the EPG ones at 4000 random tissues,
and PD within 2.7e-6. Edge cells are as accurate as inner ones thanks to one padding node beyond each end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mrf_core.mapping.parameters import MappingConfigError, ParameterSpace
from mrf_core.physics.dictionary import atom_fingerprints
from mrf_core.physics.sequence import FispSchedule
from mrf_core.physics.slice_profile import SliceProfile
from mrf_core.physics.temporal_basis import TemporalBasis

DEFAULT_TABLE_NODES = 129
DEFAULT_B1_NODES = 17


@dataclass
class FingerprintTable:
    """Subspace coefficients (prod(shape), K) and time-domain norms (prod(shape),) of fingerprints on a
    regular grid: axis p runs from lo[p] with step[p] in log T1, log T2 (and linear B1), one node beyond
    the parameter range at each end."""

    coefficients: torch.Tensor
    norms: torch.Tensor
    lo: torch.Tensor
    step: torch.Tensor
    shape: tuple[int, ...]

    @classmethod
    def build(cls, schedule: FispSchedule, basis: TemporalBasis, space: ParameterSpace,
              n_nodes: int = DEFAULT_TABLE_NODES, n_b1_nodes: int = DEFAULT_B1_NODES, n_states: int = 50,
              device: str | torch.device | None = None, slice_profile: SliceProfile | None = None
              ) -> FingerprintTable:
        """Simulate the grid's fingerprints (T2 clipped to the physical bound 2 T1; with the slice profile
        when given) and project them."""
        axes = [_padded_axis(np.log(lo), np.log(hi), n_nodes) for lo, hi in (space.t1_range_ms, space.t2_range_ms)]
        if space.b1_range is not None:
            axes.append(_padded_axis(*space.b1_range, n_b1_nodes))
        grids = np.meshgrid(*axes, indexing="ij")
        t1 = np.exp(grids[0]).ravel()
        t2 = np.minimum(np.exp(grids[1]).ravel(), 2 * t1)
        b1 = grids[2].ravel() if len(axes) == 3 else np.ones_like(t1)
        fps = atom_fingerprints(schedule, t1, t2, b1, n_states, slice_profile, device)
        coefficients = basis.project_real(fps)
        return cls(
            coefficients=torch.as_tensor(coefficients), norms=torch.as_tensor(np.linalg.norm(fps, axis=1)),
            lo=torch.tensor([a[0] for a in axes], dtype=torch.float32),
            step=torch.tensor([a[1] - a[0] for a in axes], dtype=torch.float32),
            shape=tuple(a.size for a in axes),
        )

    def lookup(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interpolated coefficients (N, K) and norms (N,) at params (N, P): T1, T2 in ms (and B1),
        clamped to the table's range (its nodes without the padding node at each end)."""
        coefficients, norms, _ = self._interpolate(params, gradient=False)
        return coefficients, norms

    def lookup_gradient(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interpolated coefficients (N, K) and their derivatives (N, K, P) with respect to the table
        coordinates (log T1, log T2 (, B1)), from the same gather (zero where params are clamped)."""
        coefficients, _, gradient = self._interpolate(params, gradient=True)
        return coefficients, gradient

    def _interpolate(self, params: torch.Tensor, gradient: bool):
        n_axes = len(self.shape)
        g = params[:, :n_axes].to(torch.float32).clone()
        g[:, :2] = torch.log(g[:, :2].clamp_min(1e-30))
        pos = (g - self.lo) / self.step
        last = torch.tensor(self.shape, dtype=torch.float32) - 2  # the last node inside the range
        inside = (pos >= 1.0) & (pos <= last)
        pos = torch.minimum(pos.clamp_min(1.0), last)
        base = torch.minimum(pos.floor(), last - 1)  # nodes base-1 .. base+2 all exist (padding)
        axis_weights = _catmull_rom(pos - base)  # (N, P, 4)
        strides = [int(np.prod(self.shape[p + 1 :])) for p in range(n_axes)]
        start = ((base.long() - 1) * torch.tensor(strides)).sum(dim=1)  # flat index of the first tap
        offsets, weights = torch.zeros(1, dtype=torch.long), torch.ones(params.shape[0], 1)
        for p in range(n_axes):  # tensor product of the per-axis taps: 4^P flat offsets and weights
            offsets = (offsets[:, None] + strides[p] * torch.arange(4)[None, :]).reshape(-1)
            weights = (weights[:, :, None] * axis_weights[:, p, None, :]).reshape(params.shape[0], -1)
        flat = start[:, None] + offsets[None, :]  # (N, 4^P)
        nodes = self.coefficients[flat]  # (N, 4^P, K)
        coefficients = torch.bmm(weights[:, None, :], nodes).squeeze(1)
        norms = (weights * self.norms[flat]).sum(dim=1)
        if not gradient:
            return coefficients, norms, None
        slopes = _catmull_rom_slope(pos - base) / self.step[None, :, None]  # d weight / d coordinate
        columns = []
        for q in range(n_axes):  # the tensor product with axis q's weights replaced by their slopes
            w = torch.ones(params.shape[0], 1)
            for p in range(n_axes):
                factor = slopes[:, p] if p == q else axis_weights[:, p]
                w = (w[:, :, None] * factor[:, None, :]).reshape(params.shape[0], -1)
            columns.append(torch.bmm(w[:, None, :], nodes).squeeze(1) * inside[:, q, None])
        return coefficients, norms, torch.stack(columns, dim=2)


def _padded_axis(lo: float, hi: float, n_nodes: int) -> np.ndarray:
    """n_nodes from lo to hi plus one beyond each end, so that every cubic inside [lo, hi] has its 4 nodes."""
    if n_nodes < 2:
        raise MappingConfigError(f"a table axis needs >= 2 nodes, got {n_nodes}")
    step = (hi - lo) / (n_nodes - 1)
    return lo + step * np.arange(-1, n_nodes + 1)


def _catmull_rom_slope(t: torch.Tensor) -> torch.Tensor:
    """d/dt of the _catmull_rom weights."""
    t2 = t * t
    return torch.stack([(-3 * t2 + 4 * t - 1) / 2, (9 * t2 - 10 * t) / 2, (-9 * t2 + 8 * t + 1) / 2,
                        (3 * t2 - 2 * t) / 2], dim=-1)


def _catmull_rom(t: torch.Tensor) -> torch.Tensor:
    """Weights (..., 4) of nodes i-1, i, i+1, i+2 at fraction t of the way from node i to i+1."""
    t2, t3 = t * t, t * t * t
    return torch.stack([(-t3 + 2 * t2 - t) / 2, (3 * t3 - 5 * t2 + 2) / 2, (-3 * t3 + 4 * t2 + t) / 2,
                        (t3 - t2) / 2], dim=-1)
