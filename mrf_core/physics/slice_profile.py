"""2-D slice profiles: the flip angle varies across an excited slice, and a voxel's signal is the sum of its
sub-slices' signals (Ma et al., MRM 78:2190, 2017 model the profile in the dictionary this way).

Pulse: "hann-sinc", a sinc of `tbw` zero crossings over the pulse (time-bandwidth product), Hann-windowed:
p(t) = sinc(tbw t) (1 + cos 2 pi t) / 2 for t in [-1/2, 1/2] (time in pulse durations). Small-tip
approximation: the flip angle at slice position z (in nominal slice thicknesses, the bandwidth's FWHM) is
the nominal one times m(z) = P(tbw z) / P(0), P the Fourier transform of p, in closed form with the sine
integral Si:
    G(f) = [Si(pi (tbw + 2 f) / 2) + Si(pi (tbw - 2 f) / 2)] / (pi tbw)     (sinc x rect)
    P(f) = G(f) / 2 + [G(f - 1) + G(f + 1)] / 4                             (the Hann window's shifts)
FWHM of m: 1.197 / 0.995 / 1.000 slice thicknesses at TBW 2 / 4 / 8; |m| > 1 % out to 0.88 at TBW 4; side
lobes < 0.7 %, negative (a negative flip gives the negated FISP fingerprint: the y -> -y mirror of the
experiment conjugates F+0, which is imaginary at RF phase 0). The small-tip approximation ignores the
pulse's nonlinearity at FISP-MRF's larger flips (up to 70 deg): it models the profile's shape, not a Bloch
simulation of the pulse.

Signal of a voxel: 2 sum_k w_k sign(m_k) f(T1, T2, B1 |m_k|), midpoint rule over n_positions sub-slices
of [0, extent] (the profile is symmetric), i.e. the integral over z of the sub-slice signals, so an ideal
rectangular profile would give the plain fingerprint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.special import sici

from mrf_core.errors import MrfError
from mrf_core.physics.epg import DEFAULT_CHUNK_ATOMS, DEFAULT_N_STATES, simulate_fingerprints, validate_tissue
from mrf_core.physics.sequence import FispSchedule

PULSE_SHAPES = ("hann-sinc",)
MIN_FLIP_SCALE = 1e-3  # sub-slices with |m| below this add nothing measurable and are skipped


class SliceProfileError(MrfError):
    """A slice-profile specification that cannot be used: the message names it and what is accepted."""


@dataclass(frozen=True)
class SliceProfile:
    """The RF pulse (shape, time-bandwidth product) and the sampling of its profile (n_positions sub-slices
    over [0, extent] nominal slice thicknesses)."""

    tbw: float = 4.0
    shape: str = "hann-sinc"
    n_positions: int = 20
    extent: float = 1.0

    def __post_init__(self) -> None:
        if self.shape not in PULSE_SHAPES:
            raise SliceProfileError(f"pulse shape {self.shape!r} must be one of {', '.join(PULSE_SHAPES)}")
        if not (math.isfinite(self.tbw) and 1.0 <= self.tbw <= 50.0):
            raise SliceProfileError(f"time-bandwidth product {self.tbw!r} must be in [1, 50]")
        if self.n_positions < 1 or not self.extent > 0:
            raise SliceProfileError(f"n_positions = {self.n_positions} and extent = {self.extent} must be >= 1, > 0")

    @classmethod
    def parse(cls, text: str) -> SliceProfile | None:
        """'none' or '' -> None (ideal profile); 'SHAPE:TBW' or 'SHAPE:TBW:N' (N sub-slices), e.g. 'hann-sinc:4'."""
        text = text.strip().lower()
        if text in ("", "none"):
            return None
        parts = text.split(":")
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            return cls(float(parts[1]), parts[0], *(int(p) for p in parts[2:]))
        except ValueError:
            raise SliceProfileError(f"slice profile {text!r}: expected 'none' or SHAPE:TBW[:N], e.g. hann-sinc:4 "
                                    f"(shapes: {', '.join(PULSE_SHAPES)})") from None

    @property
    def spec(self) -> str:
        """The text `parse` reads back (stored with dictionaries and in headers)."""
        return f"{self.shape}:{self.tbw:g}:{self.n_positions}"

    def describe(self) -> str:
        return f"{self.shape} TBW {self.tbw:g} ({self.n_positions} sub-slices over +-{self.extent:g} thickness)"

    def to_dict(self) -> dict:
        return asdict(self)

    def flip_scale(self, z) -> np.ndarray:
        """m(z): the flip angle at position z (nominal slice thicknesses from the centre) over the nominal."""
        f = self.tbw * np.asarray(z, dtype=np.float64)
        return _hann_sinc_spectrum(f, self.tbw) / _hann_sinc_spectrum(np.zeros(1), self.tbw)[0]

    def sub_slices(self) -> tuple[np.ndarray, np.ndarray]:
        """(flip scales m_k, weights 2 w_k) of the sub-slices the signal sums (module docstring)."""
        step = self.extent / self.n_positions
        scales = self.flip_scale((np.arange(self.n_positions) + 0.5) * step)
        keep = np.abs(scales) >= MIN_FLIP_SCALE
        return scales[keep], np.full(int(keep.sum()), 2.0 * step)


def spec_of(profile: SliceProfile | None) -> str:
    """A profile's spec, 'none' for the ideal profile (None)."""
    return profile.spec if profile is not None else "none"


def _sinc_rect_spectrum(f: np.ndarray, tbw: float) -> np.ndarray:
    return (sici(np.pi * (tbw + 2 * f) / 2)[0] + sici(np.pi * (tbw - 2 * f) / 2)[0]) / (np.pi * tbw)


def _hann_sinc_spectrum(f: np.ndarray, tbw: float) -> np.ndarray:
    shifted = _sinc_rect_spectrum(f - 1, tbw) + _sinc_rect_spectrum(f + 1, tbw)
    return 0.5 * _sinc_rect_spectrum(f, tbw) + 0.25 * shifted


@torch.no_grad()
def profile_fingerprints(
    schedule: FispSchedule,
    t1_ms,
    t2_ms,
    b1,
    profile: SliceProfile,
    n_states: int = DEFAULT_N_STATES,
    device: str | torch.device | None = None,
    chunk_atoms: int = DEFAULT_CHUNK_ATOMS,
) -> torch.Tensor:
    """Real fingerprints (n_atoms, n_timepoints) float32 of atoms excited with `profile`: each the weighted sum
    of its sub-slices' EPG fingerprints at flip scale B1 |m_k| (module docstring). Atoms go through the EPG in
    chunks of about chunk_atoms sub-slice atoms."""
    t1, t2, b1 = validate_tissue(t1_ms, t2_ms, b1)
    scales, weights = profile.sub_slices()
    signed = torch.as_tensor(np.sign(scales) * weights, dtype=torch.float32)
    magnitude = torch.as_tensor(np.abs(scales), dtype=torch.float64)
    n_sub = scales.size
    per_chunk = max(1, chunk_atoms // n_sub)
    out = None
    for lo in range(0, t1.numel(), per_chunk):
        ids = slice(lo, min(lo + per_chunk, t1.numel()))
        n = t1[ids].numel()
        f = simulate_fingerprints(schedule, t1[ids].repeat_interleave(n_sub), t2[ids].repeat_interleave(n_sub),
                                  (b1[ids, None] * magnitude[None]).reshape(-1), n_states=n_states, device=device,
                                  chunk_atoms=chunk_atoms)
        summed = (f.reshape(n, n_sub, -1) * signed.to(f.device)[None, :, None]).sum(dim=1)
        if out is None:
            out = torch.empty(t1.numel(), summed.shape[1], device=summed.device)
        out[ids] = summed
    return out
