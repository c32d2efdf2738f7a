"""A loaded mapping model: checks against a scan, and maps coefficients or time courses to T1/T2/PD.

Output is a mrf_core.mapping.matching.MatchResult, so the gadgets treat a network and dictionary matching alike:
t1_ms, t2_ms (the network's estimate refined on the fingerprint table, mrf_core.mapping.refine; clamped to
the trained ranges), b1 (NaN unless the model predicts it), pd (complex: the
projection of the signal on the interpolated fingerprint of the predicted parameters, f^T x / |f|^2, in
the model's real frame), score (|f^T x| / (|f| |x|), the match quality) and atom_index (-1: no atom).
For coefficient input |f| and |x| are subspace norms (as subspace matching uses); for time courses they
are time-domain norms. Voxels with a non-finite sample or zero norm are not mapped: NaN maps, PD 0,
score 0 -- never a crash.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from mrf_core.mapping.archive import ModelError, ModelMismatchError, basis_of, read_archive, schedule_of
from mrf_core.mapping.matching import MatchResult
from mrf_core.mapping.module import table_of
from mrf_core.mapping.refine import DEFAULT_ITERATIONS, refine
from mrf_core.mapping.table import Cells
from mrf_core.physics.sequence import FispSchedule
from mrf_core.physics.slice_profile import SliceProfile
from mrf_core.physics.temporal_basis import BasisError, TemporalBasis

DEFAULT_MODEL_FILE = "default_model.pt"
DEFAULT_B1_MODEL_FILE = "default_b1_model.pt"
_CHUNK_VOXELS = 16384  # voxels per forward pass: the MLP's activations stay ~10 MB
# A scan basis must hold all but this fraction of the model's subspace (singular-value weighted). Measured
# with the default model at SNR 20: rank-10 bases of other grids lose < 1e-4 and map like the model's own
# basis; a rank-5 basis of the Oksuz grid loses 1.9e-3 and raises the T1 p90 error from 1.8 % to 22 %.
MODEL_SUBSPACE_MIN_CAPTURED = 0.9998


def default_model_path(b1_input: bool = False) -> Path:
    """The pretrained default model shipped in the package (mrf_core/data/default_model.pt), or with
    b1_input its model that takes B1 from a B1 map (default_b1_model.pt)."""
    return Path(str(resources.files("mrf_core") / "data" / (DEFAULT_B1_MODEL_FILE if b1_input else DEFAULT_MODEL_FILE)))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> MrfModel:
    """Load and validate a model archive (never unpickles). ModelError with the reason if unusable."""
    module, metadata = read_archive(path, device)
    return MrfModel(module, metadata, Path(path), torch.device(device))


class MrfModel:
    """A validated model archive. `basis` is the input basis of a coefficient model, None otherwise."""

    def __init__(self, module, metadata: dict, path: Path, device: torch.device):
        self.module = module
        self.metadata = metadata
        self.path = path
        self.device = device
        self.schedule: FispSchedule = schedule_of(metadata)
        self.input_kind: str = metadata["input"]["kind"]
        self.b1_input: bool = bool(metadata["input"].get("b1", False))  # takes a B1 map as a second input
        trained = metadata["input"].get("b1_range")
        self.b1_range: tuple[float, float] | None = tuple(trained) if trained else None  # the B1 it was trained on
        profile = metadata["training"].get("slice_profile") if isinstance(metadata["training"], dict) else None
        self.slice_profile = SliceProfile(**profile) if profile else None  # the profile its training modelled
        self.output_names: list[str] = list(metadata["outputs"]["names"])
        self._table_basis = basis_of(module, metadata)
        self.basis: TemporalBasis | None = self._table_basis if self.input_kind == "coefficients" else None
        self._table = table_of(_CpuBuffers(module))

    def describe(self) -> str:
        arch = self.metadata["architecture"]
        training = self.metadata["training"]
        basis = f", basis rank {self.basis.rank} ({self.basis.hash})" if self.basis is not None else ""
        outputs = ", ".join(self.output_names)
        return (f"{self.path.name}: {arch['name']} on {self.input_kind}{basis}; outputs {outputs}; "
                f"schedule {self.schedule.name} ({self.schedule.n_timepoints} TRs, {self.schedule.hash}); "
                f"validation loss {training.get('best_val_loss', float('nan')):.3g}")

    def check(self, schedule: FispSchedule) -> None:
        """ModelMismatchError unless `schedule` is the one the model was trained for."""
        if schedule.hash != self.schedule.hash:
            raise ModelMismatchError(
                f"model {self.path.name} was trained for schedule hash {self.schedule.hash} "
                f"({self.schedule.name}, {self.schedule.n_timepoints} TRs), the scan has {schedule.hash} "
                f"({schedule.name}, {schedule.n_timepoints} TRs)"
            )

    # ---- mapping --------------------------------------------------------------------------------
    def map_coefficients(self, coefficients, basis: TemporalBasis, refine: int = DEFAULT_ITERATIONS,
                         b1=None) -> MatchResult:
        """Complex coefficients (..., K) in `basis` -> maps (...). A basis other than the model's is
        converted (TemporalBasis.conversion_to); ModelMismatchError if the subspaces do not agree.
        refine: iterations of continuous matching on the fingerprint table after the network
        (mrf_core.mapping.refine; 0 = the network's output as it is). b1 (...): the voxels' B1 for a model
        with a B1 input (None: B1 = 1); ModelError for a model without one."""
        if self.basis is None:
            raise ModelError(f"model {self.path.name} maps {self.input_kind} time courses, not coefficients; "
                             "use map_signals")
        x = np.asarray(coefficients)
        if x.ndim == 0 or x.shape[-1] != basis.rank:
            raise ModelError(f"coefficients of shape {x.shape} do not fit a rank-{basis.rank} basis")
        if basis.hash != self.basis.hash:
            x = x @ self._conversion(basis).T
        if b1 is not None and not self.b1_input:
            raise ModelError(f"model {self.path.name} has no B1 input: it cannot use a B1 map")
        if b1 is not None and np.shape(b1) != x.shape[:-1]:
            raise ModelError(f"B1 of shape {np.shape(b1)} for coefficients of shape {x.shape}")
        return self._map(x.astype(np.complex64), None, refine, b1)

    def map_signals(self, time_courses, refine: int = DEFAULT_ITERATIONS) -> MatchResult:
        """Complex time courses (..., n_timepoints) of the model's schedule -> maps (...); refine as for
        map_coefficients."""
        x = np.asarray(time_courses)
        n_t = self.schedule.n_timepoints
        if x.ndim == 0 or x.shape[-1] != n_t:
            raise ModelError(f"time courses of shape {x.shape}: the model's schedule has {n_t} time points")
        x = x.astype(np.complex64)
        if self.basis is not None:
            return self._map(self.basis.project(x), None, refine)
        return self._map(x, np.linalg.norm(x, axis=-1), refine)

    def _conversion(self, basis: TemporalBasis) -> np.ndarray:
        if basis.schedule_hash != self.schedule.hash:
            raise ModelMismatchError(
                f"coefficients are in a basis of schedule {basis.schedule_hash}, the model {self.path.name} was "
                f"trained for {self.schedule.hash} ({self.schedule.name}, {self.schedule.n_timepoints} TRs)")
        # both ways: the model's input must be representable (strictly): the scan's basis holds the model's
        # subspace, or holds its own signal as well (a basis fitted to the slice, whose singular values are
        # the slice's: the projection of that signal is what the network was trained on); and the scan's
        # signal is kept by the model's basis
        try:
            if not basis.residual_energy() <= 1 - MODEL_SUBSPACE_MIN_CAPTURED:  # (NaN: no singular values)
                self.basis.conversion_to(basis, min_captured=MODEL_SUBSPACE_MIN_CAPTURED)
            return basis.conversion_to(self.basis)
        except BasisError as exc:
            raise ModelMismatchError(f"the scan's basis does not hold the model's subspace (needs "
                                     f"{MODEL_SUBSPACE_MIN_CAPTURED:.2%}): {exc}") from None

    @torch.no_grad()
    def _map(self, x: np.ndarray, time_norms: np.ndarray | None, refine_iterations: int, b1=None) -> MatchResult:
        """x (..., L) complex in the model's input domain; time_norms |x| in the time domain for
        time-course models (their score and PD use the time-domain norms); b1 (...) for a B1-input model
        (None: 1), also where its table is looked up (refinement keeps it fixed)."""
        spatial = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        n = flat.shape[0]
        n_out = len(self.output_names)
        params = np.full((n, n_out), np.nan, dtype=np.float32)
        pd = np.zeros(n, dtype=np.complex64)
        score = np.zeros(n, dtype=np.float32)
        valid = np.isfinite(flat).all(axis=1) & (np.abs(flat).max(axis=1, initial=0) > 0)
        known_b1 = np.ones(n, np.float32) if b1 is None else np.asarray(b1, np.float32).reshape(-1)
        ids = np.flatnonzero(valid)
        for lo in range(0, ids.size, _CHUNK_VOXELS):
            chunk = ids[lo : lo + _CHUNK_VOXELS]
            xc = torch.as_tensor(flat[chunk])
            re, im = xc.real.contiguous().to(self.device), xc.imag.contiguous().to(self.device)
            b1_chunk = torch.as_tensor(known_b1[chunk])
            out = (self.module(re, im, b1_chunk.to(self.device)) if self.b1_input else self.module(re, im)).cpu()
            finite = torch.isfinite(out).all(dim=1)
            out = torch.nan_to_num(out, nan=1.0)
            if self.b1_input:  # the table has a B1 axis: look it up (and refine) at the given B1
                out = torch.cat([out, b1_chunk[:, None]], dim=1)
            if self.basis is None:  # time courses: compare in the table's subspace, norms in time
                x_coef = torch.as_tensor(self._table_basis.project(flat[chunk]))
                x_norm = torch.as_tensor(time_norms.reshape(-1)[chunk], dtype=torch.float32)
            else:
                x_coef, x_norm = xc, torch.linalg.vector_norm(xc, dim=1)
            n_free = 2 if self.b1_input else None  # a B1 input stays fixed
            cells = Cells(n_free)  # the table nodes refinement gathered, reused by the final lookup
            if refine_iterations > 0:
                out = refine(self._table, out, x_coef, refine_iterations, n_free, cells)
            f_coef, f_norm = self._table.lookup(out, cells)
            out = out[:, :n_out]
            if self.basis is not None:
                f_norm = torch.linalg.vector_norm(f_coef, dim=1)
            inner = (f_coef * x_coef.real).sum(1) + 1j * (f_coef * x_coef.imag).sum(1)
            f_norm = f_norm.clamp_min(1e-30)
            chunk_pd = inner / f_norm**2
            chunk_score = (inner.abs() / (f_norm * x_norm.clamp_min(1e-30))).clamp(0, 1)
            params[chunk] = torch.where(finite[:, None], out, torch.full_like(out, float("nan"))).numpy()
            pd[chunk] = torch.where(finite, chunk_pd, torch.zeros_like(chunk_pd)).numpy()
            score[chunk] = torch.where(finite, chunk_score, torch.zeros_like(chunk_score)).numpy()
        b1 = params[:, self.output_names.index("b1")] if "b1" in self.output_names else np.full(n, np.nan, np.float32)
        return MatchResult(
            t1_ms=params[:, 0].reshape(spatial), t2_ms=params[:, 1].reshape(spatial),
            b1=b1.astype(np.float32).reshape(spatial), pd=pd.reshape(spatial), score=score.reshape(spatial),
            atom_index=np.full(spatial, -1, dtype=np.int64),
        )


class _CpuBuffers:
    """The table buffers of a module, on the CPU (the table lookup runs there)."""

    def __init__(self, module):
        for name in ("table_coefficients", "table_norms", "table_lo", "table_step", "table_shape"):
            setattr(self, name, getattr(module, name).detach().cpu())
