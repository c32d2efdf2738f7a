"""Dictionary matching with a known B1 per voxel: each voxel is matched in the B1 slice of a B1-axis dictionary,
not over the whole dictionary.

The atoms at a voxel's B1 b are interpolated linearly between the two neighbouring B1 slices of the grid (b_k
<= b <= b_k+1, the same T1/T2 atoms in every slice). Voxels are grouped by B1 rounded to B1_GROUP_STEP (0.005:
a B1 error <= 0.0025, a T2 error of ~0.25 % at most at FISP's ~1 %/% sensitivity), and each group is matched
against its own interpolated T1 x T2 slice with mrf_core.mapping.matching.match: a voxel meets as many atoms
as without a B1 axis, but a slice makes ~80 small matches ("auto" search is exhaustive here: a group's few
voxels do not pay back the pruned search's cluster set-up; 3-4x the B1-free pruned match on the 256^2 NIST slice).
Linear interpolation error, measured on the Jiang schedule at the midpoint between slices 0.05 apart: 2-3e-4
of the fingerprint norm (4e-3 at T1/T2 1500/500 ms, 7e-3 at 2480/581 ms, 1.3e-2 at 1989/1465 ms and 2.9e-2
at 4000/2000 ms: long-T2 fingerprints do not change smoothly with B1), against ~1e-2 for the nearest slice.
B1 outside the
grid's axis is clamped to its ends (counted).

Sub-grid T1/T2 (`subgrid`, on by default): with B1 known, the score (squared correlation) around the best atom
is a smooth peak in (log T1, log T2); a parabola through the best atom and its two neighbours along each axis
puts the maximum at a fractional grid position (at most half a step from the atom), and T1/T2 are read off the
axes there (log-linear between nodes). This removes most of the grid's quantisation (up to half a 5 % step),
as the network mapper's refinement does for its output.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mrf_core.mapping.matching import MatchResult, match
from mrf_core.physics.dictionary import Dictionary, DictionaryError

B1_GROUP_STEP = 0.005


def b1_slices(dictionary: Dictionary) -> np.ndarray:
    """Atom indices (n_b1, n_t1t2): row k is the B1 slice k, its atoms in the same T1/T2 order in every row."""
    index = np.asarray(dictionary.grid_index)
    n_b1 = dictionary.grid.b1_axis.size
    order = np.lexsort((index[:, 1], index[:, 0], index[:, 2]))
    if order.size % n_b1:
        raise DictionaryError(f"dictionary has {order.size} atoms, not a multiple of its {n_b1} B1 values")
    slices = order.reshape(n_b1, -1)
    if np.any(index[slices, 2] != np.arange(n_b1)[:, None]) or np.any(index[slices, :2] != index[slices[:1], :2]):
        raise DictionaryError("the dictionary's B1 slices hold different T1/T2 atoms: it cannot be matched by B1")
    return slices


def clamp_b1(b1: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, int]:
    """B1 values (float64) clamped to [lo, hi], and how many lay outside it (beyond rounding of its ends)."""
    b1 = np.asarray(b1, dtype=np.float64)
    return np.clip(b1, lo, hi), int(np.count_nonzero((b1 < lo - 1e-9) | (b1 > hi + 1e-9)))


def match_at_b1(dictionary: Dictionary, data: np.ndarray, b1: np.ndarray, search: str = "auto",
                device: str = "cpu", subgrid: bool = True) -> tuple[MatchResult, int]:
    """Match voxels `data` (V, rank) in the dictionary's subspace, voxel v in the B1 slice at b1[v].
    Returns the MatchResult (b1 = the B1 used, after rounding and clamping; T1/T2 between grid nodes with
    `subgrid`) and the number of voxels whose B1 lay outside the dictionary's B1 axis (clamped)."""
    axis = dictionary.grid.b1_axis
    if axis.size < 2:
        raise DictionaryError("matching at a given B1 needs a dictionary with a B1 axis (b1_values: two or more)")
    slices = b1_slices(dictionary)
    b1, n_clamped = clamp_b1(np.reshape(b1, -1), axis[0], axis[-1])
    groups = np.clip(np.round(b1 / B1_GROUP_STEP) * B1_GROUP_STEP, axis[0], axis[-1])
    n = b1.size
    out = MatchResult(t1_ms=np.full(n, np.nan, np.float32), t2_ms=np.full(n, np.nan, np.float32),
                      b1=np.full(n, np.nan, np.float32), pd=np.zeros(n, np.complex64),
                      score=np.zeros(n, np.float32), atom_index=np.full(n, -1, np.int64))
    first = slices[0]
    for value in np.unique(groups):
        ids = np.flatnonzero(groups == value)
        k = int(np.clip(np.searchsorted(axis, value, side="right") - 1, 0, axis.size - 2))
        w = float(np.clip((value - axis[k]) / (axis[k + 1] - axis[k]), 0.0, 1.0))
        atoms = (1 - w) * dictionary.compressed[slices[k]] + w * dictionary.compressed[slices[k + 1]]
        grid_index = dictionary.grid_index[first].copy()
        grid_index[:, 2] = 0
        part = replace(dictionary, grid=replace(dictionary.grid, b1_axis=np.array([value])),
                       t1_ms=dictionary.t1_ms[first], t2_ms=dictionary.t2_ms[first],
                       b1=np.full(first.size, value, np.float32), grid_index=grid_index,
                       compressed=atoms.astype(np.float32), fingerprints=None)
        result = match(part, data[ids], search="exhaustive" if search == "auto" else search, device=device)
        if subgrid:
            result.t1_ms, result.t2_ms = _subgrid(part, data[ids], result.atom_index)
        for key in ("t1_ms", "t2_ms", "b1", "pd", "score"):
            getattr(out, key)[ids] = getattr(result, key)
    return out, n_clamped


def _subgrid(part: Dictionary, x: np.ndarray, best: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """T1, T2 (V,) at the parabolic maximum of the score around each voxel's best atom (module docstring);
    voxels without a best atom (-1) stay NaN, and an axis with a missing neighbour keeps the atom's value."""
    atoms = part.compressed.astype(np.float64)
    unit = atoms / np.maximum(np.linalg.norm(atoms, axis=1, keepdims=True), 1e-30)
    index = part.grid_index[:, :2]
    axes = (part.grid.t1_axis_ms, part.grid.t2_axis_ms)
    lookup = np.full((axes[0].size + 2, axes[1].size + 2), -1)  # padded: neighbours off the grid are -1
    lookup[index[:, 0] + 1, index[:, 1] + 1] = np.arange(index.shape[0])
    matched = best >= 0
    at = index[best.clip(0)]

    def score(atom: np.ndarray) -> np.ndarray:
        d = unit[atom.clip(0)]
        s = np.einsum("vk,vk->v", d, x.real) ** 2 + np.einsum("vk,vk->v", d, x.imag) ** 2
        return np.where(atom >= 0, s, np.nan)

    centre = score(best)
    values = []
    for axis, step in ((0, np.array([1, 0])), (1, np.array([0, 1]))):
        below = score(lookup[tuple((at - step + 1).T)])
        above = score(lookup[tuple((at + step + 1).T)])
        curvature = below - 2 * centre + above
        with np.errstate(invalid="ignore", divide="ignore"):
            shift = np.where(np.isfinite(curvature) & (curvature < 0), (below - above) / (2 * curvature), 0.0)
        position = at[:, axis] + np.clip(np.nan_to_num(shift), -0.5, 0.5)
        log_axis = np.log(axes[axis])
        values.append(np.where(matched, np.exp(np.interp(position, np.arange(log_axis.size), log_axis)), np.nan))
    return values[0].astype(np.float32), values[1].astype(np.float32)
