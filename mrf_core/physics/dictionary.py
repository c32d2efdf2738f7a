"""MRF dictionaries: parameter grids, generation with the EPG, SVD compression, HDF5 storage.

Atoms are ordered B1 (slowest), T1, T2 (fastest), so a generation chunk mostly shares one B1 and the
simulator's fast path applies. Every atom keeps its integer position on the grid's axes (`grid_index`),
which the pruned matcher uses to group neighbouring atoms.

Fingerprints are stored real (float32): signal = signal_phase * fingerprint (see mrf_core.physics.epg).
A dictionary built with a slice profile (mrf_core.physics.slice_profile) stores its spec (attribute
`slice_profile`, empty for the ideal profile), which the pipeline checks against the `slice_profile` setting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np
import torch

import mrf_core
from mrf_core.errors import MrfError
from mrf_core.io.atomic import atomic_path
from mrf_core.physics.epg import DEFAULT_CHUNK_ATOMS, DEFAULT_N_STATES, signal_phase, simulate_fingerprints
from mrf_core.physics.sequence import FispSchedule, ScheduleError
from mrf_core.physics.slice_profile import SliceProfile, SliceProfileError, profile_fingerprints
from mrf_core.physics.temporal_basis import BasisError, TemporalBasis, basis_from_fingerprints

FILE_FORMAT = "mrf-dictionary"
FILE_VERSION = 1
_INSIDE_TOLERANCE = 1e-5  # a basis vector keeping > 1 - this of its norm in the dictionary's basis lies inside it


log = logging.getLogger(__name__)


class DictionaryError(MrfError):
    """A dictionary that is malformed or does not fit: the message names the file, field and value."""


# ---- grids ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DictionaryGrid:
    """Axes of a T1 x T2 (x B1) grid and the rule that keeps T2 below T1.

    t2_rule: "lt" keeps T2 < T1, "le" keeps T2 <= T1 (Song et al. count 80,100 atoms with T2 <= T1).
    """

    name: str
    t1_axis_ms: np.ndarray
    t2_axis_ms: np.ndarray
    b1_axis: np.ndarray = field(default_factory=lambda: np.array([1.0]))
    t2_rule: str = "lt"

    def __post_init__(self) -> None:
        for attr in ("t1_axis_ms", "t2_axis_ms", "b1_axis"):
            axis = np.unique(np.asarray(getattr(self, attr), dtype=np.float64).reshape(-1))
            if axis.size == 0:
                raise DictionaryError(f"grid {self.name!r}: {attr} is empty")
            if not np.all(np.isfinite(axis)) or axis[0] <= 0:
                raise DictionaryError(f"grid {self.name!r}: {attr} must be finite and > 0 (min {axis[0]})")
            object.__setattr__(self, attr, axis)
        if self.t2_rule not in ("lt", "le"):
            raise DictionaryError(f"grid {self.name!r}: t2_rule = {self.t2_rule!r} must be 'lt' or 'le'")

    def atoms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(t1_ms, t2_ms, b1, grid_index (n_atoms, 3) int32) of the atoms the T2 rule keeps."""
        ib, i1, i2 = np.meshgrid(
            np.arange(self.b1_axis.size), np.arange(self.t1_axis_ms.size), np.arange(self.t2_axis_ms.size),
            indexing="ij",
        )
        t1, t2 = self.t1_axis_ms[i1], self.t2_axis_ms[i2]
        keep = (t2 < t1) if self.t2_rule == "lt" else (t2 <= t1)
        index = np.stack([i1[keep], i2[keep], ib[keep]], axis=1).astype(np.int32)
        return t1[keep], t2[keep], self.b1_axis[ib[keep]], index

    @property
    def n_atoms(self) -> int:
        return int(self.atoms()[0].size)


def song_grid(b1_axis=(1.0,)) -> DictionaryGrid:
    """Song et al.: T1 1:10:5000 ms, T2 1:10:2000 ms, T2 <= T1 (80,100 atoms)."""
    return DictionaryGrid("song", np.arange(1, 5001, 10), np.arange(1, 2001, 10), np.asarray(b1_axis), "le")


def oksuz_grid(b1_axis=(1.0,)) -> DictionaryGrid:
    """Oksuz et al.: T1 [0:2:500][500:5:1000][1000:10:2000][2000:50:4000] ms, T2 [0:1:100][100:2:500] ms,
    T2 < T1. The zero values of their ranges are dropped (a zero T1 or T2 is not a tissue): 114,400 atoms."""
    t1 = np.concatenate([np.arange(0, 500, 2), np.arange(500, 1000, 5), np.arange(1000, 2000, 10),
                         np.arange(2000, 4001, 50)])
    t2 = np.concatenate([np.arange(0, 100, 1), np.arange(100, 501, 2)])
    return DictionaryGrid("oksuz", t1[t1 > 0], t2[t2 > 0], np.asarray(b1_axis), "lt")


def percent_grid(
    step_pct: float = 5.0,
    t1_range_ms: tuple[float, float] = (10.0, 5000.0),
    t2_range_ms: tuple[float, float] = (2.0, 2000.0),
    b1_axis=(1.0,),
) -> DictionaryGrid:
    """Geometric axes, each value step_pct % above the previous (a 5 % grid over the default ranges
    has ~10k atoms)."""
    if not 0 < step_pct < 100:
        raise DictionaryError(f"step_pct = {step_pct} must be in (0, 100)")

    def axis(lo: float, hi: float, name: str) -> np.ndarray:
        if not 0 < lo <= hi:
            raise DictionaryError(f"{name} = ({lo}, {hi}) must satisfy 0 < low <= high")
        n = int(np.floor(np.log(hi / lo) / np.log1p(step_pct / 100))) + 1
        return lo * (1 + step_pct / 100) ** np.arange(n)

    return DictionaryGrid(
        f"percent{step_pct:g}", axis(*t1_range_ms, "t1_range_ms"), axis(*t2_range_ms, "t2_range_ms"),
        np.asarray(b1_axis), "lt",
    )


GRIDS = {"song": song_grid, "oksuz": oksuz_grid, "percent": percent_grid}


# ---- the dictionary ---------------------------------------------------------------------------------
@dataclass
class Dictionary:
    """Atoms (T1 ms, T2 ms, B1), their real fingerprints, the SVD basis and compressed atoms.

    fingerprints: float32 (n_atoms, n_timepoints), or None for a compressed-only dictionary.
    compressed: float32 (n_atoms, rank) = fingerprints @ basis.vectors.
    """

    schedule: FispSchedule
    grid: DictionaryGrid
    t1_ms: np.ndarray
    t2_ms: np.ndarray
    b1: np.ndarray
    grid_index: np.ndarray
    basis: TemporalBasis
    compressed: np.ndarray
    fingerprints: np.ndarray | None = None
    n_states: int = DEFAULT_N_STATES
    build_seconds: float = 0.0
    slice_profile: SliceProfile | None = None

    @property
    def n_atoms(self) -> int:
        return int(self.t1_ms.size)

    @property
    def signal_phase(self) -> complex:
        return self.basis.signal_phase

    @property
    def has_b1(self) -> bool:
        return self.grid.b1_axis.size > 1

    def signals(self, atoms=slice(None)) -> np.ndarray:
        """Complex time courses of the chosen atoms (needs the full fingerprints)."""
        if self.fingerprints is None:
            raise DictionaryError("this dictionary is compressed-only: it has no time-domain fingerprints")
        return self.fingerprints[atoms].astype(np.complex64) * np.complex64(self.signal_phase)

    def in_basis(self, basis: TemporalBasis) -> Dictionary:
        """The dictionary with its compressed atoms expressed in `basis`, another basis of this schedule's
        subspace (e.g. a reconstruction's truncated basis or a network model's). Matching coefficients of a
        rank-K reconstruction must use atoms in that same K-dimensional subspace: padding the coefficients
        into a larger basis normalises atoms over components the data do not have, which biases T2.
        A basis inside this dictionary's subspace (a truncation, or one fitted to a slice within a wide
        dictionary basis: mrf_core.mapping.fitted_basis) gets the exact projection of the atoms.
        BasisError when `basis` does not capture this dictionary's subspace or has another phase."""
        if basis.hash == self.basis.hash:
            return self
        conversion = self.basis.conversion_to(basis, min_captured=0.0)  # (basis.rank, self.rank)
        inside = np.sum(np.abs(conversion.astype(np.complex128)) ** 2, axis=1).min() > 1 - _INSIDE_TOLERANCE
        if not inside:
            conversion = self.basis.conversion_to(basis)  # the BasisError when it loses the dictionary's signal
        if np.abs(conversion.imag).max() > 1e-6 * max(float(np.abs(conversion.real).max()), 1.0):
            raise BasisError(f"basis {basis.hash} has another signal phase than the dictionary's {self.basis.hash}")
        compressed = (self.compressed @ conversion.real.T).astype(np.float32)
        return replace(self, basis=basis, compressed=compressed)

    def describe(self, has_fingerprints: bool | None = None) -> str:
        """A summary; `has_fingerprints` says what the file holds when they were not loaded."""
        g = self.grid
        b1 = f", B1 {g.b1_axis.min():g}-{g.b1_axis.max():g} ({g.b1_axis.size})" if self.has_b1 else ""
        if has_fingerprints is None:
            has_fingerprints = self.fingerprints is not None
        storage = "fingerprints + compressed" if has_fingerprints else "compressed only"
        return (
            f"dictionary on grid {g.name!r}: {self.n_atoms} atoms; T1 {g.t1_axis_ms.min():g}-"
            f"{g.t1_axis_ms.max():g} ms ({g.t1_axis_ms.size}), T2 {g.t2_axis_ms.min():g}-"
            f"{g.t2_axis_ms.max():g} ms ({g.t2_axis_ms.size}){b1}, T2 {'<' if g.t2_rule == 'lt' else '<='} T1\n"
            f"schedule {self.schedule.name} ({self.schedule.n_timepoints} TRs, hash {self.schedule.hash}); "
            f"{self.n_states} EPG states; slice profile "
            f"{self.slice_profile.describe() if self.slice_profile else 'ideal (not modelled)'}\n"
            f"basis rank {self.basis.rank}, residual energy {self.basis.residual_energy():.2e} "
            f"(hash {self.basis.hash}); {storage}"
        )

    def check_schedule(self, schedule: FispSchedule) -> None:
        if schedule.hash != self.schedule.hash:
            raise DictionaryError(
                f"dictionary was made for schedule {self.schedule.name!r} (hash {self.schedule.hash}, "
                f"{self.schedule.n_timepoints} TRs) but the scan's schedule is {schedule.name!r} "
                f"(hash {schedule.hash}, {schedule.n_timepoints} TRs)"
            )

    # ---- HDF5 ---------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the dictionary to HDF5, atomically."""
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.attrs.update(format=FILE_FORMAT, version=FILE_VERSION, n_atoms=self.n_atoms,
                           n_states=self.n_states, build_seconds=self.build_seconds,
                           schedule_hash=self.schedule.hash, basis_hash=self.basis.hash,
                           schedule_json=self.schedule.to_json(),
                           slice_profile=self.slice_profile.spec if self.slice_profile else "")
            g = f.create_group("grid")
            g.attrs.update(name=self.grid.name, t2_rule=self.grid.t2_rule)
            for key in ("t1_axis_ms", "t2_axis_ms", "b1_axis"):
                g[key] = getattr(self.grid, key)
            a = f.create_group("atoms")
            a["t1_ms"], a["t2_ms"], a["b1"], a["grid_index"] = self.t1_ms, self.t2_ms, self.b1, self.grid_index
            b = f.create_group("basis")
            b["vectors"], b["singular_values"] = self.basis.vectors, self.basis.singular_values
            b.attrs.update(signal_phase_re=self.signal_phase.real, signal_phase_im=self.signal_phase.imag)
            f["compressed"] = self.compressed
            if self.fingerprints is not None:
                f.create_dataset("fingerprints", data=self.fingerprints, chunks=(min(4096, self.n_atoms),
                                                                                 self.schedule.n_timepoints))

    @classmethod
    def load(cls, path: str | Path, schedule: FispSchedule | None = None, fingerprints: bool = True) -> Dictionary:
        """Read a dictionary file; with `schedule`, check it was made for that schedule.

        fingerprints=False skips the time-domain fingerprints (subspace matching needs only the
        compressed atoms).
        """
        path = Path(path)
        try:
            f = h5py.File(path, "r")
        except FileNotFoundError:
            raise DictionaryError(f"dictionary file {path} does not exist") from None
        except OSError as exc:
            raise DictionaryError(f"{path} is not a readable HDF5 dictionary (truncated or corrupt?): {exc}") from exc
        with f:
            try:
                d = cls._read(f, fingerprints)
            except (KeyError, OSError, ValueError) as exc:
                if isinstance(exc, DictionaryError):
                    raise DictionaryError(f"{path}: {exc}") from exc
                raise DictionaryError(f"{path} is not a complete dictionary file: {exc}") from exc
        if schedule is not None:
            d.check_schedule(schedule)
        return d

    @classmethod
    def _read(cls, f: h5py.File, with_fingerprints: bool) -> Dictionary:
        if f.attrs.get("format") != FILE_FORMAT:
            raise DictionaryError(f"format attribute is {f.attrs.get('format')!r}, not {FILE_FORMAT!r}")
        if int(f.attrs["version"]) > FILE_VERSION:
            raise DictionaryError(f"file version {f.attrs['version']} is newer than this code ({FILE_VERSION})")
        try:
            schedule = FispSchedule.from_dict(json.loads(f.attrs["schedule_json"]))
        except ScheduleError as exc:
            raise DictionaryError(f"stored schedule is invalid: {exc}") from exc
        if schedule.hash != f.attrs["schedule_hash"]:
            raise DictionaryError(f"schedule_hash {f.attrs['schedule_hash']} does not match its schedule")
        g = f["grid"]
        grid = DictionaryGrid(str(g.attrs["name"]), g["t1_axis_ms"][()], g["t2_axis_ms"][()], g["b1_axis"][()],
                              str(g.attrs["t2_rule"]))
        n_atoms = int(f.attrs["n_atoms"])
        b = f["basis"]
        basis = TemporalBasis(
            b["vectors"][()], b["singular_values"][()],
            complex(float(b.attrs["signal_phase_re"]), float(b.attrs["signal_phase_im"])), schedule.hash,
        )
        expected = {
            "atoms/t1_ms": (n_atoms,), "atoms/t2_ms": (n_atoms,), "atoms/b1": (n_atoms,),
            "atoms/grid_index": (n_atoms, 3), "compressed": (n_atoms, basis.rank),
            "basis/vectors": (schedule.n_timepoints, basis.rank),
        }
        if with_fingerprints and "fingerprints" in f:
            expected["fingerprints"] = (n_atoms, schedule.n_timepoints)
        for key, shape in expected.items():
            if f[key].shape != shape:
                raise DictionaryError(f"dataset {key} has shape {f[key].shape}, expected {shape}")
        fps = f["fingerprints"][()] if with_fingerprints and "fingerprints" in f else None
        try:
            profile = SliceProfile.parse(str(f.attrs.get("slice_profile", "")))
        except SliceProfileError as exc:
            raise DictionaryError(f"stored slice_profile is invalid: {exc}") from None
        return cls(
            schedule=schedule, grid=grid, t1_ms=f["atoms/t1_ms"][()], t2_ms=f["atoms/t2_ms"][()],
            b1=f["atoms/b1"][()], grid_index=f["atoms/grid_index"][()], basis=basis,
            compressed=f["compressed"][()], fingerprints=fps, n_states=int(f.attrs["n_states"]),
            build_seconds=float(f.attrs["build_seconds"]), slice_profile=profile,
        )


def cache_key(schedule: FispSchedule, grid: DictionaryGrid, n_states: int, rank: int,
              slice_profile: SliceProfile | None = None) -> str:
    """Schedule hash + a digest of the grid axes, EPG states, rank, slice profile and the package version."""
    h = hashlib.sha256()
    for axis in (grid.t1_axis_ms, grid.t2_axis_ms, grid.b1_axis):
        h.update(np.asarray(axis, dtype=np.float64).round(6).tobytes())
    h.update(f"{grid.t2_rule},{n_states},{rank},{mrf_core.__version__}".encode())
    if slice_profile is not None:
        h.update(slice_profile.spec.encode())
    return f"{schedule.hash}_{grid.name}_{h.hexdigest()[:12]}"


def cache_path(schedule: FispSchedule, grid: DictionaryGrid, n_states: int, rank: int, cache_dir: str | Path,
               slice_profile: SliceProfile | None = None) -> Path:
    """Where `cache_dir` keeps the dictionary of these settings (`dict_<cache_key>.h5`)."""
    return Path(cache_dir) / f"dict_{cache_key(schedule, grid, n_states, rank, slice_profile)}.h5"


def describe_grid(grid: DictionaryGrid) -> str:
    """A grid in words for messages: 'the 5 % grid', 'the oksuz grid with 5 B1 values'."""
    name = f"{grid.name.removeprefix('percent')} %" if grid.name.startswith("percent") else grid.name
    b1 = f" with {grid.b1_axis.size} B1 values" if grid.b1_axis.size > 1 else ""
    return f"the {name} grid{b1}"


def store_in_cache(dictionary: Dictionary, rank: int, cache_dir: str | Path) -> Path:
    """Save the compressed atoms of a dictionary built elsewhere (`mrf dictionary build`) where
    cached_dictionary looks for them, so `mrf reconstruct`, replay and the gadgets reuse it."""
    path = cache_path(dictionary.schedule, dictionary.grid, dictionary.n_states, rank, cache_dir,
                      dictionary.slice_profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace(dictionary, fingerprints=None).save(path)
    return path


def cached_dictionary(
    schedule: FispSchedule,
    grid: DictionaryGrid,
    n_states: int = DEFAULT_N_STATES,
    rank: int = 10,
    cache_dir: str | Path | None = None,
    progress: bool | None = None,
    slice_profile: SliceProfile | None = None,
) -> Dictionary:
    """The compressed-only dictionary of `grid` for `schedule`: read from `cache_dir` (file
    `dict_<cache_key>.h5`) when it holds it, else built and, with a cache_dir, saved there (atomically, so
    processes building the same key at once cannot corrupt each other). An unusable cached file is rebuilt;
    a cache folder that cannot be written is logged, not an error."""
    start = time.perf_counter()
    cached = cache_path(schedule, grid, n_states, rank, cache_dir, slice_profile) if cache_dir else None
    if cached is not None and cached.is_file():
        try:
            dictionary = Dictionary.load(cached, schedule=schedule, fingerprints=False)
            log.info("dictionary from cache %s in %.2f s (%d atoms)", cached, time.perf_counter() - start,
                     dictionary.n_atoms)
            return dictionary
        except DictionaryError as exc:
            log.warning("cached dictionary %s is unusable (%s); building it again", cached, exc)
    where = (f"cached as {cached}; later scans of this schedule reuse it" if cached is not None
             else "not cached (no dictionary cache folder)")
    log.info("building the dictionary of %s for schedule %s (%d atoms, %d TRs, %d EPG states) once: %s. A "
             "dictionary file of your own is used with --dictionary-file FILE (gadget property dictionary_file)",
             describe_grid(grid), schedule.hash, grid.n_atoms, schedule.n_timepoints, n_states, where)
    dictionary = build_dictionary(schedule, grid, n_states=n_states, rank=rank, keep_fingerprints=False,
                                  progress=progress, slice_profile=slice_profile)
    log.info("dictionary built in %.2f s: grid %s, %d atoms, %d TRs, basis rank %d", time.perf_counter() - start,
             grid.name, dictionary.n_atoms, schedule.n_timepoints, dictionary.basis.rank)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            dictionary.save(cached)
            log.info("dictionary cached as %s", cached)
        except OSError as exc:
            log.warning("could not cache the dictionary in %s: %s", cached.parent, exc)
    return dictionary


def atom_fingerprints(schedule: FispSchedule, t1_ms, t2_ms, b1, n_states: int = DEFAULT_N_STATES,
                      slice_profile: SliceProfile | None = None, device: str | torch.device | None = None,
                      chunk_atoms: int = DEFAULT_CHUNK_ATOMS, progress: bool | None = False) -> np.ndarray:
    """Real fingerprints (n, n_timepoints) float32 of atoms (T1 ms, T2 ms, B1) as a dictionary of these
    settings simulates them: the EPG, or with a slice_profile the sum of its sub-slices' EPG signals."""
    if slice_profile is not None:
        return profile_fingerprints(schedule, t1_ms, t2_ms, b1, slice_profile, n_states=n_states, device=device,
                                    chunk_atoms=chunk_atoms).cpu().numpy()
    return simulate_fingerprints(schedule, t1_ms, t2_ms, b1, n_states=n_states, device=device,
                                 chunk_atoms=chunk_atoms, progress=progress).cpu().numpy()


def build_dictionary(
    schedule: FispSchedule,
    grid: DictionaryGrid,
    n_states: int = DEFAULT_N_STATES,
    rank: int | None = None,
    residual_energy: float | None = None,
    keep_fingerprints: bool = True,
    device: str | torch.device | None = None,
    chunk_atoms: int = DEFAULT_CHUNK_ATOMS,
    progress: bool | None = None,
    slice_profile: SliceProfile | None = None,
) -> Dictionary:
    """Simulate every atom of `grid` (in chunks, with a progress bar), then the SVD basis and the compressed
    atoms. `rank` or `residual_energy` choose the basis size (default rank 10). With a slice_profile each
    atom is the sum of its sub-slices' fingerprints (n_positions times the EPG work)."""
    t1, t2, b1, index = grid.atoms()
    start = time.perf_counter()
    fingerprints = atom_fingerprints(schedule, t1, t2, b1, n_states, slice_profile, device, chunk_atoms, progress)
    basis = basis_from_fingerprints(fingerprints, signal_phase(schedule), schedule.hash, rank, residual_energy)
    compressed = basis.project_real(fingerprints)
    return Dictionary(
        schedule=schedule, grid=grid, t1_ms=t1.astype(np.float32), t2_ms=t2.astype(np.float32),
        b1=b1.astype(np.float32), grid_index=index, basis=basis, compressed=compressed,
        fingerprints=fingerprints if keep_fingerprints else None, n_states=n_states,
        build_seconds=time.perf_counter() - start, slice_profile=slice_profile,
    )
