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

    def lookup(self, params: torch.Tensor, cells: Cells | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Interpolated coefficients (N, K) and norms (N,) at params (N, P): T1, T2 in ms (and B1),
        clamped to the table's range (its nodes without the padding node at each end). cells: the nodes
        gathered by the previous lookup of the same N voxels, reused where a voxel stayed in its cell."""
        coefficients, norms, _ = self._interpolate(params, False, cells)
        return coefficients, norms

    def lookup_gradient(self, params: torch.Tensor, cells: Cells | None = None, n_axes: int | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Interpolated coefficients (N, K) and their derivatives (N, K, n_axes) with respect to the first
        n_axes table coordinates (log T1, log T2 (, B1); default all, or all that `cells` move along), from
        the same gather (zero where params are clamped)."""
        coefficients, _, gradient = self._interpolate(params, True, cells, n_axes)
        return coefficients, gradient

    def _nodes(self, start: torch.Tensor, fixed_weights: torch.Tensor, cells: Cells | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The nodes (N, 4^F, K) and norms (N, 4^F) of the cells whose first tap is `start`, summed over the
        taps of the fixed trailing axes with fixed_weights (N, 4^(P-F)); from `cells` where they are current."""
        if cells is None or cells.start is None or cells.start.shape != start.shape:
            nodes, norms = self._gather(start, fixed_weights)
            if cells is not None:
                cells.start, cells.fixed_weights, cells.nodes, cells.norms = start, fixed_weights, nodes, norms
            return nodes, norms
        moved = torch.nonzero((start != cells.start) | (fixed_weights != cells.fixed_weights).any(dim=1)).squeeze(1)
        if moved.numel():
            cells.nodes[moved], cells.norms[moved] = self._gather(start[moved], fixed_weights[moved])
            cells.start[moved], cells.fixed_weights[moved] = start[moved], fixed_weights[moved]
        return cells.nodes, cells.norms

    def _gather(self, start: torch.Tensor, fixed_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_fixed = fixed_weights.shape[1]
        taps = self._tap_offsets().view(-1, n_fixed)  # (4^F, 4^(P-F)): the fixed axes' taps are the fastest
        if n_fixed == 1:
            flat = start[:, None] + taps[:, 0]
            return self.coefficients[flat], self.norms[flat]
        nodes = norms = 0
        for j in range(n_fixed):  # one fixed tap at a time: never 4^P nodes per voxel in memory
            flat = start[:, None] + taps[:, j]
            w = fixed_weights[:, j, None]
            nodes, norms = nodes + w[:, :, None] * self.coefficients[flat], norms + w * self.norms[flat]
        return nodes, norms

    def _strides(self) -> list[int]:
        return [int(np.prod(self.shape[p + 1 :])) for p in range(len(self.shape))]

    def _tap_offsets(self) -> torch.Tensor:
        """Flat offsets (4^P,) of a cell's taps from its first, axis 0 slowest (the weights' order)."""
        offsets = torch.zeros(1, dtype=torch.long)
        for stride in self._strides():
            offsets = (offsets[:, None] + stride * torch.arange(4)[None, :]).reshape(-1)
        return offsets

    def _interpolate(self, params: torch.Tensor, gradient: bool, cells: Cells | None = None,
                     n_gradient: int | None = None):
        n_axes = len(self.shape)
        g = params[:, :n_axes].to(torch.float32).clone()
        g[:, :2] = torch.log(g[:, :2].clamp_min(1e-30))
        pos = (g - self.lo) / self.step
        last = torch.tensor(self.shape, dtype=torch.float32) - 2  # the last node inside the range
        inside = (pos >= 1.0) & (pos <= last)
        pos = torch.minimum(pos.clamp_min(1.0), last)
        base = torch.minimum(pos.floor(), last - 1)  # nodes base-1 .. base+2 all exist (padding)
        axis_weights = _catmull_rom(pos - base)  # (N, P, 4)
        start = ((base.long() - 1) * torch.tensor(self._strides())).sum(dim=1)  # flat index of the first tap
        n_moving = n_axes if cells is None or cells.n_moving is None else min(cells.n_moving, n_axes)
        fixed_weights = torch.ones(params.shape[0], 1)
        for p in range(n_moving, n_axes):  # the trailing axes that stay put are summed into the cell's nodes
            fixed_weights = (fixed_weights[:, :, None] * axis_weights[:, p, None, :]).reshape(
                params.shape[0], 4 ** (p - n_moving + 1))
        n_gradient = (n_moving if n_gradient is None else n_gradient) if gradient else 0
        if n_gradient > n_moving:
            raise ValueError(f"a derivative along {n_gradient} axes from cells that move along {n_moving}")
        factors = axis_weights[:, None, :n_moving].repeat(1, 1 + n_gradient, 1, 1)  # (N, rows, F, 4): row 0 the
        if n_gradient:  # value, row 1 + q its derivative along axis q (axis q's weights replaced by their slopes)
            slopes = _catmull_rom_slope(pos - base) / self.step[None, :, None]  # d weight / d coordinate
            for q in range(n_gradient):
                factors[:, 1 + q, q] = slopes[:, q]
        weights = factors[:, :, 0]
        for p in range(1, n_moving):  # tensor product of the per-axis taps' weights, in _tap_offsets' order
            weights = (weights[:, :, :, None] * factors[:, :, p, None, :]).reshape(*factors.shape[:2], 4 ** (p + 1))
        nodes, node_norms = self._nodes(start, fixed_weights, cells)  # (N, 4^F, K), (N, 4^F)
        rows = torch.bmm(weights, nodes)  # (N, rows, K): one batched product for the value and its derivatives
        norms = (weights[:, 0] * node_norms).sum(dim=1)
        if not gradient:
            return rows[:, 0], norms, None
        return rows[:, 0], norms, rows[:, 1:].transpose(1, 2) * inside[:, None, :n_gradient]


class Cells:
    """Per voxel, the nodes of the cell its last lookup used (start: flat index of the cell's first tap).
    Refinement's steps mostly stay inside a cell, so passing one Cells to each lookup of the same voxels
    gathers only those that moved: the gather (4^P nodes of K values per voxel) is most of a lookup's cost.
    n_moving: lookups move along the first n_moving axes only (default all); the others (B1 where a B1 map
    gives it) are interpolated once into the stored nodes, 4^n_moving per voxel, as in a table without them."""

    def __init__(self, n_moving: int | None = None) -> None:
        self.n_moving = n_moving
        self.fixed_weights: torch.Tensor | None = None
        self.start: torch.Tensor | None = None
        self.nodes: torch.Tensor | None = None
        self.norms: torch.Tensor | None = None


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
