"""The simulator against independent computations: direct DFT, adjoint reconstruction, noise statistics."""

from __future__ import annotations

import finufft
import ismrmrd
import numpy as np
import pytest
from scipy import ndimage

from mrf_core.io.rawio import TIMESTAMP_TICK_MS, MrfRawFile, write_raw
from mrf_core.physics.epg import simulate_fisp
from mrf_core.physics.sequence import default_schedule
from mrf_core.recon.trajectory import SpiralParams, design_spiral, nufft_coords
from mrf_core.sim.coil_sim import CoilSimulationError, birdcage_sensitivities, noise_covariance
from mrf_core.sim.phantoms import Phantom, brain_phantom, nist_phantom, pixel_coords_mm
from mrf_core.sim.simulate import _NUFFT_EPS, ScanSettings, SimulatedScan, SimulationSetupError, subspace_model
from mrf_gadgetron.cli import main


def _fingerprints(schedule, t1, t2, b1):
    """Reference time courses, one EPG call per voxel (independent of the simulator's grouping)."""
    return np.stack([
        simulate_fisp(schedule, [a], [b], [c], device="cpu")[0].numpy() for a, b, c in zip(t1, t2, b1, strict=True)
    ])


def _random_disc_phantom(n, fov_mm, n_slices, seed=0):
    rng = np.random.default_rng(seed)
    x, y = pixel_coords_mm(n, fov_mm)
    disc = np.broadcast_to(np.hypot(x, y) < 0.4 * fov_mm, (n_slices, n, n))
    t1 = np.where(disc, rng.uniform(300, 2000, disc.shape), 0.0)
    return Phantom(
        name="random", t1_ms=t1, t2_ms=np.where(disc, t1 * rng.uniform(0.03, 0.3, disc.shape), 0.0),
        pd=np.where(disc, rng.uniform(0.5, 1.0, disc.shape), 0.0),
        b1=np.where(disc, rng.uniform(0.8, 1.2, disc.shape), 0.0),
        labels=disc.astype(np.int16), label_names={1: "disc"}, fov_mm=fov_mm, field_t=3.0,
    )


def test_kspace_equals_a_direct_dft_of_coil_weighted_epg_images():
    n, fov = 12, 120.0
    phantom = _random_disc_phantom(n, fov, n_slices=2)
    schedule = default_schedule().truncated(6)
    spiral = SpiralParams(fov_mm=fov, matrix=n, n_interleaves=4, centre_interleaves=2)
    scan = SimulatedScan(phantom, schedule, spiral, ScanSettings(n_coils=2, snr=None, svd_tolerance=0.0))
    x, y = pixel_coords_mm(n, fov)
    px, py = x / (fov / n), y / (fov / n)  # pixel offsets from the centre
    images = {}
    for s in range(2):
        m = phantom.mask[s]
        signal = _fingerprints(schedule, phantom.t1_ms[s][m], phantom.t2_ms[s][m], phantom.b1[s][m])
        images[s] = (m, signal * phantom.pd[s][m][:, None])
    count = 0
    for acq in scan.acquisitions():
        s, t = acq.idx.slice, acq.idx.repetition
        m, voxel_signal = images[s]
        for c in range(2):
            obj = scan.sensitivities[c, s][m] * voxel_signal[:, t]
            phase = np.exp(-2j * np.pi * (np.outer(acq.traj[:, 0], px[m]) + np.outer(acq.traj[:, 1], py[m])) / n)
            want = phase @ obj
            np.testing.assert_allclose(acq.data[c], want, atol=2e-5 * np.abs(want).max())
        count += 1
    assert count == 2 * 6


def _adjoint_images(readouts, spiral, sensitivities, n):
    """Coil-combined adjoint NUFFT per time point of a fully sampled scan: {t: (n, n)}."""
    by_time = {}
    for r in readouts:
        by_time.setdefault(r.timepoint, []).append(r)
    dcf = spiral.dcf()
    out = {}
    for t, rs in by_time.items():
        rows, cols = nufft_coords(np.stack([r.traj for r in rs]), n)
        data = np.stack([r.data * dcf for r in rs], axis=1).reshape(sensitivities.shape[0], -1)
        coil_images = finufft.nufft2d1(rows, cols, data.astype(np.complex128), (n, n), isign=1, eps=1e-9) / n**2
        out[t] = np.sum(np.conj(sensitivities) * coil_images, axis=0)
    return out


def test_fully_sampled_scan_reconstructs_the_phantom_images(tmp_path):
    n, fov = 64, 240.0
    phantom = brain_phantom(matrix=n, fov_mm=fov)
    schedule = default_schedule().truncated(12)
    params = SpiralParams(fov_mm=fov, matrix=n, n_interleaves=16, centre_interleaves=8, interleaves_per_tr=16)
    scan = SimulatedScan(phantom, schedule, params, ScanSettings(n_coils=4, snr=None))
    path = tmp_path / "full.h5"
    write_raw(path, scan.header, scan.acquisitions(), scan.truth())
    with MrfRawFile(path) as raw:
        truth = raw.truth()
        recon = _adjoint_images(raw.readouts(), design_spiral(raw.info.spiral), truth.coil_sensitivities[:, 0], n)
    m = truth.phantom.mask[0]
    signal = simulate_fisp(schedule, truth.phantom.t1_ms[0][m], truth.phantom.t2_ms[0][m], 1.0, device="cpu").numpy()
    labels = truth.phantom.labels[0]
    interior = (ndimage.maximum_filter(labels, 5) == ndimage.minimum_filter(labels, 5)) & m  # 2 px from edges
    for t in range(0, 12, 3):
        expected = np.zeros((n, n), dtype=np.complex64)
        expected[m] = truth.phantom.pd[0][m] * signal[:, t]
        assert _nrmse(recon[t], expected) < 0.13  # ringing at the sharp tissue edges of a 64^2 phantom
        assert _nrmse(recon[t][interior], expected[interior]) < 0.08
        # a mirrored or transposed image (a wrong axis or sign convention) is far off
        assert min(_nrmse(recon[t], expected[:, ::-1]), _nrmse(recon[t], expected.T)) > 0.35


def _nrmse(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_noise_has_the_stated_snr_and_channel_covariance():
    n, fov = 32, 240.0
    phantom = nist_phantom("NiCl2", matrix=n, fov_mm=fov)
    schedule = default_schedule().truncated(30)
    params = SpiralParams(fov_mm=fov, matrix=n, n_interleaves=8, centre_interleaves=4)
    settings = ScanSettings(n_coils=4, snr=20.0, noise_correlation=0.5, n_noise_readouts=16, seed=3)
    noisy = SimulatedScan(phantom, schedule, params, settings)
    acquisitions = list(noisy.acquisitions())
    # sigma = matrix * mean |PD x fingerprint| over object voxels and time points / SNR
    m = phantom.mask[0]
    fingerprints = simulate_fisp(schedule, phantom.t1_ms[0][m], phantom.t2_ms[0][m], 1.0, n_states=50, device="cpu")
    mean_signal = np.mean(np.abs(fingerprints.numpy()) * phantom.pd[0][m][:, None])
    assert noisy.noise_sigma == pytest.approx(n * mean_signal / 20.0, rel=1e-4)
    noise = np.concatenate([a.data for a in acquisitions if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)], axis=1)
    assert noise.shape[1] == 16 * noisy.spiral.n_samples
    expected = noisy.noise_sigma**2 * noisy.noise_covariance
    measured = noise @ noise.conj().T / noise.shape[1]
    assert np.linalg.norm(measured - expected) / np.linalg.norm(expected) < 0.05
    assert abs(expected[0, 1]) > 0.1 * abs(expected[0, 0])  # channels are correlated
    # the imaging readouts carry the same noise on top of the noiseless signal
    clean = SimulatedScan(phantom, schedule, params, ScanSettings(**{**settings.__dict__, "snr": None}))
    clean_data = [a.data for a in clean.acquisitions()]
    residual = np.concatenate([a.data - c for a, c in zip(acquisitions[16:], clean_data, strict=True)], axis=1)
    measured = residual @ residual.conj().T / residual.shape[1]
    assert np.linalg.norm(measured - expected) / np.linalg.norm(expected) < 0.05


def test_subspace_error_is_what_the_model_reports():
    phantom = brain_phantom(matrix=48, fov_mm=240.0, b1_amplitude=0.1)
    schedule = default_schedule().truncated(300)
    model = subspace_model(phantom, 0, schedule, svd_tolerance=1e-5)
    assert model.residual <= 1e-5 and 4 <= model.rank <= 30
    m = phantom.mask[0]
    rng = np.random.default_rng(0)
    picks = rng.choice(np.flatnonzero(m), 40, replace=False)
    t1, t2, b1, pd = (phantom.t1_ms[0].ravel()[picks], phantom.t2_ms[0].ravel()[picks],
                      phantom.b1[0].ravel()[picks], phantom.pd[0].ravel()[picks])
    exact = (_fingerprints(schedule, t1, t2, b1) * pd[:, None]).imag  # rf phase 0: signal = i * real
    approx = (model.coefficients.reshape(model.rank, -1)[:, picks].T @ model.basis.T)
    err = np.sum((approx - exact) ** 2) / np.sum(exact**2)
    assert err < 3e-5


def test_flags_indices_positions_and_time_stamps(sim_small_scan):
    scan, acquisitions, _ = sim_small_scan
    noise = [a for a in acquisitions if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    assert acquisitions[:4] == noise and all(a.trajectory_dimensions == 0 for a in noise)
    imaging = acquisitions[4:]
    assert len(imaging) == 2 * 40 and len(acquisitions) == scan.n_acquisitions
    assert [a.idx.repetition for a in imaging[:40]] == list(range(40))
    assert [a.idx.kspace_encode_step_1 for a in imaging[:10]] == [t % 8 for t in range(10)]
    assert {a.idx.slice for a in imaging[40:]} == {1}
    first = [i for i, a in enumerate(imaging) if a.is_flag_set(ismrmrd.ACQ_FIRST_IN_SLICE)]
    last = [i for i, a in enumerate(imaging) if a.is_flag_set(ismrmrd.ACQ_LAST_IN_SLICE)]
    final = [i for i, a in enumerate(acquisitions) if a.is_flag_set(ismrmrd.ACQ_LAST_IN_MEASUREMENT)]
    assert first == [0, 40] and last == [39, 79] and final == [len(acquisitions) - 1]
    assert [a.scan_counter for a in acquisitions] == list(range(1, len(acquisitions) + 1))
    stamps = np.array([a.acquisition_time_stamp for a in imaging[:40]], dtype=np.float64)
    np.testing.assert_allclose(np.diff(stamps) * TIMESTAMP_TICK_MS, scan.schedule.tr_ms[:-1], atol=TIMESTAMP_TICK_MS)
    gap_ms = (imaging[40].acquisition_time_stamp - imaging[0].acquisition_time_stamp) * TIMESTAMP_TICK_MS
    assert gap_ms == pytest.approx(scan.schedule.ti_ms + scan.schedule.tr_ms.sum() + 3000.0, abs=TIMESTAMP_TICK_MS)
    assert imaging[0].position[2] == pytest.approx(-5.0) and imaging[40].position[2] == pytest.approx(5.0)
    assert imaging[0].sample_time_us == pytest.approx(2.0) and imaging[0].active_channels == 3


def test_golden_angle_scan_in_small_blocks_equals_one_block():
    n, fov = 24, 240.0
    phantom = nist_phantom("MnCl2", matrix=n, fov_mm=fov)
    schedule = default_schedule().truncated(20)
    params = SpiralParams(fov_mm=fov, matrix=n, n_interleaves=6, centre_interleaves=3, rotation="golden")
    whole = SimulatedScan(phantom, schedule, params, ScanSettings(n_coils=2, snr=10.0))
    blocks = SimulatedScan(phantom, schedule, params, ScanSettings(n_coils=2, snr=10.0, block_mb=0.05))
    assert len(list(blocks._blocks(blocks.models[0].rank))) > 3
    pairs = list(zip(whole.acquisitions(), blocks.acquisitions(), strict=True))
    a, b = (np.concatenate([pair[i].data for pair in pairs], axis=1) for i in (0, 1))
    # finufft picks its grid oversampling from the point density at setpts, so blocks of other sizes may
    # interpolate on another grid: each transform within its tolerance eps (relative l2) of the exact one;
    # 10 eps allows for float32 (near its limit at eps 1e-6). A misplaced readout would be O(1) off.
    assert np.linalg.norm(a - b) <= 10 * _NUFFT_EPS * np.linalg.norm(a)
    assert all(x.getHead() == y.getHead() for x, y in pairs)
    readouts = [a for a in whole.acquisitions() if a.trajectory_dimensions]
    assert [a.idx.kspace_encode_step_1 for a in readouts] == list(range(20))
    angle = np.degrees(np.angle(readouts[1].traj[-1, 0] + 1j * readouts[1].traj[-1, 1])
                       - np.angle(readouts[0].traj[-1, 0] + 1j * readouts[0].traj[-1, 1]))
    assert np.mod(angle, 360) == pytest.approx(137.5078, abs=1e-3)


def test_setup_errors_name_the_field():
    phantom = nist_phantom("NiCl2", matrix=32, fov_mm=240.0)
    schedule = default_schedule().truncated(5)
    with pytest.raises(SimulationSetupError, match="matrix 64"):
        SimulatedScan(phantom, schedule, SpiralParams(fov_mm=240.0, matrix=64))
    for bad, field in (({"snr": -1.0}, "snr"), ({"n_coils": 0}, "n_coils"), ({"svd_tolerance": 2.0}, "svd_tolerance")):
        with pytest.raises(SimulationSetupError, match=field):
            ScanSettings(**bad)


def test_a_failing_stream_leaves_no_file(tmp_path, sim_small_scan):
    scan, acquisitions, _ = sim_small_scan

    def broken():
        yield from acquisitions[:70]
        raise RuntimeError("simulated crash")

    path = tmp_path / "partial.h5"
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_raw(path, scan.header, broken(), scan.truth())
    assert list(tmp_path.iterdir()) == []


def _cli(tmp_path, *extra):
    return ["simulate", "--matrix", "32", "--fov", "240", "--coils", "2", "--timepoints", "8",
            "--interleaves", "8", "--centre-interleaves", "4", *extra]


def test_cli_writes_a_readable_scan_and_a_preview(tmp_path, capsys):
    out, png = tmp_path / "scan.h5", tmp_path / "preview.png"
    assert main(_cli(tmp_path, "--phantom", "nist-t2", "--field", "3", "--snr", "40", "--out", str(out),
                     "--png", str(png), "--shift", "5", "-5", "--rotate", "10", "--b1-field", "0.05")) == 0
    assert png.stat().st_size > 10_000
    with MrfRawFile(out) as raw:
        assert raw.info.schedule.n_timepoints == 8 and raw.info.n_channels == 2
        assert sum(1 for _ in raw.readouts()) == 8
        assert raw.truth().phantom.name == "nist-t2"
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--phantom", "nist-t3"], "unknown phantom 'nist-t3'"),
        (["--phantom", "brain", "--matrix", "0"], "matrix"),
        (["--phantom", "brain", "--fov", "-1"], "fov_mm"),
        (["--phantom", "brain", "--interleaves-per-tr", "9"], "interleaves_per_tr = 9"),
        (["--phantom", "nist-t1", "--field", "2"], "field 2 T"),
    ],
)
def test_cli_bad_input_is_one_clear_line_and_no_file(tmp_path, capsys, args, message):
    out = tmp_path / "scan.h5"
    assert main([*_cli(tmp_path), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_unwritable_output_fails_before_simulating(tmp_path, capsys):
    assert main([*_cli(tmp_path), "--phantom", "brain", "--out", str(tmp_path / "missing" / "scan.h5")]) == 2
    assert "cannot write the output" in capsys.readouterr().err


def test_coil_sensitivities_and_noise_covariance():
    maps = birdcage_sensitivities(8, 48, 240.0, slice_positions_mm=(-20.0, 0.0))
    np.testing.assert_allclose(np.sum(np.abs(maps) ** 2, axis=0), 1.0, rtol=1e-5)
    x, y = pixel_coords_mm(48, 240.0)
    strongest = np.unravel_index(np.argmax(np.abs(maps[0, 1])), x.shape)
    assert x[strongest] > 100 and abs(y[strongest]) < 20  # coil 0 sits at +x
    strongest = np.unravel_index(np.argmax(np.abs(maps[2, 1])), x.shape)
    assert y[strongest] > 100  # coil 2 (90 deg on) sits at +y
    assert not np.allclose(maps[:, 0], maps[:, 1])  # slices see the ring from different distances
    psi = noise_covariance(maps, correlation=0.4)
    np.testing.assert_allclose(psi, psi.conj().T)
    assert np.linalg.eigvalsh(psi).min() > 0 and np.mean(np.diag(psi).real) == pytest.approx(1.0)
    neighbours, opposite = abs(psi[0, 1]) / abs(psi[0, 0]), abs(psi[0, 4]) / abs(psi[0, 0])
    assert neighbours > opposite  # overlapping fields couple more noise
    assert np.allclose(noise_covariance(maps, correlation=0.0), np.diag(np.diag(noise_covariance(maps, 0.0))))
    with pytest.raises(CoilSimulationError, match="noise correlation = 1"):
        noise_covariance(maps, correlation=1.0)
    with pytest.raises(CoilSimulationError, match="n_coils = 0"):
        birdcage_sensitivities(0, 16, 200.0)
