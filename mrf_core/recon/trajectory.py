"""Variable-density spiral trajectory for MRF: design, per-TR interleave order, density compensation.

Units (one convention for simulator, reader, NUFFT and header): k-space positions in cycles per FOV,
so a matrix of N pixels is sampled up to |k| = N/2. Complex k = kx + i ky; as arrays, `traj[:, 0]` is
kx, which pairs with the image's last axis (columns, x), and `traj[:, 1]` is ky, paired with the rows
(y). The forward model is y(k) = sum_r x(r) exp(-2 pi i k.r / N), pixel r = index - N//2, so finufft's
coordinate in [-pi, pi) is 2 pi k / N (`nufft_coords`). Gradients in mT/m, slew in T/m/s, times in ms
(the ADC dwell in us).

Design (`design_spiral`): a spiral-out k(r) = r exp(i theta(r)) whose FOV falls linearly with radius
from fov_mm * n_interleaves / centre_interleaves at the centre to fov_mm at the edge, so that
`centre_interleaves` interleaves fully sample the centre and all `n_interleaves` the edge (Jiang 2015:
24 and 48). The radius is advanced in time as fast as the slew limit allows and capped by the gradient
limit (the classic constrained-spiral integration, e.g. Hargreaves' vds), on a raster 4x finer than the
ADC dwell, then sampled at the dwell. Jiang's FISP-MRF numbers (300 mm, 256, 48, 40 mT/m, 150 T/m/s,
2 us) give a 4.1 ms readout of 2074 samples.

Interleave order (`Spiral.interleaves_of_tr`): interleave j is interleave 0 rotated counter-clockwise
by `angle_deg(j)`.
- "sequential" (default): angle = 360 j / n_interleaves; readout s of TR t plays interleave
  (t * interleave_step + s * (n_interleaves // interleaves_per_tr)) mod n_interleaves. With one
  readout per TR and step 1 the spiral turns by 360/48 = 7.5 deg per TR.
- "golden": angle = j * 137.508 deg (360 / phi^2, the 2D golden angle); readout s of TR t plays
  j = t * interleaves_per_tr + s, a readout counter that never repeats (n_interleaves then only
  sets the density of the design).

Density compensation (`pipe_menon_dcf`): Pipe & Menon's fixed-point iteration w <- w / (C * C^T w),
with C a Kaiser-Bessel kernel 4 cycles/FOV wide on a 2x oversampled grid, scaled so that the weights are the
k-space area (in (cycles/FOV)^2) each sample stands for: an adjoint NUFFT with these weights, divided
by N^2, reconstructs the image (`Spiral.dcf` gives them for one interleave of the full set).
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np
import scipy.sparse

from mrf_core.errors import MrfError

GAMMA_HZ_PER_T = 42.577478e6  # proton gyromagnetic ratio / (2 pi)
GOLDEN_ANGLE_DEG = 180.0 * (3.0 - math.sqrt(5.0))  # 137.5078 deg
# numpy >= 2 renamed trapz to trapezoid (trapz is deprecated there); numpy 1.26 (Gadgetron's image) has only trapz
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # noqa: NPY201
TRAJECTORY_ID = "mrf_vds"
ROTATIONS = ("sequential", "golden")
_DESIGN_OVERSAMPLING = 4  # integration steps per ADC dwell
_MAX_DESIGN_STEPS = 2_000_000  # 4 s of readout at 2 us dwell: nothing sensible is longer
_MAX_READOUT_INDEX = 65535  # ISMRMRD encoding counters are uint16


class TrajectoryError(MrfError):
    """Trajectory parameters that cannot be designed or played: the message names the field and value."""


@dataclass(frozen=True)
class SpiralParams:
    """Everything that defines the spiral and how it is played per TR (all of it goes in the header).

    fov_mm, matrix: the image the spiral supports; n_interleaves: interleaves that fully sample the
    k-space edge; centre_interleaves: those that fully sample the centre (sets the variable density);
    max_grad_mT_per_m, max_slew_T_per_m_per_s: hardware limits; dwell_us: ADC sampling interval;
    max_readout_ms: longest readout allowed (None: no limit); rotation, interleaves_per_tr,
    interleave_step: the per-TR order (module docstring).
    """

    fov_mm: float = 300.0
    matrix: int = 256
    n_interleaves: int = 48
    centre_interleaves: int = 24
    max_grad_mT_per_m: float = 40.0
    max_slew_T_per_m_per_s: float = 150.0
    dwell_us: float = 2.0
    max_readout_ms: float | None = None
    rotation: str = "sequential"
    interleaves_per_tr: int = 1
    interleave_step: int = 1

    def __post_init__(self) -> None:
        positive = ("fov_mm", "matrix", "n_interleaves", "centre_interleaves", "max_grad_mT_per_m",
                    "max_slew_T_per_m_per_s", "dwell_us", "interleaves_per_tr", "interleave_step")
        for name in positive:
            value = getattr(self, name)
            is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not (is_number and math.isfinite(value) and value > 0):
                raise TrajectoryError(f"{name} = {value!r} must be a number > 0")
        for name in ("matrix", "n_interleaves", "centre_interleaves", "interleaves_per_tr", "interleave_step"):
            if int(getattr(self, name)) != getattr(self, name):
                raise TrajectoryError(f"{name} = {getattr(self, name)!r} must be an integer")
        if self.matrix < 2:
            raise TrajectoryError(f"matrix = {self.matrix} must be >= 2")
        if self.centre_interleaves > self.n_interleaves:
            raise TrajectoryError(
                f"centre_interleaves = {self.centre_interleaves} exceeds n_interleaves = {self.n_interleaves}"
            )
        if self.interleaves_per_tr > self.n_interleaves:
            raise TrajectoryError(
                f"interleaves_per_tr = {self.interleaves_per_tr}: only n_interleaves = "
                f"{self.n_interleaves} interleaves exist"
            )
        if self.rotation not in ROTATIONS:
            raise TrajectoryError(f"rotation = {self.rotation!r} must be one of {', '.join(ROTATIONS)}")
        if self.max_readout_ms is not None and not self.max_readout_ms > 0:
            raise TrajectoryError(f"max_readout_ms = {self.max_readout_ms!r} must be > 0 (or None)")

    @property
    def k_max(self) -> float:
        """Largest |k| in cycles per FOV."""
        return self.matrix / 2.0

    # ---- ISMRMRD encoding.trajectoryDescription -------------------------------------------------
    _LONGS = ("matrix", "n_interleaves", "centre_interleaves", "interleaves_per_tr", "interleave_step")
    _DOUBLES = ("fov_mm", "max_grad_mT_per_m", "max_slew_T_per_m_per_s", "dwell_us", "max_readout_ms")

    def to_ismrmrd(self, n_samples: int | None = None):
        """An ismrmrd trajectoryDescriptionType, identifier 'mrf_vds'; rotation as a string parameter.

        n_samples (informative; the reader checks the acquisitions against it) is added when given.
        """
        import ismrmrd

        xsd = ismrmrd.xsd
        longs = [xsd.userParameterLongType(name=n, value=int(getattr(self, n))) for n in self._LONGS]
        if n_samples is not None:
            longs.append(xsd.userParameterLongType(name="n_samples", value=int(n_samples)))
        doubles = [
            xsd.userParameterDoubleType(name=n, value=float(getattr(self, n)))
            for n in self._DOUBLES
            if getattr(self, n) is not None
        ]
        return xsd.trajectoryDescriptionType(
            identifier=TRAJECTORY_ID,
            userParameterLong=longs,
            userParameterDouble=doubles,
            userParameterString=[xsd.userParameterStringType(name="rotation", value=self.rotation)],
            comment="variable-density spiral-out, k in cycles/FOV (|k| <= matrix/2); FOV falls linearly "
            "from fov_mm*n_interleaves/centre_interleaves at the centre to fov_mm at the edge",
        )

    @classmethod
    def from_ismrmrd(cls, description) -> tuple[SpiralParams, int | None]:
        """(params, n_samples or None) from an 'mrf_vds' trajectoryDescription; the error names the field."""
        if description is None or description.identifier != TRAJECTORY_ID:
            found = None if description is None else description.identifier
            raise TrajectoryError(f"trajectoryDescription identifier = {found!r}, expected {TRAJECTORY_ID!r}")
        values: dict = {p.name: int(p.value) for p in description.userParameterLong}
        values.update({p.name: float(p.value) for p in description.userParameterDouble})
        values.update({p.name: str(p.value) for p in description.userParameterString})
        n_samples = values.pop("n_samples", None)
        known = set(cls._LONGS) | set(cls._DOUBLES) | {"rotation"}
        missing = sorted(known - {"max_readout_ms"} - set(values))
        if missing:
            raise TrajectoryError(f"trajectoryDescription {TRAJECTORY_ID!r} lacks the parameter {missing[0]!r}")
        return cls(**{k: v for k, v in values.items() if k in known}), n_samples


@dataclass(frozen=True, eq=False)
class Spiral:
    """A designed spiral: interleave 0 sampled at the ADC dwell, and the per-TR rotation rules.

    k_cycles: (n_samples,) complex k = kx + i ky of interleave 0 in cycles/FOV, starting at 0.
    peak_grad_mT_per_m, peak_slew_T_per_m_per_s: the largest values the design raster reached.
    """

    params: SpiralParams
    k_cycles: np.ndarray
    peak_grad_mT_per_m: float
    peak_slew_T_per_m_per_s: float

    @property
    def n_samples(self) -> int:
        return int(self.k_cycles.size)

    @property
    def readout_ms(self) -> float:
        return (self.n_samples - 1) * self.params.dwell_us / 1000.0

    def interleaves_of_tr(self, tr: int) -> np.ndarray:
        """Interleave indices played in TR `tr` (0-based), one per readout, in playing order."""
        p = self.params
        s = np.arange(p.interleaves_per_tr)
        if p.rotation == "golden":
            return tr * p.interleaves_per_tr + s
        return (tr * p.interleave_step + s * (p.n_interleaves // p.interleaves_per_tr)) % p.n_interleaves

    def check_schedule_length(self, n_timepoints: int) -> None:
        """Golden-angle readout counters must fit ISMRMRD's 16-bit encoding counters."""
        last = int(self.interleaves_of_tr(n_timepoints - 1).max())
        if last > _MAX_READOUT_INDEX:
            raise TrajectoryError(
                f"{n_timepoints} TRs x interleaves_per_tr = {self.params.interleaves_per_tr} golden-angle "
                f"readouts exceed the largest interleave index {_MAX_READOUT_INDEX}"
            )

    def angle_deg(self, interleave) -> np.ndarray:
        """Rotation of interleave(s) relative to interleave 0, degrees counter-clockwise, in [0, 360)."""
        j = np.asarray(interleave, dtype=np.float64)
        step = GOLDEN_ANGLE_DEG if self.params.rotation == "golden" else 360.0 / self.params.n_interleaves
        return np.mod(j * step, 360.0)

    def traj(self, interleave) -> np.ndarray:
        """Trajectory of interleave(s): (n_samples, 2) float32 (kx, ky) in cycles/FOV; (n, n_samples, 2)
        for an array of interleaves."""
        angle = np.deg2rad(self.angle_deg(interleave))
        k = np.multiply.outer(np.exp(1j * angle), self.k_cycles)
        return np.stack([k.real, k.imag], axis=-1).astype(np.float32)

    def dcf(self) -> np.ndarray:
        """Density compensation of one interleave within the full set of n_interleaves uniformly rotated
        ones: (n_samples,) float32, area per sample in (cycles/FOV)^2 (rotation invariant)."""
        return _uniform_set_dcf(self.params, self.k_cycles.tobytes())


def design_spiral(params: SpiralParams) -> Spiral:
    """Design the spiral of `params` (cached: the same parameters give the same object)."""
    return _design(params)


@functools.lru_cache(maxsize=16)
def _design(p: SpiralParams) -> Spiral:
    fov_m = p.fov_mm / 1000.0
    k_max = p.matrix / (2.0 * fov_m)  # 1/m
    centre_factor = p.n_interleaves / p.centre_interleaves
    # theta'(r) = 2 pi FOV(r) / n_interleaves, FOV(r) = fov (c + (1 - c) r / k_max): one turn per
    # n_interleaves / FOV(r) of radius, i.e. Nyquist for the whole set of interleaves.
    a = 2.0 * math.pi * fov_m / p.n_interleaves
    grad_max = GAMMA_HZ_PER_T * p.max_grad_mT_per_m / 1000.0  # |dk/dt| limit, 1/m/s
    slew_max = GAMMA_HZ_PER_T * p.max_slew_T_per_m_per_s  # |d2k/dt2| limit, 1/m/s^2
    dt = p.dwell_us * 1e-6 / _DESIGN_OVERSAMPLING
    dtheta2 = a * (1.0 - centre_factor) / k_max
    radius, speed = 0.0, 0.0
    radii = [0.0]
    while radius < k_max:
        if len(radii) > _MAX_DESIGN_STEPS:
            raise TrajectoryError(f"spiral design did not converge: readout > {_MAX_DESIGN_STEPS * dt * 1e3:g} ms")
        dtheta = a * (centre_factor + (1.0 - centre_factor) * radius / k_max)
        # k = r e^{i theta(r)}: d2k/dt2 = e^{i theta} (A r'' + C), A = 1 + i r theta', C = r'^2 (...)
        A = complex(1.0, radius * dtheta)
        C = speed * speed * complex(-radius * dtheta * dtheta, 2.0 * dtheta + radius * dtheta2)
        b = (A * C.conjugate()).real
        aa = abs(A) ** 2
        disc = b * b - aa * (abs(C) ** 2 - slew_max * slew_max)
        accel = (-b + math.sqrt(disc)) / aa if disc > 0 else -b / aa
        speed = min(speed + accel * dt, grad_max / abs(A))
        radius += speed * dt
        radii.append(radius)
    r = np.asarray(radii)
    k_fine = r * np.exp(1j * a * (centre_factor * r + (1.0 - centre_factor) * r * r / (2.0 * k_max)))
    grad = np.diff(k_fine) / dt / GAMMA_HZ_PER_T * 1000.0  # mT/m
    slew = np.diff(grad) / dt / 1000.0  # T/m/s
    k = k_fine[::_DESIGN_OVERSAMPLING] * fov_m
    if (len(k_fine) - 1) % _DESIGN_OVERSAMPLING:
        k = np.append(k, k_fine[-1] * fov_m)
    k[-1] *= p.k_max / abs(k[-1])  # the last sample (past k_max by < 1/4 sample) ends on the edge
    spiral = Spiral(p, k, float(np.abs(grad).max()), float(np.abs(slew).max()))
    spacing = float(np.abs(np.diff(k)).max())
    if spacing > 1.0 + 1e-6:
        raise TrajectoryError(
            f"dwell_us = {p.dwell_us:g}: samples are up to {spacing:.2f} cycles/FOV apart along the "
            f"spiral; more than 1 aliases the FOV (use dwell_us <= {p.dwell_us / spacing:.2f})"
        )
    if p.max_readout_ms is not None and spiral.readout_ms > p.max_readout_ms:
        raise TrajectoryError(
            f"max_readout_ms = {p.max_readout_ms:g}: the spiral needs {spiral.readout_ms:.2f} ms with these "
            f"limits; allow more interleaves, a stronger gradient or a longer readout"
        )
    spiral.k_cycles.setflags(write=False)
    return spiral


@functools.lru_cache(maxsize=8)
def _uniform_set_dcf(p: SpiralParams, k_bytes: bytes) -> np.ndarray:
    k0 = np.frombuffer(k_bytes, dtype=np.complex128)
    rotations = np.exp(2j * np.pi * np.arange(p.n_interleaves) / p.n_interleaves)
    k = np.multiply.outer(rotations, k0).reshape(-1)
    w = pipe_menon_dcf(np.stack([k.real, k.imag], axis=-1))
    w = w.reshape(p.n_interleaves, -1).mean(axis=0).astype(np.float32)  # equal by symmetry, up to the grid
    w.setflags(write=False)
    return w


# ---- Gadgetron's HargreavesVDS2000 description (Siemens spiral data through siemens_to_ismrmrd) ---------
HARGREAVES_ID = "HargreavesVDS2000"
_GAUSS_GAMMA_HZ_PER_G = 4258.0  # Gadgetron's vds GAMMA (Hz/G)
_VDS_MAX_STEPS = 100_000  # Gadgetron's ngmax


@dataclass(frozen=True)
class HargreavesVds:
    """Gadgetron's `HargreavesVDS2000` spiral: Hargreaves' vds design as Gadgetron's spiral gadgets compute it.

    interleaves, sampling_time_ns (gradient raster = ADC dwell), max_grad_G_per_cm, max_slew_G_per_cm_per_s,
    fov_coefficients_cm (FOV(kr) = sum_i c_i kr^i, kr in 1/cm), krmax_per_cm. Conventions (Gadgetron's
    calculate_vds / create_rotations / calculate_trajectories): forward-Euler integration of kr and theta at
    the sampling time; the gradient negated and halved, so the trajectory is -k / (2 krmax) in [-0.5, 0.5]
    (-k FOV in cycles/FOV); interleave j rotated clockwise by 2 pi j / interleaves; sample n at k after n
    steps (sample 0 at 0).
    """

    interleaves: int
    sampling_time_ns: int
    max_grad_G_per_cm: float
    max_slew_G_per_cm_per_s: float
    fov_coefficients_cm: tuple[float, ...]
    krmax_per_cm: float

    _LONGS = {"interleaves": "interleaves", "SamplingTime_ns": "sampling_time_ns"}
    _DOUBLES = {"MaxGradient_G_per_cm": "max_grad_G_per_cm", "MaxSlewRate_G_per_cm_per_s": "max_slew_G_per_cm_per_s",
                "krmax_per_cm": "krmax_per_cm"}

    def __post_init__(self) -> None:
        for name in ("interleaves", "sampling_time_ns", "max_grad_G_per_cm", "max_slew_G_per_cm_per_s", "krmax_per_cm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise TrajectoryError(f"{HARGREAVES_ID} parameter {name} = {value!r} must be > 0")
        if not self.fov_coefficients_cm or not self.fov_coefficients_cm[0] > 0:
            raise TrajectoryError(f"{HARGREAVES_ID} parameter FOVCoeff_1_cm = {self.fov_coefficients_cm[:1]} "
                                  "must be > 0")

    @classmethod
    def from_ismrmrd(cls, description) -> HargreavesVds:
        """From the trajectoryDescription's user parameters; the error names a missing one."""
        longs = {p.name: int(p.value) for p in description.userParameterLong}
        doubles = {p.name: float(p.value) for p in description.userParameterDouble}
        n_fov = longs.get("fov_coefficients", 1)
        needed = [*cls._LONGS, *cls._DOUBLES, *(f"FOVCoeff_{i}_cm" for i in range(1, n_fov + 1))]
        missing = [n for n in needed if n not in longs and n not in doubles]
        if missing:
            raise TrajectoryError(f"trajectoryDescription {HARGREAVES_ID!r} lacks the parameter {missing[0]!r}")
        values = {**longs, **doubles}
        return cls(**{attr: values[name] for name, attr in {**cls._LONGS, **cls._DOUBLES}.items()},
                   fov_coefficients_cm=tuple(values[f"FOVCoeff_{i}_cm"] for i in range(1, n_fov + 1)))

    @property
    def n_samples(self) -> int:
        """Samples of the design (one per gradient raster step until krmax)."""
        return int(_hargreaves_k(self).size)

    def traj(self, interleave, n_samples: int, fov_mm: float) -> np.ndarray:
        """Trajectory of interleave(s) in cycles/FOV of `fov_mm` (as `Spiral.traj`); TrajectoryError when the
        design has fewer samples than the readouts."""
        k = _hargreaves_k(self)
        if k.size < n_samples:
            raise TrajectoryError(
                f"{HARGREAVES_ID}: the design has {k.size} samples, the readouts {n_samples}: check SamplingTime_ns "
                f"and krmax_per_cm"
            )
        angle = -2.0 * math.pi * np.asarray(interleave, dtype=np.float64) / self.interleaves
        cycles = np.multiply.outer(np.exp(1j * angle), -k[:n_samples]) * (fov_mm / 10.0)  # -k/(2 krmax) * matrix
        return np.stack([cycles.real, cycles.imag], axis=-1).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _hargreaves_k(p: HargreavesVds) -> np.ndarray:
    """k (1/cm, complex) of Hargreaves' design at each step, k[0] = 0 (Gadgetron's calc_vds loop)."""
    dt = p.sampling_time_ns * 1e-9
    gamma, n = _GAUSS_GAMMA_HZ_PER_G, p.interleaves
    kr = krdot = theta = thetadot = 0.0
    out = [0j]
    while kr < p.krmax_per_cm and len(out) <= _VDS_MAX_STEPS:
        fov = sum(c * kr**i for i, c in enumerate(p.fov_coefficients_cm))
        dfov = sum(i * c * kr ** (i - 1) for i, c in enumerate(p.fov_coefficients_cm) if i)
        gmax = min(p.max_grad_G_per_cm, 1.0 / gamma / fov / dt)  # the FOV's limit too
        max_krdot = math.sqrt((gamma * gmax) ** 2 / (1.0 + (2.0 * math.pi * fov * kr / n) ** 2))
        tpf = 2.0 * math.pi * fov / n
        if krdot > max_krdot:
            krdotdot = (max_krdot - krdot) / dt
        else:  # the slew limit: the larger root of a quadratic in krdotdot
            qa = 1.0 + tpf**2 * kr * kr
            qb = 2.0 * tpf**2 * kr * krdot**2 + 2.0 * tpf**2 / fov * dfov * kr * kr * krdot**2
            qc = ((tpf**2 * kr * krdot**2) ** 2 + 4.0 * tpf**2 * krdot**4 + (tpf * dfov / fov * kr * krdot**2) ** 2
                  + 4.0 * tpf**2 * dfov / fov * kr * krdot**4 - (gamma * p.max_slew_G_per_cm_per_s) ** 2)
            disc = qb * qb / (4.0 * qa * qa) - qc / qa
            krdotdot = -qb / (2.0 * qa) + (math.sqrt(disc) if disc >= 0 else 0.0)
        thetadotdot = tpf * dfov / fov * krdot**2 + tpf * krdotdot
        thetadot += thetadotdot * dt
        theta += thetadot * dt
        krdot += krdotdot * dt
        kr += krdot * dt
        out.append(kr * complex(math.cos(theta), math.sin(theta)))
    k = np.asarray(out[:-1])  # Gadgetron's trajectory: sample n is k after n steps, one per gradient sample
    k.setflags(write=False)
    return k


# ---- trajectory units ----------------------------------------------------------------------------
TRAJ_UNITS = ("cycles_per_fov", "normalised", "cycles_per_m", "rad_per_m")
_UNIT_WINDOW = (0.6, 1.05)  # a spiral's largest |k| relative to the edge of k-space, for telling units apart


def unit_edges(matrix: int, fov_mm: float) -> dict[str, float]:
    """The edge of k-space (matrix/2 in cycles/FOV) in each unit of TRAJ_UNITS."""
    fov_m = fov_mm / 1000.0
    return {"cycles_per_fov": matrix / 2.0, "normalised": 0.5, "cycles_per_m": matrix / (2.0 * fov_m),
            "rad_per_m": math.pi * matrix / fov_m}


def detect_units(k_reach: float, matrix: int, fov_mm: float) -> str:
    """The one unit in which a trajectory reaching |k| = k_reach ends near the edge of k-space (within
    _UNIT_WINDOW of it); TrajectoryError, naming the reach and the candidates, when none or several fit."""
    edges = unit_edges(matrix, fov_mm)
    fits = [u for u, edge in edges.items() if _UNIT_WINDOW[0] <= k_reach / edge <= _UNIT_WINDOW[1]]
    if len(fits) != 1:
        shown = ", ".join(f"{u} {e:.4g}" for u, e in edges.items())
        raise TrajectoryError(
            f"traj reaches |k| = {k_reach:.4g}, which {'fits ' + ' and '.join(fits) if fits else 'fits no unit'} "
            f"(the k-space edge in each: {shown}): give traj_units (--traj-units)"
        )
    return fits[0]


def nufft_coords(traj, matrix: int) -> tuple[np.ndarray, np.ndarray]:
    """finufft coordinates of trajectory points (..., 2) in cycles/FOV: (rows, columns) in radians,
    i.e. (2 pi ky / N, 2 pi kx / N), flattened, float64; pass them as finufft's (x, y) for an image
    array of shape (N, N) with isign = -1 (forward) or +1 (adjoint)."""
    t = np.asarray(traj, dtype=np.float64).reshape(-1, 2)
    scale = 2.0 * np.pi / matrix
    return t[:, 1] * scale, t[:, 0] * scale


# ---- density compensation ------------------------------------------------------------------------
_DCF_GRID_OVERSAMPLING = 2.0  # grid points per cycle/FOV
# 8 grid points = 4 cycles/FOV: >= 4 samples across the kernel even where they are sparsest (1 cycle/FOV
# apart), so that kernel sums over samples approximate its integral (a Cartesian grid gets w = 1 to 0.1 %).
_DCF_KERNEL_WIDTH = 8
_DCF_ITERATIONS = 30


def _kaiser_bessel(x: np.ndarray, width: float, beta: float) -> np.ndarray:
    u = np.clip(1.0 - (2.0 * x / width) ** 2, 0.0, None)
    return np.where(np.abs(x) < width / 2.0, np.i0(beta * np.sqrt(u)), 0.0)


def pipe_menon_dcf(traj, n_iter: int = _DCF_ITERATIONS) -> np.ndarray:
    """Pipe-Menon density compensation for arbitrary points (n, 2) in cycles/FOV: (n,) float64 weights,
    the k-space area each sample stands for (so sum(w) ~ pi (N/2)^2 for a disc filled up to N/2).

    Iterates w <- w / (C C^T w) with C the sparse Kaiser-Bessel gridding matrix (width 4 cycles/FOV on
    a 2x grid). 30 iterations settle the weights to ~1e-5 (median); the few samples on the rim of the
    covered disc, which have no neighbours outside, keep oscillating by a few %.
    """
    pts = np.asarray(traj, dtype=np.float64).reshape(-1, 2)
    if not np.all(np.isfinite(pts)):
        raise TrajectoryError("traj has non-finite values: cannot compute a density compensation")
    os_, width = _DCF_GRID_OVERSAMPLING, _DCF_KERNEL_WIDTH
    beta = math.pi * math.sqrt((width / os_ * (os_ - 0.5)) ** 2 - 0.8)  # Beatty et al. 2005
    g = pts * os_  # in grid units
    half = int(math.ceil(np.abs(g).max())) + width
    size = 2 * half + 1
    offsets = np.arange(width)
    first = np.floor(g - width / 2.0).astype(np.int64) + 1
    ix, iy = first[:, 0, None] + offsets, first[:, 1, None] + offsets
    wx = _kaiser_bessel(g[:, 0, None] - ix, width, beta)
    wy = _kaiser_bessel(g[:, 1, None] - iy, width, beta)
    cols = ((ix[:, :, None] + half) * size + (iy[:, None, :] + half)).reshape(len(pts), -1)
    vals = (wx[:, :, None] * wy[:, None, :]).reshape(len(pts), -1)
    rows = np.repeat(np.arange(len(pts)), width * width)
    grid = scipy.sparse.csr_matrix((vals.ravel(), (rows, cols.ravel())), shape=(len(pts), size * size))
    grid_t = grid.T.tocsr()
    w = np.ones(len(pts))
    for _ in range(n_iter):
        w /= grid @ (grid_t @ w)
    # At convergence sum_i w_i K(k - k_i) = 1 with K = C C^T; a weight density rho (per unit area)
    # gives rho * (integral of the kernel) * (kernel sum over grid points) = 1. Scale to rho = 1.
    xs = np.linspace(-width / 2.0, width / 2.0, 4001)
    integral = _trapezoid(_kaiser_bessel(xs, width, beta), xs) / os_  # per cycle/FOV
    shifts = np.linspace(0.0, 1.0, 8, endpoint=False)
    grid_sum = _kaiser_bessel(np.arange(-width, width + 1)[:, None] + shifts, width, beta).sum(0).mean()
    return w * (integral * grid_sum) ** 2
