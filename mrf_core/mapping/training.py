"""Training a mapping network on EPG fingerprints at continuous random tissue parameters.

Recipe (`TrainConfig`, every field recorded in the archive):
- tissues drawn from the ParameterSpace (log-uniform by default, T2 < T1), simulated once with the EPG
  (50 states: exact to float32 for T2 <= ~200 ms, see mrf_core.physics.epg), kept as real fingerprints for
  time-course models or as their subspace coefficients for coefficient models (rank `rank` of the SVD
  basis of a 5 % percent grid over the same ranges, or of `basis_dictionary`);
- each batch drawn fresh: a random complex PD (amplitude 0.2-5, any phase) and complex Gaussian noise at an
  SNR drawn log-uniformly from `snr_range` (SNR per time point: mean |signal| / sigma, sigma^2 = E|n|^2, the
  definition of benchmarks/bench_matching.py; noise in the coefficients is the same white noise, the basis
  being orthonormal), a `clean_fraction` of the batch noiseless;
- `b1_input`: the network also gets each tissue's B1 (drawn from the space's b1_range) times (1 + a Gaussian
  error of relative std `b1_input_noise`, a B1 map's), and predicts T1/T2 only; its PD/quality table keeps
  the B1 axis, looked up at the given B1;
- MSE on normalised targets (mrf_core.mapping.parameters), Adam, learning rate halved on a validation
  plateau, early stopping after `patience` epochs without a 0.1 % improvement (the best epoch is kept), a
  fixed validation set (its own seeded noise), fixed seeds; CPU by default, CUDA when `device` says so.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from mrf_core.mapping.architectures import ARCHITECTURES, build_network
from mrf_core.mapping.archive import write_archive
from mrf_core.mapping.inputs import InputTransform, channels_of, reference_of
from mrf_core.mapping.module import MappingModule
from mrf_core.mapping.parameters import MappingConfigError, ParameterSpace
from mrf_core.mapping.table import DEFAULT_B1_NODES, DEFAULT_TABLE_NODES, FingerprintTable
from mrf_core.physics.dictionary import Dictionary, atom_fingerprints, build_dictionary, percent_grid
from mrf_core.physics.epg import default_device
from mrf_core.physics.sequence import FispSchedule
from mrf_core.physics.slice_profile import SliceProfile, spec_of
from mrf_core.physics.temporal_basis import TemporalBasis
from mrf_core.progress import bar

log = logging.getLogger(__name__)

SCORE_BASIS_RANK = 20  # basis of a time-course model's fingerprint table (residual ~1e-6 for Jiang)
_SIM_CHUNK = 8192
_AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    arch: str = "mlp"
    input_kind: str | None = None  # None: the architecture's default (ARCHITECTURES)
    rank: int = 10  # coefficient models: basis rank (the reconstruction needs 10 for short T1: README)
    arch_options: dict = field(default_factory=dict)
    space: ParameterSpace = field(default_factory=ParameterSpace)
    n_train: int = 100_000
    n_val: int = 10_000
    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-3
    patience: int = 8
    snr_range: tuple[float, float] | None = (2.0, 200.0)  # None: noiseless training
    clean_fraction: float = 0.05
    n_states: int = 50
    seed: int = 0
    device: str | None = None
    table_nodes: int = DEFAULT_TABLE_NODES
    table_b1_nodes: int = DEFAULT_B1_NODES
    basis_dictionary: str | None = None
    basis_step_pct: float = 5.0  # grid step of the basis dictionary when basis_dictionary is None
    max_minutes: float | None = None  # wall-clock budget: training stops when it is spent (checked every 20 batches)
    progress: bool = True
    amp: str | None = None  # mixed precision on CUDA (torch.autocast): "bf16" or "fp16"; None (and on a CPU): fp32
    b1_input: bool = False  # B1 (from a B1 map) as an input beside the signal; needs space.b1_range
    b1_input_noise: float = 0.02  # relative std of the error put on the B1 input in training
    slice_profile: SliceProfile | None = None  # the RF pulse's slice profile the fingerprints model (None: ideal)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise MappingConfigError(f"arch = {self.arch!r} must be one of {sorted(ARCHITECTURES)}")
        if self.input_kind is None:
            self.input_kind = ARCHITECTURES[self.arch][1]
        channels_of(self.input_kind)
        for name in ("n_train", "n_val", "epochs", "batch_size", "rank", "n_states"):
            if int(getattr(self, name)) < 1:
                raise MappingConfigError(f"{name} = {getattr(self, name)} must be >= 1")
        if self.snr_range is not None:
            lo, hi = self.snr_range
            if not 0 < lo <= hi:
                raise MappingConfigError(f"snr_range = {self.snr_range} must satisfy 0 < low <= high")
        if not 0 <= self.clean_fraction <= 1:
            raise MappingConfigError(f"clean_fraction = {self.clean_fraction} must be in [0, 1]")
        if self.amp not in _AMP_DTYPES:
            raise MappingConfigError(f"amp = {self.amp!r} must be one of {list(_AMP_DTYPES)}")
        if self.b1_input and self.space.b1_range is None:
            raise MappingConfigError("b1_input needs a B1 range to train over (space.b1_range, --b1-range)")

    @property
    def output_space(self) -> ParameterSpace:
        """What the network predicts: the space without B1 when B1 is an input."""
        return replace(self.space, b1_range=None) if self.b1_input else self.space

    def to_dict(self) -> dict:
        d = asdict(self)
        d["space"] = self.space.to_dict()
        return d


@dataclass
class TrainingSet:
    """params (n, P) in their units; signals (n, L) real (coefficients or fingerprints); mean_abs (n,)
    mean |fingerprint| over time (the SNR reference)."""

    params: np.ndarray
    signals: torch.Tensor
    mean_abs: torch.Tensor


def simulate_set(schedule: FispSchedule, space: ParameterSpace, n: int, rng: np.random.Generator,
                 basis: TemporalBasis | None, n_states: int = 50, device=None,
                 progress: bool | None = None, slice_profile: SliceProfile | None = None) -> TrainingSet:
    """n random tissues and their fingerprints (projected on `basis` when given), in chunks; with a
    slice_profile each is the sum of its sub-slices' fingerprints, as in a dictionary with that profile."""
    params = space.sample(n, rng)
    signals, mean_abs = [], []
    for lo in bar(range(0, n, _SIM_CHUNK), desc="EPG of the training tissues", unit="chunk", enabled=progress):
        p = params[lo : lo + _SIM_CHUNK]
        b1 = p[:, 2] if p.shape[1] > 2 else np.ones(len(p))
        fps = torch.from_numpy(atom_fingerprints(schedule, p[:, 0], p[:, 1], b1, n_states, slice_profile, device))
        mean_abs.append(fps.abs().mean(dim=1))
        signals.append(fps @ torch.as_tensor(basis.vectors) if basis is not None else fps)
    return TrainingSet(params, torch.cat(signals), torch.cat(mean_abs))


def project_set(data: TrainingSet, basis: TemporalBasis) -> TrainingSet:
    """A set of fingerprints -> the same set as coefficients (chunked as simulate_set, so identical)."""
    u = torch.as_tensor(basis.vectors)
    signals = torch.cat([data.signals[lo : lo + _SIM_CHUNK] @ u for lo in range(0, data.signals.shape[0], _SIM_CHUNK)])
    return TrainingSet(data.params, signals, data.mean_abs)


def augment(signals: torch.Tensor, mean_abs: torch.Tensor, snr_range, clean_fraction: float,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Real signals (B, L) -> (re, im) of pd * signal + noise: random complex PD, SNR from snr_range."""
    b = signals.shape[0]
    amplitude = torch.exp(torch.empty(b, 1).uniform_(math.log(0.2), math.log(5.0), generator=gen))
    phase = torch.empty(b, 1).uniform_(-math.pi, math.pi, generator=gen)
    re, im = signals * amplitude * torch.cos(phase), signals * amplitude * torch.sin(phase)
    if snr_range is not None:
        lo, hi = snr_range
        snr = torch.exp(torch.empty(b, 1).uniform_(math.log(lo), math.log(hi), generator=gen))
        sigma = amplitude * mean_abs[:, None] / snr / math.sqrt(2.0)
        if clean_fraction > 0:
            sigma = sigma * (torch.rand(b, 1, generator=gen) >= clean_fraction)
        re = re + sigma * torch.randn(re.shape, generator=gen)
        im = im + sigma * torch.randn(im.shape, generator=gen)
    return re, im


def model_basis(schedule: FispSchedule, config: TrainConfig, rank: int) -> TemporalBasis:
    """The input (or table) basis: from config.basis_dictionary, else the SVD basis of a percent grid
    (config.basis_step_pct, 5 % by default) over the training ranges (for the default ranges that is the
    dictionary `mrf dictionary build --grid percent --step-pct 5 --rank K` makes, so a chain using that
    dictionary needs no conversion)."""
    if config.basis_dictionary is not None:
        d = Dictionary.load(config.basis_dictionary, schedule=schedule, fingerprints=False)
        if spec_of(d.slice_profile) != spec_of(config.slice_profile):
            raise MappingConfigError(f"{config.basis_dictionary} was built with slice profile "
                                     f"{spec_of(d.slice_profile)}, the training models {spec_of(config.slice_profile)}")
        if d.basis.rank < rank:
            raise MappingConfigError(f"{config.basis_dictionary} has a rank-{d.basis.rank} basis, rank {rank} asked")
        return d.basis.truncated(rank)
    space = config.space
    b1 = (1.0,) if space.b1_range is None else tuple(np.linspace(*space.b1_range, 5))
    grid = percent_grid(config.basis_step_pct, space.t1_range_ms, space.t2_range_ms, b1_axis=b1)
    rank = min(rank, schedule.n_timepoints)
    return build_dictionary(schedule, grid, n_states=config.n_states, rank=rank, keep_fingerprints=False,
                            progress=False, device=config.device, slice_profile=config.slice_profile).basis


@torch.no_grad()
def _predict_normalised(module: MappingModule, re: torch.Tensor, im: torch.Tensor, b1: torch.Tensor | None = None,
                        batch: int = 4096) -> torch.Tensor:
    return torch.cat([module.normalised(re[i : i + batch], im[i : i + batch], None if b1 is None else b1[i : i + batch])
                      for i in range(0, re.shape[0], batch)])


def b1_inputs(params: np.ndarray, config: TrainConfig, gen: torch.Generator) -> torch.Tensor | None:
    """The B1 a B1-input network gets for tissues `params` (n, 3): the true B1 with the map's error; None
    for a network without B1 input."""
    if not config.b1_input:
        return None
    b1 = torch.as_tensor(params[:, 2], dtype=torch.float32)
    return b1 * (1 + config.b1_input_noise * torch.randn(b1.shape, generator=gen))


def _autocast(device: torch.device, amp: str | None):
    """torch.autocast to `amp`'s dtype on CUDA; disabled (fp32) otherwise."""
    dtype = _AMP_DTYPES[amp] if device.type == "cuda" else None
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def train_model(schedule: FispSchedule, config: TrainConfig, out: str | Path | None = None,
                data: tuple[TrainingSet, TrainingSet] | None = None) -> tuple[MappingModule, dict]:
    """Train per `config`; write the archive to `out` when given. Returns (module in eval mode, metadata).
    `data`: (training, validation) fingerprints already simulated for this schedule and config (benchmarks
    share one simulation between networks); by default they are simulated here."""
    start = time.perf_counter()
    device = torch.device(config.device) if config.device else default_device()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    space, kind = config.space, config.input_kind
    coefficient_model = kind == "coefficients"
    basis = model_basis(schedule, config, config.rank if coefficient_model else SCORE_BASIS_RANK)
    if data is None:
        train = simulate_set(schedule, space, config.n_train, rng, basis if coefficient_model else None,
                             config.n_states, device, config.progress, config.slice_profile)
        val = simulate_set(schedule, space, config.n_val, rng, basis if coefficient_model else None,
                           config.n_states, device, False, config.slice_profile)
    else:
        train, val = data
        if (train.signals.shape[0], val.signals.shape[0]) != (config.n_train, config.n_val):
            raise MappingConfigError(f"data holds {train.signals.shape[0]}/{val.signals.shape[0]} signals, the "
                                     f"config asks {config.n_train}/{config.n_val}")
        if coefficient_model:
            train, val = project_set(train, basis), project_set(val, basis)
    reference, sign_margin = reference_of(train.signals[:2000].numpy(), kind)
    if kind != "magnitude" and sign_margin < 0.05:
        log.warning("phase-sign margin %.3f is small: noisy voxels may get the wrong sign", sign_margin)
    length = train.signals.shape[1]
    out_space = config.output_space
    n_out = len(out_space.names)
    network = build_network(config.arch, channels_of(kind), length + int(config.b1_input), n_out,
                            **config.arch_options)
    module = MappingModule(InputTransform(kind, reference), network, out_space.output_scaling(),
                           b1_input=config.b1_input).to(device)
    y_train = torch.as_tensor(out_space.normalise(train.params[:, :n_out]))
    y_val = torch.as_tensor(out_space.normalise(val.params[:, :n_out]))
    val_gen = torch.Generator().manual_seed(config.seed + 1)
    val_re, val_im = augment(val.signals, val.mean_abs, config.snr_range, config.clean_fraction, val_gen)
    val_b1 = b1_inputs(val.params, config, val_gen)
    optimiser = torch.optim.Adam(module.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and config.amp == "fp16")
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, factor=0.5, patience=max(2, config.patience // 3))
    best_loss, best_state, best_epoch, stale, history = math.inf, None, 0, 0, []
    deadline = math.inf if config.max_minutes is None else start + 60 * config.max_minutes
    epochs = bar(range(config.epochs), desc=f"training {config.arch}", unit="epoch", enabled=config.progress)
    for epoch in epochs:
        module.train()
        order = torch.randperm(config.n_train, generator=gen)
        total, seen = 0.0, 0
        for step, lo in enumerate(range(0, config.n_train, config.batch_size)):
            if step % 20 == 0 and step > 0 and time.perf_counter() > deadline:
                break  # the budget ends inside this (long) epoch: validate what was learnt, then stop
            ids = order[lo : lo + config.batch_size]
            re, im = augment(train.signals[ids], train.mean_abs[ids], config.snr_range, config.clean_fraction, gen)
            b1 = b1_inputs(train.params[ids.numpy()], config, gen)
            with _autocast(device, config.amp):
                predicted = module.normalised(re.to(device), im.to(device), None if b1 is None else b1.to(device))
                loss = torch.nn.functional.mse_loss(predicted.float(), y_train[ids].to(device))
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # the scaler is a pass-through unless amp is fp16 on CUDA
            scaler.step(optimiser)
            scaler.update()
            total += float(loss.detach()) * ids.numel()
            seen += ids.numel()
        module.eval()
        val_loss = float(torch.nn.functional.mse_loss(  # in fp32 (amp or not): an honest early-stopping figure
            _predict_normalised(module, val_re.to(device), val_im.to(device),
                                None if val_b1 is None else val_b1.to(device)).cpu(), y_val))
        history.append({"epoch": epoch + 1, "train_loss": total / seen, "val_loss": val_loss, "signals": seen,
                        "lr": optimiser.param_groups[0]["lr"]})
        epochs.set_postfix(train=f"{history[-1]['train_loss']:.2e}", val=f"{val_loss:.2e}",
                           lr=f"{history[-1]['lr']:.0e}")
        if val_loss < best_loss * (1 - 1e-3):
            best_loss, best_state, best_epoch, stale = val_loss, copy.deepcopy(module.state_dict()), epoch + 1, 0
        else:
            stale += 1
        scheduler.step(val_loss)
        if stale >= config.patience:
            log.info("early stop after epoch %d (best %d)", epoch + 1, best_epoch)
            break
        if time.perf_counter() > deadline:
            log.info("time budget of %g min reached after epoch %d", config.max_minutes, epoch + 1)
            break
    epochs.close()
    module.load_state_dict(best_state)
    module.eval()
    module.to("cpu")
    predicted = module.scaling(_predict_normalised(module, val_re, val_im, val_b1)).numpy()
    metrics = {}
    for p, name in enumerate(out_space.names):
        err = predicted[:, p] - val.params[:, p]
        metrics[name] = {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))),
                         "median_rel_error": float(np.median(np.abs(err) / val.params[:, p]))}
    table = FingerprintTable.build(schedule, basis, space, n_nodes=config.table_nodes,
                                   n_b1_nodes=config.table_b1_nodes, n_states=config.n_states,
                                   slice_profile=config.slice_profile)
    module.attach(basis, table)
    metadata = {
        "architecture": {"name": config.arch, "options": config.arch_options,
                         "description": ARCHITECTURES[config.arch][2],
                         "n_parameters": int(sum(p.numel() for p in network.parameters()))},
        "input": {"kind": kind, "channels": channels_of(kind), "length": int(length), "sign_margin": sign_margin,
                  "b1": config.b1_input, "b1_range": list(space.b1_range) if config.b1_input else None,
                  "normalisation": "phase aligned (half the angle of sum x^2, sign by the reference buffer), divided "
                                   "by the complex norm, times sqrt(length); see mrf_core.mapping.inputs"},
        "outputs": {"names": out_space.names, "units": ["ms", "ms", "relative"][:n_out],
                    "ranges": [list(r) for r in out_space.ranges], "scaling": space.scaling,
                    "note": "forward(re, im) returns the parameters in their units, clamped to the ranges"},
        "parameter_space": space.to_dict(),
        "schedule": schedule.to_dict(),
        "basis": {"role": "input" if coefficient_model else "score", "hash": basis.hash, "rank": basis.rank,
                  "signal_phase": [basis.signal_phase.real, basis.signal_phase.imag],
                  "residual_energy": basis.residual_energy(),
                  "source": config.basis_dictionary or f"percent grid {config.basis_step_pct:g} % over the training "
                                                       "ranges"},
        "table": {"shape": list(table.shape), "axes": ["log t1_ms", "log t2_ms", "b1"][: len(table.shape)],
                  "interpolation": "Catmull-Rom cubic per axis", "n_states": config.n_states},
        "training": {**config.to_dict(), "device": str(device), "torch_version": torch.__version__,
                     "torch_threads": torch.get_num_threads(),
                     "epochs_run": len(history), "best_epoch": best_epoch, "best_val_loss": best_loss,
                     "final_train_loss": history[-1]["train_loss"], "val_metrics": metrics,
                     "seconds": round(time.perf_counter() - start, 1), "history": history},
    }
    if out is not None:
        write_archive(module, metadata, out)
    return module, metadata


# Named recipes. "default" makes mrf_core/data/default_model.pt, "b1-map" the model the chain maps with when a
# B1 map is given (mrf_core/data/default_b1_model.pt; B1 0.6-1.4 as an input, 65 table nodes per log axis to keep
# the 3-axis table at 3.4 MB: the B1 axis's interpolation, not T1/T2's, bounds that table's accuracy):
#   mrf train --preset default --threads 1 --out mrf_core/data/default_model.pt
#   mrf train --preset b1-map --threads 1 --out mrf_core/data/default_b1_model.pt
_DEFAULT_RECIPE = {
    "arch": "mlp", "input_kind": "coefficients", "rank": 10, "arch_options": {"width": 128}, "n_train": 200_000,
    "n_val": 20_000, "epochs": 40, "batch_size": 512, "lr": 2e-3, "patience": 8, "snr_range": (2.0, 200.0),
    "clean_fraction": 0.05, "n_states": 50, "seed": 0, "max_minutes": 25.0,
}
PRESETS: dict[str, dict] = {
    "default": _DEFAULT_RECIPE,
    "b1-map": {**_DEFAULT_RECIPE, "b1_input": True, "space": {"b1_range": (0.6, 1.4)}, "table_nodes": 65},
}
