"""Slice profile: the small-tip profile of the Hann-windowed sinc against independent quadrature and Fourier
identities, the profile-summed FISP signal against the closed-form steady state, the dictionary's record."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mrf_core.physics.dictionary import Dictionary, build_dictionary, percent_grid
from mrf_core.physics.sequence import FispSchedule, default_schedule
from mrf_core.physics.slice_profile import SliceProfile, SliceProfileError, profile_fingerprints
from mrf_core.pipeline import PipelineError, dictionary_for
from mrf_core.settings import SettingsError, defaults, parse_settings

T = np.linspace(-0.5, 0.5, 200_001)  # pulse time in durations


def pulse(tbw: float) -> np.ndarray:
    return np.sinc(tbw * T) * 0.5 * (1 + np.cos(2 * np.pi * T))


def integral(values: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid rule, written out (numpy 1.26 and 2 name theirs differently)."""
    return float(np.sum((values[1:] + values[:-1]) * np.diff(x)) / 2)


@pytest.mark.parametrize("tbw", [2.0, 4.0, 8.0])
def test_profile_is_the_pulse_spectrum(tbw):
    """m(z) against the pulse's cosine transform by quadrature (error ~1e-10 at this sampling), and the
    Fourier inversion identity: the area under m(z) is p(0) / (tbw * area of p)."""
    profile = SliceProfile(tbw)
    z = np.array([0.0, 0.1, 0.3, 0.45, 0.5, 0.6, 0.9, 1.4])
    p = pulse(tbw)
    spectrum = np.array([integral(p * np.cos(2 * np.pi * tbw * zi * T), T) for zi in z])
    np.testing.assert_allclose(profile.flip_scale(z), spectrum / integral(p, T), atol=1e-8)
    zz = np.linspace(-40, 40, 400_001)
    assert integral(profile.flip_scale(zz), zz) == pytest.approx(1.0 / (tbw * integral(p, T)), abs=2e-4)


def test_profile_width_tends_to_the_nominal_thickness():
    """A long sinc's profile is the rectangle of one slice thickness: FWHM -> 1 as TBW grows."""
    z = np.linspace(0, 1, 100_001)
    for tbw, tolerance in ((4.0, 0.01), (16.0, 1e-3)):
        m = SliceProfile(tbw).flip_scale(z)
        assert 2 * z[np.argmax(m < 0.5)] == pytest.approx(1.0, abs=tolerance)


def fisp_steady_state(a: float, tr: float, t1: float, t2: float) -> float:
    """Haenicke & Vogel 2003 (TE = 0), signed: odd in the flip angle a (radians)."""
    e1, e2 = math.exp(-tr / t1), math.exp(-tr / t2)
    p = 1 - e1 * math.cos(a) - e2**2 * (e1 - math.cos(a))
    q = e2 * (1 - e1) * (1 + math.cos(a))
    return math.tan(a / 2) * (1 - (e1 - math.cos(a)) * (1 - e2**2) / math.sqrt(p * p - q * q))


def test_profile_signal_is_the_sum_of_sub_slice_steady_states():
    """Constant 40 deg / 10 ms, T1/T2 300/30 ms, after 20 T1: the profile fingerprint's last value is the
    weighted sum of the closed-form steady states at each sub-slice's flip (side lobes negative), with
    Weigel's sign (exciting +M0 gives -i sin a, so the real fingerprint is -S); EPG exact for T2 30 ms."""
    schedule = FispSchedule(np.full(600, 40.0), np.full(600, 10.0), te_ms=0.0, inversion=False)
    profile = SliceProfile(4.0, n_positions=30, extent=1.5)
    scales, weights = profile.sub_slices()
    assert (scales < 0).any()  # the side lobes are part of the sum
    expected = -sum(w * fisp_steady_state(math.radians(40.0) * m, 10.0, 300.0, 30.0)
                    for m, w in zip(scales, weights, strict=True))
    signal = profile_fingerprints(schedule, [300.0], [30.0], [1.0], profile, device="cpu")[0].numpy()
    assert float(signal[-1]) == pytest.approx(expected, abs=1e-6)


def test_profile_specs_settings_and_the_dictionary_record(tmp_path):
    assert SliceProfile.parse("none") is None and SliceProfile.parse("hann-sinc:4").spec == "hann-sinc:4:20"
    with pytest.raises(SliceProfileError, match="expected 'none' or SHAPE:TBW"):
        SliceProfile.parse("gauss")
    with pytest.raises(SettingsError, match="slice_profile = 'sinc:4'"):
        parse_settings({"slice_profile": "sinc:4"})
    schedule = default_schedule().truncated(60)
    grid = percent_grid(25.0, (200.0, 2000.0), (20.0, 500.0))
    profile = SliceProfile(4.0, n_positions=6)
    d = build_dictionary(schedule, grid, rank=5, keep_fingerprints=False, progress=False, device="cpu",
                         slice_profile=profile)
    d.save(tmp_path / "d.h5")
    assert Dictionary.load(tmp_path / "d.h5").slice_profile == profile
    settings = defaults()
    settings.dictionary_file = tmp_path / "d.h5"
    with pytest.raises(PipelineError, match="built with slice profile hann-sinc:4:6, the setting slice_profile says"):
        dictionary_for(schedule, settings)
    settings.slice_profile = "hann-sinc:4:6"
    assert dictionary_for(schedule, settings).slice_profile == profile


def test_the_simulator_models_the_profile_and_states_it(caplog):
    """A simulated voxel's time course is the profile-summed fingerprint (to the subspace's 1e-6 residual
    energy, ~1e-3 in amplitude); the header states the pulse, and the pipeline warns when its setting differs."""
    import logging

    from mrf_core.pipeline import scan_info
    from mrf_core.recon.trajectory import SpiralParams
    from mrf_core.sim.phantoms import nist_phantom
    from mrf_core.sim.simulate import ScanSettings, SimulatedScan

    profile = SliceProfile(4.0, n_positions=4)
    schedule = default_schedule().truncated(30)
    scan = SimulatedScan(nist_phantom("NiCl2", matrix=32, fov_mm=300.0), schedule,
                         SpiralParams(fov_mm=300.0, matrix=32, n_interleaves=8, centre_interleaves=4),
                         ScanSettings(n_coils=2, snr=None, slice_profile=profile))
    phantom, model = scan.phantom, scan.models[0]
    row, col = np.argwhere(phantom.labels[0] == 3)[0]
    course = model.basis @ model.coefficients[:, row, col]
    expected = profile_fingerprints(schedule, [phantom.t1_ms[0, row, col]], [phantom.t2_ms[0, row, col]], [1.0],
                                    profile, device="cpu")[0].numpy() * phantom.pd[0, row, col]
    assert np.linalg.norm(course - expected) <= 2e-3 * np.linalg.norm(expected)
    with caplog.at_level(logging.WARNING, logger="mrf_core.pipeline"):
        scan_info(scan.header, defaults())
    assert "states the slice profile hann-sinc:4:4" in caplog.text


def test_a_network_trained_with_the_profile_says_so_and_is_checked(tmp_path):
    """`mrf train --slice-profile` (TrainConfig.slice_profile): the training fingerprints, the model's basis
    and its PD table are the profile's sums (the table's coefficients are those of the sums of the sub-slice
    fingerprints, summed here); the metadata records the profile, the loader reads it back, and the chain
    uses the model only for a scan whose slice_profile setting is the same."""
    import torch

    from mrf_core.mapping import load_model
    from mrf_core.mapping.parameters import ParameterSpace
    from mrf_core.mapping.training import TrainConfig, train_model
    from mrf_core.physics.epg import simulate_fingerprints
    from mrf_core.pipeline import check_model_inputs

    schedule = default_schedule().truncated(60)
    profile = SliceProfile(4.0, n_positions=4)
    config = TrainConfig(arch="mlp", rank=5, space=ParameterSpace((100.0, 2000.0), (10.0, 500.0)), n_train=600,
                         n_val=100, epochs=1, n_states=20, table_nodes=9, progress=False,
                         arch_options={"width": 16}, basis_step_pct=30.0, slice_profile=profile)
    module, metadata = train_model(schedule, config, tmp_path / "sp.pt")
    model = load_model(tmp_path / "sp.pt")
    assert model.slice_profile == profile and metadata["training"]["slice_profile"]["tbw"] == 4.0

    scales, weights = profile.sub_slices()
    t1, t2 = np.array([600.0]), np.array([60.0])
    summed = sum(np.sign(m) * w * simulate_fingerprints(schedule, t1, t2, np.array([abs(m)]), n_states=20).numpy()
                 for m, w in zip(scales, weights, strict=True))
    ideal = simulate_fingerprints(schedule, t1, t2, np.ones(1), n_states=20).numpy()
    looked_up = model._table.lookup(torch.as_tensor([[600.0, 60.0]]))[0].numpy()[0]
    expected = model.basis.project_real(summed)[0]
    # the table's cubic interpolation between its 9 nodes per axis errs by ~1e-3 of the norm; the profile
    # changes the fingerprint by ~0.14 of it
    assert np.linalg.norm(looked_up - expected) <= 0.01 * np.linalg.norm(summed)
    assert np.linalg.norm(model.basis.project_real(ideal)[0] - expected) >= 0.1 * np.linalg.norm(summed)

    settings = defaults()
    settings.model, settings.slice_profile = tmp_path / "sp.pt", "hann-sinc:4:4"
    check_model_inputs(model, settings)
    settings.slice_profile = "none"
    with pytest.raises(PipelineError, match="trained for slice profile hann-sinc:4"):
        check_model_inputs(model, settings)

