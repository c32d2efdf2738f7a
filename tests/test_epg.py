"""EPG simulator against closed forms and an independent isochromat (Bloch) simulation."""

import math

import numpy as np
import pytest

from mrf_core.physics.epg import SimulationError, simulate_fingerprints, simulate_fisp
from mrf_core.physics.sequence import FispSchedule, default_schedule


def fisp_steady_state(alpha_deg, tr_ms, t1_ms, t2_ms):
    """Haenicke & Vogel 2003 FISP steady state (TE = 0)."""
    a = math.radians(alpha_deg)
    e1, e2 = math.exp(-tr_ms / t1_ms), math.exp(-tr_ms / t2_ms)
    p = 1 - e1 * math.cos(a) - e2**2 * (e1 - math.cos(a))
    q = e2 * (1 - e1) * (1 + math.cos(a))
    return math.tan(a / 2) * (1 - (e1 - math.cos(a)) * (1 - e2**2) / math.sqrt(p * p - q * q))


@pytest.mark.parametrize(
    "alpha, tr, t1, t2, expected",
    [(30, 10, 1000, 100, 0.1071108), (60, 12, 800, 80, 0.0828959), (10, 15, 1500, 50, 0.0750104)],
)
def test_fisp_steady_state_closed_form(alpha, tr, t1, t2, expected):
    assert fisp_steady_state(alpha, tr, t1, t2) == pytest.approx(expected, abs=2e-7)
    schedule = FispSchedule(np.full(3000, alpha), np.full(3000, tr), te_ms=0.0, inversion=False)
    signal = simulate_fisp(schedule, [t1], [t2], n_states=200, device="cpu")[0].numpy()
    assert abs(signal[-1]) == pytest.approx(expected, abs=1e-6)


def test_te_scaling():
    base = default_schedule().truncated(300)
    from dataclasses import replace

    t2 = 60.0
    s0 = simulate_fisp(replace(base, te_ms=0.0), [900], [t2], device="cpu")[0].numpy()
    s5 = simulate_fisp(replace(base, te_ms=5.0), [900], [t2], device="cpu")[0].numpy()
    np.testing.assert_allclose(s5, s0 * math.exp(-5.0 / t2), atol=1e-7)


@pytest.mark.parametrize("ti_ms", [10.0, 300.0, 700.0, 3000.0])
def test_inversion_recovery(ti_ms):
    t1 = 1000.0
    schedule = FispSchedule([90.0], [20.0], te_ms=0.0, inversion=True, ti_ms=ti_ms)
    signal = simulate_fisp(schedule, [t1], [50.0], device="cpu")[0].numpy()
    # Weigel's convention: exciting +Mz with a 90 deg pulse gives F+0 = -i Mz
    assert signal[0] == pytest.approx(-1j * (1 - 2 * math.exp(-ti_ms / t1)), abs=1e-6)


def bloch_isochromats(schedule, t1, t2, b1, n_iso=720):
    """Independent reference: n_iso isochromats across one cycle of dephasing per TR, float64."""
    m = np.zeros((3, n_iso))
    m[2] = 1.0
    if schedule.inversion:
        e1 = math.exp(-schedule.ti_ms / t1)
        m[2] = -m[2] * e1 + 1 - e1
    dephase = 2 * np.pi * np.arange(n_iso) / n_iso
    cos_d, sin_d = np.cos(dephase), np.sin(dephase)
    out = []
    for alpha_deg, tr in zip(schedule.flip_angle_deg, schedule.tr_ms, strict=True):
        a = math.radians(alpha_deg) * b1
        my = math.cos(a) * m[1] - math.sin(a) * m[2]
        mz = math.sin(a) * m[1] + math.cos(a) * m[2]
        m[1], m[2] = my, mz
        e2te = math.exp(-schedule.te_ms / t2)
        out.append((m[0] + 1j * m[1]).mean() * e2te)
        e1, e2 = math.exp(-tr / t1), math.exp(-tr / t2)
        m[0] *= e2
        m[1] *= e2
        m[2] = m[2] * e1 + 1 - e1
        mx = cos_d * m[0] - sin_d * m[1]
        m[1] = sin_d * m[0] + cos_d * m[1]
        m[0] = mx
    return np.array(out)


def test_against_isochromat_bloch_simulation():
    schedule = default_schedule().truncated(250)
    atoms = [(1000.0, 100.0, 1.0), (300.0, 40.0, 0.8), (2500.0, 1200.0, 1.15)]
    t1, t2, b1 = map(list, zip(*atoms, strict=True))
    epg = simulate_fisp(schedule, t1, t2, b1, n_states=260, device="cpu").numpy()
    for k, (a1, a2, ab1) in enumerate(atoms):
        reference = bloch_isochromats(schedule, a1, a2, ab1)
        assert np.abs(epg[k] - reference).max() < 1e-3 * max(1.0, np.abs(reference).max())
        assert np.abs(epg[k] - reference).max() < 1e-5  # in fact float32-exact


def test_per_atom_b1_equals_uniform_b1_path():
    schedule = default_schedule().truncated(200)
    t1 = np.array([400.0, 900.0, 1500.0])
    mixed = simulate_fisp(schedule, t1, t1 / 10, [0.9, 1.0, 1.1], device="cpu").numpy()
    for k, b1 in enumerate([0.9, 1.0, 1.1]):
        alone = simulate_fisp(schedule, t1[k : k + 1], t1[k : k + 1] / 10, [b1], device="cpu").numpy()
        np.testing.assert_allclose(mixed[k], alone[0], atol=1e-6)


def test_states_truncation_error_falls_with_states():
    schedule = default_schedule()
    ref = simulate_fisp(schedule, [4000.0], [2000.0], n_states=400, device="cpu").numpy()
    err = {n: np.abs(simulate_fisp(schedule, [4000.0], [2000.0], n_states=n, device="cpu").numpy() - ref).max()
           for n in (20, 100)}
    assert err[20] > 5e-3 and err[100] < err[20] / 10


def test_rf_phase_rotates_signal_and_dtype():
    from dataclasses import replace

    s = default_schedule().truncated(50)
    a = simulate_fisp(s, [800, 1200], [70, 90], device="cpu")
    b = simulate_fisp(replace(s, rf_phase_deg=90.0), [800, 1200], [70, 90], device="cpu")
    assert a.dtype.is_complex and str(a.dtype) == "torch.complex64" and tuple(a.shape) == (2, 50)
    np.testing.assert_allclose(b.numpy(), a.numpy() * 1j, atol=1e-7)
    assert np.abs(a.numpy().real).max() == 0  # phase 0: purely imaginary


@pytest.mark.parametrize(
    "t1, t2, b1, message",
    [
        ([-5.0], [10.0], 1.0, r"t1_ms\[0\] = -5.0 must be > 0"),
        ([500.0, 600.0], [10.0, np.nan], 1.0, r"t2_ms\[1\] = nan is not finite"),
        ([100.0], [300.0], 1.0, r"t2_ms\[0\] = 300 exceeds 2 x T1"),
        ([100.0], [30.0], 5.0, r"b1\[0\] = 5 exceeds 3"),
        ([100.0, 200.0], [30.0, 40.0, 50.0], 1.0, "t2_ms has 3 values"),
    ],
)
def test_bad_tissue_is_named(t1, t2, b1, message):
    with pytest.raises(SimulationError, match=message):
        simulate_fisp(default_schedule().truncated(10), t1, t2, b1, device="cpu")


@pytest.mark.parametrize("n_states, inversion", [(2, False), (30, True)])
def test_numba_kernel_agrees_with_torch_path(n_states, inversion):
    """The compiled CPU kernel and the torch (GPU) path do the same float32 arithmetic in a different order:
    each TR rounds every state a few times (<= 8 operations, relative eps each) and the EPG step does not
    amplify (rotation and relaxation have norm <= 1, |states| <= 1), so they differ by <= 8 eps per TR."""
    from dataclasses import replace

    schedule = replace(default_schedule().truncated(120), inversion=inversion)
    rng = np.random.default_rng(3)
    t1 = np.exp(rng.uniform(np.log(50), np.log(4000), 150))
    t2 = t1 * rng.uniform(0.02, 0.9, 150)
    bound = 8 * schedule.n_timepoints * np.finfo(np.float32).eps
    for b1 in (np.repeat([0.8, 1.0, 1.2], 50), rng.uniform(0.7, 1.3, 150)):  # B1 groups, continuous B1
        fast = simulate_fingerprints(schedule, t1, t2, b1, n_states=n_states, chunk_atoms=70, backend="numba")
        ref = simulate_fingerprints(schedule, t1, t2, b1, n_states=n_states, device="cpu", backend="torch")
        assert np.abs(fast.numpy() - ref.numpy()).max() <= bound


def test_unknown_backend_is_named():
    with pytest.raises(SimulationError, match="backend = 'fast' must be one of auto, numba, torch"):
        simulate_fingerprints(default_schedule().truncated(10), [800.0], [80.0], backend="fast")
