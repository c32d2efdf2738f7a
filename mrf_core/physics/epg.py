"""Batched extended-phase-graph (EPG) simulator for FISP-MRF, in torch (CPU and GPU).

Per TR: RF rotation (Weigel, JMRI 41:266, 2015; flip angle x B1) -> sample F+0 at TE -> relax for TR
-> one unit gradient shift (the FISP dephasing gradient). Relaxation is per atom and the same for every
state, so it commutes with the shift; sampling at TE is F+0 x exp(-TE/T2).

Real arithmetic: with a constant RF phase of 0 every F state is purely imaginary and every Z state real,
so the states are kept as three real arrays f+ = Im F+, f- = Im F-, z (shape (n_states, n_atoms), atoms
contiguous), the RF rotation is one 3x3 real matrix product and the complex signal is i * f+0. A
constant RF phase phi multiplies the signal by exp(i phi). The signal convention is Weigel's: exciting
+M0 with a flip alpha gives F+0 = -i sin(alpha) M0.

Truncation error (max |signal error| over the Jiang 1000-TR schedule, relative to M0, against 400
states; `python benchmarks/bench_epg.py`):

    n_states   1000/100 ms   300/30 ms   1500/500 ms   4000/2000 ms
       10        7.5e-4        1e-6        8.4e-3        1.9e-2
       20        2.2e-5        2e-8        2.2e-3        9.4e-3
       50        6e-8          0           1.8e-4        3.5e-3
      100        4e-9          0           1.0e-5        5.5e-4
      200        0             0           9e-8          8.0e-5

So 20 states suit brain-like tissue, CSF-like T2 (> 1 s) needs 100 or more. The default, 50 states, is
exact to float32 for T2 <= ~200 ms and within 4e-3 (of a signal ~0.1-0.2) up to T2 = 2 s.

Two implementations of the same arithmetic (float32 states): on the CPU a compiled numba kernel that keeps
a block of atoms' states in cache for the whole train and fuses rotation, sampling, relaxation and shift
into one pass over the states per TR (one parallel region per call, so its speed does not depend on how
OpenMP threads wait between small operations); on a GPU the torch version, one batched operation per step.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from mrf_core.errors import MrfError
from mrf_core.jit import njit_cached, numba_threads
from mrf_core.physics.sequence import FispSchedule
from mrf_core.progress import bar

DEFAULT_N_STATES = 50
DEFAULT_CHUNK_ATOMS = 4096  # keeps 3 x n_states x chunk float32 states in the L2/L3 caches of a CPU
_BLOCK_ATOMS = 64  # atoms per work item of the numba kernel: 3 x 50 states x 64 x 4 bytes fit in L1/L2
BACKENDS = ("auto", "numba", "torch")
MAX_T1_MS = 100_000.0
MAX_B1 = 3.0


class SimulationError(MrfError):
    """Tissue parameters the simulator cannot accept: the message names the field and the value."""


def _as_tensor(name: str, values, n_atoms: int | None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(values, dtype=np.float64) if not torch.is_tensor(values) else values)
    t = t.to(torch.float64).reshape(-1)
    if n_atoms is not None and t.numel() == 1:
        t = t.expand(n_atoms)
    if n_atoms is not None and t.numel() != n_atoms:
        raise SimulationError(f"{name} has {t.numel()} values but t1_ms has {n_atoms}")
    return t.cpu()


def validate_tissue(t1_ms, t2_ms, b1=1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check and broadcast T1, T2 (ms) and B1 (relative) to float64 CPU tensors of one length.

    Physical range: 0 < T1 <= 100 s, 0 < T2 <= 2 T1 (the bound from the Bloch equations), 0 < B1 <= 3.
    """
    t1 = _as_tensor("t1_ms", t1_ms, None)
    t2 = _as_tensor("t2_ms", t2_ms, t1.numel())
    b1 = _as_tensor("b1", b1, t1.numel())
    for name, t in (("t1_ms", t1), ("t2_ms", t2), ("b1", b1)):
        bad = torch.nonzero(~torch.isfinite(t)).flatten()
        if bad.numel():
            raise SimulationError(f"{name}[{bad[0].item()}] = {t[bad[0]].item()} is not finite")
        bad = torch.nonzero(t <= 0).flatten()
        if bad.numel():
            raise SimulationError(f"{name}[{bad[0].item()}] = {t[bad[0]].item()} must be > 0")
    checks = (
        ("t1_ms", t1, t1 > MAX_T1_MS, f"exceeds {MAX_T1_MS:g} ms"),
        ("t2_ms", t2, t2 > 2 * t1, "exceeds 2 x T1 (not physical)"),
        ("b1", b1, b1 > MAX_B1, f"exceeds {MAX_B1:g}"),
    )
    for name, t, mask, why in checks:
        bad = torch.nonzero(mask).flatten()
        if bad.numel():
            i = bad[0].item()
            raise SimulationError(f"{name}[{i}] = {t[i].item():g} {why} (t1_ms = {t1[i].item():g})")
    return t1, t2, b1


def _rotation(alpha_rad: torch.Tensor) -> torch.Tensor:
    """RF rotation of (f+, f-, z) for phase 0: shape (3, 3, *alpha.shape)."""
    c2 = torch.cos(alpha_rad / 2) ** 2
    s2 = torch.sin(alpha_rad / 2) ** 2
    sa, ca = torch.sin(alpha_rad), torch.cos(alpha_rad)
    return torch.stack(
        [torch.stack([c2, s2, -sa]), torch.stack([s2, c2, sa]), torch.stack([sa / 2, -sa / 2, ca])]
    )


def _simulate_chunk(
    schedule: FispSchedule,
    t1: torch.Tensor,
    t2: torch.Tensor,
    b1: torch.Tensor,
    n_states: int,
    device: torch.device,
) -> torch.Tensor:
    """f+0 at TE for every TR: real (n_timepoints, n_atoms) float32 on `device`."""
    n_atoms = t1.numel()
    t1 = t1.to(device=device, dtype=torch.float32)
    t2 = t2.to(device=device, dtype=torch.float32)
    states = torch.zeros(3, n_states, n_atoms, device=device)
    rotated = torch.empty_like(states)
    states[2, 0] = 1.0
    if schedule.inversion:
        e1_ti = torch.exp(-schedule.ti_ms / t1)
        states[2, 0] = -e1_ti + (1 - e1_ti)
    alpha_deg = torch.tensor(schedule.flip_angle_deg, dtype=torch.float32, device=device)
    uniform_b1 = bool(torch.all(b1 == b1[0]))
    if uniform_b1:  # one 3x3 matrix per TR for the whole chunk: a single matrix product
        rotations = _rotation(torch.deg2rad(alpha_deg) * float(b1[0])).permute(2, 0, 1).contiguous()
    else:  # a matrix per TR and atom
        b1_dev = b1.to(device=device, dtype=torch.float32)
        alpha_rad = torch.deg2rad(alpha_deg)
    e2_te = torch.exp(-schedule.te_ms / t2)
    relax = {}
    for tr in np.unique(schedule.tr_ms):
        e1 = torch.exp(-float(tr) / t1)
        relax[float(tr)] = (torch.exp(-float(tr) / t2), e1, 1 - e1)
    out = torch.empty(schedule.n_timepoints, n_atoms, device=device)
    flat_states, flat_rotated = states.view(3, -1), rotated.view(3, -1)
    for n, tr in enumerate(schedule.tr_ms.tolist()):
        if uniform_b1:
            torch.matmul(rotations[n], flat_states, out=flat_rotated)
        else:
            rot = _rotation(alpha_rad[n] * b1_dev)[:, :, None, :]  # (3, 3, 1, n_atoms)
            for i in range(3):
                torch.mul(states[0], rot[i, 0], out=rotated[i])
                rotated[i].addcmul_(states[1], rot[i, 1]).addcmul_(states[2], rot[i, 2])
        torch.mul(rotated[0, 0], e2_te, out=out[n])
        e2, e1, recovery = relax[tr]
        # relax over the whole TR and shift by one state: F+_k -> F+_k+1, F-_k -> F-_k-1, F+0 = conj F-0
        torch.mul(rotated[0, :-1], e2, out=states[0, 1:])
        torch.mul(rotated[1, 1], e2, out=states[0, 0]).neg_()
        torch.mul(rotated[1, 1:], e2, out=states[1, :-1])
        states[1, -1] = 0
        torch.mul(rotated[2], e1, out=states[2])
        states[2, 0] += recovery
    return out


@njit_cached(parallel=True)
def _epg_kernel(rf, rf_group, flip_rad, b1, relax_index, e1, e2, z0, e2_te, n_states, out):  # pragma: no cover
    """The torch chunk's arithmetic, fused per TR. rf (T, G, 4) float32: cos^2(a/2), sin^2(a/2), sin a,
    cos a of each TR's flip in B1 group g = rf_group[atom]; with G = 0 (B1 values all distinct) they are
    computed per atom from flip_rad (T,) x b1 (A,) instead. e1, e2 (U, A): relaxation over the U distinct
    TRs (relax_index (T,) picks one); z0 (A,) Mz before the first pulse; out (A, T): f+0 at TE."""
    per_atom = rf.shape[1] == 0
    n_atoms, n_t = out.shape
    n_blocks = (n_atoms + _BLOCK_ATOMS - 1) // _BLOCK_ATOMS
    for block in numba.prange(n_blocks):
        lo = block * _BLOCK_ATOMS
        nb = min(n_atoms, lo + _BLOCK_ATOMS) - lo
        fp = np.zeros((n_states, nb), np.float32)
        fm = np.zeros((n_states, nb), np.float32)
        z = np.zeros((n_states, nb), np.float32)
        carry = np.empty(nb, np.float32)
        rot = np.empty((4, nb), np.float32)  # c2, s2, sa, ca per atom for this TR
        r1 = np.empty(nb, np.float32)
        r2 = np.empty(nb, np.float32)
        c2, s2, sa, ca = rot[0], rot[1], rot[2], rot[3]
        for a in range(nb):
            z[0, a] = z0[lo + a]
        for n in range(n_t):
            u = relax_index[n]
            for a in range(nb):
                if per_atom:
                    alpha = flip_rad[n] * b1[lo + a]
                    cos_a = math.cos(alpha)
                    rot[0, a] = (1 + cos_a) / 2
                    rot[1, a] = (1 - cos_a) / 2
                    rot[2, a] = math.sin(alpha)
                    rot[3, a] = cos_a
                else:
                    for j in range(4):
                        rot[j, a] = rf[n, rf_group[lo + a], j]
                r1[a] = e1[u, lo + a]
                r2[a] = e2[u, lo + a]
            # state 0: sample f+0 at TE; Mz recovers; f-0 is -f+0 and is not kept
            for a in range(nb):
                p, m, q = fp[0, a], fm[0, a], z[0, a]
                rp = c2[a] * p + s2[a] * m - sa[a] * q
                out[lo + a, n] = rp * e2_te[lo + a]
                carry[a] = rp
                z[0, a] = r1[a] * (sa[a] * p / 2 - sa[a] * m / 2 + ca[a] * q) + (1 - r1[a])
            # states k >= 1, read before written: f+ moves up (carry), f- down, f+0 = -(rotated f-1)
            for k in range(1, n_states):
                for a in range(nb):
                    p, m, q = fp[k, a], fm[k, a], z[k, a]
                    rp = c2[a] * p + s2[a] * m - sa[a] * q
                    rm = s2[a] * p + c2[a] * m + sa[a] * q
                    fp[k, a] = r2[a] * carry[a]
                    carry[a] = rp
                    fm[k - 1, a] = r2[a] * rm
                    z[k, a] = r1[a] * (sa[a] * p / 2 - sa[a] * m / 2 + ca[a] * q)
                if k == 1:
                    for a in range(nb):
                        fp[0, a] = -fm[0, a]
            for a in range(nb):
                fm[n_states - 1, a] = 0


def _simulate_chunk_numba(
    schedule: FispSchedule, t1: torch.Tensor, t2: torch.Tensor, b1: torch.Tensor, n_states: int, out: np.ndarray
) -> None:
    """The numba kernel on the CPU: f+0 at TE into out (n_atoms, n_timepoints) float32."""
    t1, t2, b1 = (t.numpy() for t in (t1, t2, b1))
    b1_values, rf_group = np.unique(b1, return_inverse=True)
    if not _b1_repeats(b1_values.size, b1.size):  # continuous B1: rotations per atom, in the kernel
        b1_values = b1_values[:0]
    flip_rad = np.deg2rad(schedule.flip_angle_deg)
    alpha = flip_rad[:, None] * b1_values[None]  # (T, G), float64
    rf = np.stack([np.cos(alpha / 2) ** 2, np.sin(alpha / 2) ** 2, np.sin(alpha), np.cos(alpha)], axis=-1)
    tr_values, relax_index = np.unique(schedule.tr_ms, return_inverse=True)
    t1_32, t2_32 = t1.astype(np.float32), t2.astype(np.float32)
    e1 = np.exp(-tr_values.astype(np.float32)[:, None] / t1_32)
    e2 = np.exp(-tr_values.astype(np.float32)[:, None] / t2_32)
    z0 = np.ones_like(t1_32)
    if schedule.inversion:
        e1_ti = np.exp(np.float32(-schedule.ti_ms) / t1_32)
        z0 = -e1_ti + (1 - e1_ti)
    e2_te = np.exp(np.float32(-schedule.te_ms) / t2_32)
    with numba_threads(torch.get_num_threads()):
        _epg_kernel(rf.astype(np.float32), rf_group.astype(np.int64).reshape(-1), flip_rad, b1,
                    relax_index.astype(np.int64).reshape(-1), e1, e2, z0, e2_te, n_states, out)


def signal_phase(schedule: FispSchedule) -> complex:
    """The common phase of every fingerprint of `schedule`: signal = signal_phase * real fingerprint."""
    return 1j * complex(math.cos(math.radians(schedule.rf_phase_deg)), math.sin(math.radians(schedule.rf_phase_deg)))


@torch.no_grad()
def simulate_fingerprints(
    schedule: FispSchedule,
    t1_ms,
    t2_ms,
    b1=1.0,
    n_states: int = DEFAULT_N_STATES,
    device: str | torch.device | None = None,
    chunk_atoms: int = DEFAULT_CHUNK_ATOMS,
    progress: bool | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Real fingerprints of atoms (T1 ms, T2 ms, B1 relative): float32 tensor (n_atoms, n_timepoints), with
    signal = signal_phase(schedule) * fingerprint (the module docstring says why it is real).

    Atoms are simulated in chunks of `chunk_atoms` on `device` (default: CUDA when available, else CPU);
    the result stays on that device. `n_states`: see the module docstring for the truncation error.
    backend: "numba" (CPU only, torch.get_num_threads() threads), "torch", or "auto" (numba on the CPU).
    """
    if n_states < 2:
        raise SimulationError(f"n_states = {n_states} must be >= 2")
    if backend not in BACKENDS:
        raise SimulationError(f"backend = {backend!r} must be one of {', '.join(BACKENDS)}")
    t1, t2, b1 = validate_tissue(t1_ms, t2_ms, b1)
    device = torch.device(device) if device is not None else default_device()
    if backend == "auto":
        backend = "numba" if device.type == "cpu" else "torch"
    if backend == "numba" and device.type != "cpu":
        raise SimulationError(f"backend = 'numba' runs on the CPU, not on device {device}; use backend='torch'")
    if backend == "numba":
        fingerprints = np.empty((t1.numel(), schedule.n_timepoints), np.float32)
        chunks = [slice(i, i + chunk_atoms) for i in range(0, t1.numel(), chunk_atoms)]
        for ids in bar(chunks, desc="EPG fingerprints", unit="chunk", enabled=progress if len(chunks) > 1 else False):
            _simulate_chunk_numba(schedule, t1[ids], t2[ids], b1[ids], n_states, fingerprints[ids])
        return torch.from_numpy(fingerprints)
    fingerprints = torch.empty(t1.numel(), schedule.n_timepoints, device=device)
    chunks = [ids[i : i + chunk_atoms] for ids in _b1_groups(b1) for i in range(0, ids.numel(), chunk_atoms)]
    for ids in bar(chunks, desc="EPG fingerprints", unit="chunk", enabled=progress if len(chunks) > 1 else False):
        fingerprints[ids.to(device)] = _simulate_chunk(schedule, t1[ids], t2[ids], b1[ids], n_states, device).T
    return fingerprints


def simulate_fisp(schedule: FispSchedule, t1_ms, t2_ms, b1=1.0, **options) -> torch.Tensor:
    """Signals of atoms: complex64 tensor (n_atoms, n_timepoints), the transverse magnetisation F+0 at TE
    of each TR relative to M0 = 1. `options` as for simulate_fingerprints."""
    fingerprints = simulate_fingerprints(schedule, t1_ms, t2_ms, b1, **options)
    return fingerprints.to(torch.complex64) * signal_phase(schedule)


def _b1_groups(b1: torch.Tensor) -> list[torch.Tensor]:
    """Atom indices grouped by B1 value when values repeat (a dictionary's B1 axis), so that each chunk
    takes the one-matrix-per-TR path; one group of all atoms when B1 is continuous (a simulated scan)."""
    values, group_of = torch.unique(b1, return_inverse=True)
    if not _b1_repeats(values.numel(), b1.numel()):
        return [torch.arange(b1.numel())]
    return [torch.nonzero(group_of == g).flatten() for g in range(values.numel())]


def _b1_repeats(n_values: int, n_atoms: int) -> bool:
    """Whether B1 takes few values (a dictionary's B1 axis), so that one rotation per TR and value pays."""
    return n_values <= max(1, n_atoms // 256)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
