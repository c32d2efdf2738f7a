"""Dictionary matching: the best atom of each voxel by normalised inner product, chunked and memory-bounded.

Atoms are real (signal = signal_phase * fingerprint), so for a complex voxel x the score of a normalised
atom d is |d^T x| = sqrt((d^T Re x)^2 + (d^T Im x)^2): two real matrix products, half the work of a
complex one. Matching runs in the time domain (x: time courses) or in the SVD subspace (x: basis
coefficients, McGivney 2014).

Searches:
- "exhaustive": every atom, in blocks of voxels x atoms sized by `max_memory_mb`.
- "pruned": the same best atom (up to float rounding between near-equal scores), found by bounding
  clusters of neighbouring atoms (see _ClusterSearch) and evaluating only the clusters that can win.
  Its cost falls with noise: clean voxels leave few clusters standing. Its agreement with "exhaustive"
  is measured by benchmarks/bench_matching.py.
- "auto": the cheaper of the two by a cost model (see _choose_search), so never much slower than the
  faster one: exhaustive costs atoms x features per voxel; pruned costs the cluster centres plus the
  members of the clusters its bound keeps, counted on a sample of the voxels. The bound is loose in the
  time domain (noise and aliasing orthogonal to every atom), so there exhaustive usually wins.

Output per voxel: T1, T2, B1 of the best atom, the complex PD (d^H x / ||d||^2 of the unnormalised
atom), the score (|d^H x| / (||d|| ||x||), in [0, 1]) and the atom index. Voxels outside `mask`, with a
non-finite sample or zero norm are not matched: T1 = T2 = B1 = NaN, PD = 0, score = 0, atom_index = -1.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import torch

from mrf_core.physics.dictionary import Dictionary, DictionaryError
from mrf_core.physics.epg import default_device
from mrf_core.progress import bar

log = logging.getLogger(__name__)

DEFAULT_MAX_MEMORY_MB = 1024
DEFAULT_STRIDE = 6
_ATOM_BLOCK = 8192  # atoms per block in the exhaustive search: scores of a voxel block stay in cache
_PAIR_BYTES = 48 * 2**20  # gathered float64 candidate atoms evaluated at once in the pruned search
# Cost of scoring one gathered candidate feature (gather, float64 convert and product) in units of one
# float32 GEMM multiply-add, measured side by side (bench_matching.py --auto, README): ~12 while the atom
# table stays in cache (the subspace: 10 features), ~200 when candidates come from memory (the time domain:
# 4 kB per atom). The table fits the cache below _CACHE_BYTES (a typical last-level cache share).
_GATHER_COST = {"cached": 12.0, "memory": 200.0}
_CACHE_BYTES = 8 * 2**20
_AUTO_SAMPLE = 256  # voxels on which auto counts the clusters the bound keeps


@dataclass
class MatchResult:
    """Per-voxel matching output, in the input's spatial shape (see the module docstring)."""

    t1_ms: np.ndarray
    t2_ms: np.ndarray
    b1: np.ndarray
    pd: np.ndarray
    score: np.ndarray
    atom_index: np.ndarray

    @property
    def matched(self) -> np.ndarray:
        """Voxels that got parameters (by matching or by a network, whose atom_index is -1)."""
        return np.isfinite(self.t1_ms)


class _Atoms:
    """The dictionary's real atoms in one domain (subspace or time), normalised, on a device."""

    def __init__(self, dictionary: Dictionary, domain: str, device: torch.device):
        if domain == "subspace":
            atoms = dictionary.compressed
        elif domain == "time":
            if dictionary.fingerprints is None:
                raise DictionaryError("time-domain matching needs the fingerprints; this dictionary is compressed-only")
            atoms = dictionary.fingerprints
        else:
            raise ValueError(f"domain = {domain!r} must be 'subspace' or 'time'")
        atoms = torch.as_tensor(atoms, device=device)
        self.norms = torch.linalg.vector_norm(atoms, dim=1)
        self.unit = atoms / self.norms.clamp_min(torch.finfo(torch.float32).tiny)[:, None]
        self.dictionary = dictionary
        self.device = device


def _best_exhaustive(unit: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index into `unit` (A, F) of the best atom for each voxel of x (V, F) complex, and |d^T x|^2."""
    n_vox = x.shape[0]
    atom_block = min(unit.shape[0], _ATOM_BLOCK)
    best_sq = torch.full((n_vox,), -1.0, device=x.device)
    best = torch.zeros(n_vox, dtype=torch.long, device=x.device)
    stacked = torch.cat([x.real, x.imag])  # (2V, F)
    for lo in range(0, unit.shape[0], atom_block):
        block = unit[lo : lo + atom_block]
        products = stacked @ block.T  # (2V, a)
        products.square_()
        squares = products[:n_vox].add_(products[n_vox:])
        value, index = squares.max(dim=1)
        better = value > best_sq
        best_sq = torch.where(better, value, best_sq)
        best = torch.where(better, index + lo, best)
    return best, best_sq.double()


def _scores_of(unit: torch.Tensor, candidates: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """|d^T x|^2 in float64 for each voxel's candidate atoms (V, C) (-1 = none, scored -1). Float64 makes
    the choice between near-equal candidates exact rather than a matter of float32 rounding."""
    gathered = unit[candidates.clamp_min(0)].double()  # (V, C, F)
    re = torch.bmm(gathered, x.real.double().unsqueeze(2)).squeeze(2)
    im = torch.bmm(gathered, x.imag.double().unsqueeze(2)).squeeze(2)
    return torch.where(candidates >= 0, re.square() + im.square(), torch.full_like(re, -1.0))


def _cluster_of(dictionary: Dictionary, stride: int) -> torch.Tensor:
    """Each atom's cluster: its grid cell of stride x stride in T1 and T2, one B1, numbered in the cells'
    lexicographic order (one integer key per cell: torch.unique over rows took 0.17 s for 114,400 atoms)."""
    index = torch.as_tensor(dictionary.grid_index, dtype=torch.long)
    cell = torch.stack([index[:, 0] // stride, index[:, 1] // stride, index[:, 2]], dim=1)
    extent = cell.max(dim=0).values + 1
    key = (cell[:, 0] * extent[1] + cell[:, 1]) * extent[2] + cell[:, 2]
    return torch.unique(key, return_inverse=True)[1]


def _pruned_cost(n_centres: int, n_members: int, unit: torch.Tensor, kept: float) -> float:
    """Model cost per voxel of the pruned search (GEMM multiply-add units; module constants): the centres,
    then the seed's cluster and the `kept` clusters whose bound reaches its score (at least the seed's own:
    its bound holds its best member)."""
    gather = _GATHER_COST["cached" if unit.numel() * 4 <= _CACHE_BYTES else "memory"]
    return n_centres * unit.shape[1] + (1 + kept) * n_members * unit.shape[1] * gather


class _ClusterSearch:
    """Exact search with pruning: the unit atoms of each grid cell (stride x stride in T1 and T2, one B1)
    form a cluster with unit centre c (the members' normalised mean). A member is d = a c + e with a <= 1,
    e orthogonal to c and |e| <= rho (rho = the largest sqrt(1 - (d.c)^2) of the cluster), so for a voxel x
    |d^T x| <= |c^T x| + rho sqrt(|x|^2 - |c^T x|^2). Only clusters whose bound reaches the best score found
    so far (the members of the best-centred cluster) can hold the winner, and only those are evaluated."""

    def __init__(self, atoms: _Atoms, cluster_of: torch.Tensor):
        order = torch.argsort(cluster_of, stable=True)
        counts = torch.bincount(cluster_of)
        starts = torch.cumsum(counts, 0) - counts
        rank_in_cluster = torch.arange(order.numel()) - starts[cluster_of[order]]
        members = torch.full((counts.numel(), int(counts.max())), -1, dtype=torch.long)
        members[cluster_of[order], rank_in_cluster] = order
        device = atoms.device
        self.members = members.to(device)
        cluster_of = cluster_of.to(device)
        centres = torch.zeros(counts.numel(), atoms.unit.shape[1], device=device)
        centres.index_add_(0, cluster_of, atoms.unit)
        self.centres = centres / torch.linalg.vector_norm(centres, dim=1, keepdim=True)
        along = torch.cat([(atoms.unit[lo : lo + _ATOM_BLOCK] * self.centres[cluster_of[lo : lo + _ATOM_BLOCK]]).sum(1)
                           for lo in range(0, atoms.unit.shape[0], _ATOM_BLOCK)])  # no atoms-sized temporary
        if bool((along <= 0).any()):
            raise DictionaryError("a grid cell holds atoms pointing away from each other; use a smaller stride")
        across = (1 - along.square()).clamp_min(0).sqrt()
        self.rho = torch.zeros(counts.numel(), device=device).scatter_reduce_(0, cluster_of, across, "amax")
        self.unit = atoms.unit

    def _seed_and_bound(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The seed's best atom and |d^T x|^2 per voxel, and the (V, C) mask of clusters that can beat it."""
        n_vox = x.shape[0]
        products = (torch.cat([x.real, x.imag]) @ self.centres.T).square_()
        centre_score = products[:n_vox].add_(products[n_vox:]).sqrt_()  # |c^T x|, (V, C)
        seed_atoms = self.members[centre_score.argmax(dim=1)]  # (V, M)
        seed_sq = _scores_of(self.unit, seed_atoms, x)
        best_sq, pos = seed_sq.max(dim=1)
        best = seed_atoms.gather(1, pos[:, None]).squeeze(1)
        # a cluster can hold a better atom only if its bound reaches the seed's score (small float margin)
        norm_sq = x.real.square().sum(1) + x.imag.square().sum(1)
        across = (norm_sq[:, None] - centre_score.square()).clamp_min_(0).sqrt_()
        bound = centre_score.add_(across.mul_(self.rho[None]))
        return best, best_sq, bound.mul_(1 + 1e-5) >= best_sq.sqrt().float()[:, None]

    def cost_per_voxel(self, sample: torch.Tensor) -> float:
        """Model cost of best() per voxel (GEMM multiply-add units; module constants), from a sample."""
        kept = float(self._seed_and_bound(sample)[2].sum()) / max(1, sample.shape[0])
        return _pruned_cost(*self.members.shape, self.unit, kept)

    def bytes_per_voxel(self) -> int:
        """Working memory of best() per voxel: centre scores and the seed's gathered float64 atoms."""
        return 4 * 3 * self.centres.shape[0] + 8 * 2 * self.members.shape[1] * self.unit.shape[1]

    def best(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        best, best_sq, keep = self._seed_and_bound(x)
        voxel, cluster = torch.nonzero(keep, as_tuple=True)
        pair_block = max(1, _PAIR_BYTES // (8 * self.members.shape[1] * self.unit.shape[1]))
        for lo in range(0, voxel.numel(), pair_block):
            v, c = voxel[lo : lo + pair_block], cluster[lo : lo + pair_block]
            candidates = self.members[c]
            value, where = _scores_of(self.unit, candidates, x[v]).max(dim=1)
            atom = candidates.gather(1, where[:, None]).squeeze(1)
            best_sq = best_sq.scatter_reduce(0, v, value, "amax")
            winner = value >= best_sq[v]
            best[v[winner]] = atom[winner]
        return best, best_sq


def _voxel_block(bytes_per_voxel: int, max_memory_mb: float) -> int:
    """Voxels per block so that the block's working arrays fit the budget."""
    return int(max(64, min(65536, max_memory_mb * 2**20 // bytes_per_voxel)))


def _choose_search(atoms: _Atoms, stride: int, sample: torch.Tensor) -> tuple[str, _ClusterSearch | None]:
    """auto: "exhaustive" or "pruned" (with its searcher), whichever the cost model finds cheaper. The
    sample is a fixed choice of voxels, so the choice (and so the result) is the same run after run."""
    exhaustive = float(atoms.unit.shape[0] * atoms.unit.shape[1])
    if sample.shape[0] == 0:
        return "exhaustive", None
    cluster_of = _cluster_of(atoms.dictionary, stride)
    counts = torch.bincount(cluster_of)
    floor = _pruned_cost(counts.numel(), int(counts.max()), atoms.unit, kept=1.0)
    if floor >= exhaustive:  # decided without building the clusters (in the time domain, usually)
        log.info("auto search: exhaustive (model cost per voxel %.3g, pruned at least %.3g)", exhaustive, floor)
        return "exhaustive", None
    try:
        searcher = _ClusterSearch(atoms, cluster_of)
    except DictionaryError as exc:  # a grid the clusters do not suit: exhaustive is exact anyway
        log.info("auto search: exhaustive (%s)", exc)
        return "exhaustive", None
    pruned = searcher.cost_per_voxel(sample)
    log.info("auto search: model cost per voxel exhaustive %.3g, pruned %.3g", exhaustive, pruned)
    return ("pruned", searcher) if pruned < exhaustive else ("exhaustive", None)


@torch.no_grad()
def match(
    dictionary: Dictionary,
    data,
    domain: str = "subspace",
    mask=None,
    search: str = "auto",
    max_memory_mb: float = DEFAULT_MAX_MEMORY_MB,
    stride: int = DEFAULT_STRIDE,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> MatchResult:
    """Match voxels `data` (..., F) against the dictionary: F = basis rank for domain "subspace" (data are
    coefficients from dictionary.basis.project), F = n_timepoints for "time". numpy or torch input."""
    device = torch.device(device) if device is not None else default_device()
    x = torch.as_tensor(data).to(device=device, dtype=torch.complex64)
    spatial = tuple(x.shape[:-1])
    n_features = x.shape[-1] if x.ndim else 0
    expected = dictionary.basis.rank if domain == "subspace" else dictionary.schedule.n_timepoints
    if x.ndim == 0 or n_features != expected:
        raise DictionaryError(
            f"{domain} matching needs data with {expected} values on the last axis; got shape {tuple(x.shape)}"
        )
    x = x.reshape(-1, n_features)
    if domain == "time":  # bring the signal into the atoms' real frame
        x = x * complex(np.conj(dictionary.signal_phase))
    norms = torch.linalg.vector_norm(x, dim=1)
    valid = torch.isfinite(x).all(dim=1) & (norms > 0)
    if mask is not None:
        mask_t = torch.as_tensor(np.asarray(mask, dtype=bool), device=device)
        if tuple(mask_t.shape) != spatial:
            raise DictionaryError(f"mask has shape {tuple(mask_t.shape)} but the data's voxels are {spatial}")
        valid &= mask_t.reshape(-1)
    atoms = _Atoms(dictionary, domain, device)
    valid_ids = torch.nonzero(valid).flatten()
    searcher = None
    if search == "auto":
        sample = valid_ids[torch.linspace(0, valid_ids.numel() - 1, min(_AUTO_SAMPLE, valid_ids.numel()),
                                            device=device).long()]
        search, searcher = _choose_search(atoms, stride, x[sample])
    if search == "pruned":
        searcher = searcher or _ClusterSearch(atoms, _cluster_of(atoms.dictionary, stride))
        bytes_per_voxel = searcher.bytes_per_voxel() + 16 * n_features
        best_of = searcher.best
    elif search == "exhaustive":
        bytes_per_voxel = 4 * (3 * min(atoms.unit.shape[0], _ATOM_BLOCK) + 4 * n_features)
        best_of = functools.partial(_best_exhaustive, atoms.unit)
    else:
        raise ValueError(f"search = {search!r} must be 'auto', 'exhaustive' or 'pruned'")

    n_vox = x.shape[0]
    atom_index = torch.full((n_vox,), -1, dtype=torch.long, device=device)
    best_sq = torch.zeros(n_vox, dtype=torch.float64, device=device)
    if valid_ids.numel() == 0:
        log.warning("no voxel to match: all %d are masked, zero or non-finite", n_vox)
    block = _voxel_block(bytes_per_voxel, max_memory_mb)
    for lo in bar(range(0, valid_ids.numel(), block), desc=f"matching ({search}, {domain})", unit="block",
                  enabled=progress):
        ids = valid_ids[lo : lo + block]
        atom_index[ids], best_sq[ids] = best_of(x[ids])

    matched = atom_index >= 0
    safe = atom_index.clamp_min(0)
    unit_best = atoms.unit[safe]
    inner = (unit_best * x.real).sum(1) + 1j * (unit_best * x.imag).sum(1)  # d_unit^T x
    pd = torch.where(matched, inner / atoms.norms[safe].clamp_min(1e-30), torch.zeros_like(inner))
    score = torch.where(matched, best_sq.clamp_min(0).sqrt() / norms.clamp_min(1e-30), torch.zeros_like(norms))
    ids_np = atom_index.cpu().numpy()
    nan = np.float32(np.nan)

    def param(values: np.ndarray) -> np.ndarray:
        return np.where(ids_np >= 0, values[ids_np.clip(0)], nan).astype(np.float32).reshape(spatial)

    return MatchResult(
        t1_ms=param(dictionary.t1_ms), t2_ms=param(dictionary.t2_ms), b1=param(dictionary.b1),
        pd=pd.to(torch.complex64).cpu().numpy().reshape(spatial), score=score.cpu().numpy().reshape(spatial),
        atom_index=ids_np.reshape(spatial),
    )
