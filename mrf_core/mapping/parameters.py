"""Tissue parameters a network predicts: their ranges, how training draws them, how outputs are scaled.

Networks regress normalised targets u in [0, 1]: u = (g(v) - g(lo)) / (g(hi) - g(lo)) with g = log
("log" scaling: the same relative precision over decades of T1/T2, the default) or g = identity ("linear":
the same absolute precision, what an RMSE in ms rewards). `OutputScaling` is the scriptable inverse that
the exported model applies, so a TorchScript consumer gets milliseconds, clamped to the trained range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from mrf_core.errors import MrfError

SCALINGS = ("log", "linear")
DISTRIBUTIONS = ("log-uniform", "uniform")


class MappingConfigError(MrfError):
    """A network, training or parameter-range setting that cannot work: the message names it."""


@dataclass(frozen=True)
class ParameterSpace:
    """Ranges (T1, T2 in ms, B1 relative or None when B1 is not predicted), the training distribution and
    the output scaling. Drawn tissues keep T2 < T1 (T2 <= T1 cannot be told apart in a continuous draw)."""

    t1_range_ms: tuple[float, float] = (10.0, 5000.0)
    t2_range_ms: tuple[float, float] = (2.0, 2000.0)
    b1_range: tuple[float, float] | None = None
    distribution: str = "log-uniform"
    scaling: str = "log"

    def __post_init__(self) -> None:
        for name in ("t1_range_ms", "t2_range_ms", "b1_range"):
            rng = getattr(self, name)
            if rng is None:
                continue
            lo, hi = (float(v) for v in rng)
            if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi):
                raise MappingConfigError(f"{name} = ({lo}, {hi}) must satisfy 0 < low < high")
            object.__setattr__(self, name, (lo, hi))
        if self.t2_range_ms[0] >= self.t1_range_ms[1]:
            raise MappingConfigError(f"t2_range_ms {self.t2_range_ms} leaves no T2 < T1 in t1_range_ms "
                                     f"{self.t1_range_ms}")
        if self.distribution not in DISTRIBUTIONS:
            raise MappingConfigError(f"distribution = {self.distribution!r} must be one of {DISTRIBUTIONS}")
        if self.scaling not in SCALINGS:
            raise MappingConfigError(f"scaling = {self.scaling!r} must be one of {SCALINGS}")

    @property
    def names(self) -> list[str]:
        return ["t1_ms", "t2_ms"] + (["b1"] if self.b1_range is not None else [])

    @property
    def ranges(self) -> list[tuple[float, float]]:
        return [self.t1_range_ms, self.t2_range_ms] + ([self.b1_range] if self.b1_range is not None else [])

    @property
    def log_axes(self) -> list[bool]:
        """Per output: log scaling? B1 is always linear (it is ~1 and never spans decades)."""
        return [self.scaling == "log", self.scaling == "log"] + ([False] if self.b1_range is not None else [])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ParameterSpace:
        b1 = d.get("b1_range")
        return cls(tuple(d["t1_range_ms"]), tuple(d["t2_range_ms"]), tuple(b1) if b1 is not None else None,
                   d["distribution"], d["scaling"])

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n random tissues (n, n_outputs) float64 from the distribution, T2 < T1 by rejection."""
        out = np.empty((0, 2))
        while out.shape[0] < n:
            m = 2 * (n - out.shape[0]) + 16
            draws = [self._draw(r, m, rng) for r in (self.t1_range_ms, self.t2_range_ms)]
            block = np.stack(draws, axis=1)
            out = np.concatenate([out, block[block[:, 1] < block[:, 0]]])
        out = out[:n]
        if self.b1_range is not None:
            out = np.concatenate([out, rng.uniform(*self.b1_range, size=(n, 1))], axis=1)
        return out

    def _draw(self, bounds: tuple[float, float], m: int, rng: np.random.Generator) -> np.ndarray:
        lo, hi = bounds
        if self.distribution == "uniform":
            return rng.uniform(lo, hi, m)
        return np.exp(rng.uniform(np.log(lo), np.log(hi), m))

    def normalise(self, values: np.ndarray) -> np.ndarray:
        """Parameters (n, n_outputs) in their units -> normalised targets in [0, 1]."""
        lo, span = self._affine()
        g = np.where(self.log_axes, np.log(np.maximum(values, 1e-30)), values)
        return ((g - lo) / span).astype(np.float32)

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        r = np.asarray(self.ranges, dtype=np.float64)
        g = np.where(np.asarray(self.log_axes)[:, None], np.log(r), r)
        return g[:, 0], g[:, 1] - g[:, 0]

    def output_scaling(self) -> OutputScaling:
        lo, span = self._affine()
        return OutputScaling(lo, span, self.log_axes)


class OutputScaling(nn.Module):
    """Normalised outputs (N, n_outputs) -> parameters in their units, clamped to the trained ranges."""

    def __init__(self, lo, span, log_axes):
        super().__init__()
        self.register_buffer("lo", torch.as_tensor(np.asarray(lo), dtype=torch.float32))
        self.register_buffer("span", torch.as_tensor(np.asarray(span), dtype=torch.float32))
        self.register_buffer("log_axis", torch.as_tensor(np.asarray(log_axes, dtype=bool)))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        g = self.lo + u.clamp(0.0, 1.0) * self.span
        return torch.where(self.log_axis, torch.exp(g), g)
