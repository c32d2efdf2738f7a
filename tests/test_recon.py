"""Gathering acquisitions into slices, the reconstruction pipeline, its bad-input handling and
determinism. The methods' accuracy ordering is in test_recon_methods below (NIST phantom)."""

from __future__ import annotations

import copy
import dataclasses

import ismrmrd
import numpy as np
import pytest

from mrf_core.io.rawio import validate_header
from mrf_core.physics.dictionary import build_dictionary, percent_grid
from mrf_core.recon.gather import GatherError, SliceGatherer
from mrf_core.recon.nufft import backend_available
from mrf_core.recon.reconstruct import METHODS, ReconError, ReconSettings, kspace_coverage, reconstruct_slice


@pytest.fixture(scope="module")
def small(sim_small_scan):
    """The conftest scan gathered into its 2 slices, and a rank-5 basis for its 40-TR schedule."""
    scan, acquisitions, _ = sim_small_scan
    gatherer = SliceGatherer(validate_header(scan.header))
    slices = []
    for acq in acquisitions:
        slices += gatherer.add(acq)
    assert gatherer.finish() == []
    dictionary = build_dictionary(scan.schedule, percent_grid(20.0), rank=5, progress=False)
    return scan, acquisitions, slices, dictionary.basis


def _gather(scan, acquisitions, **options):
    gatherer = SliceGatherer(validate_header(scan.header), **options)
    out = []
    for acq in acquisitions:
        out += gatherer.add(acq)
    return out + gatherer.finish()


def test_gather_makes_complete_slices_in_time_order(small):
    scan, acquisitions, slices, _ = small
    assert [s.slice_index for s in slices] == [0, 1]
    s = slices[1]
    n_t = scan.schedule.n_timepoints
    assert s.kspace.shape == (n_t, 3, scan.spiral.n_samples) and s.kspace.dtype == np.complex64
    assert s.traj.shape == (n_t, scan.spiral.n_samples, 2) and s.dcf.shape == (n_t, scan.spiral.n_samples)
    np.testing.assert_array_equal(s.timepoint, np.arange(n_t))
    np.testing.assert_array_equal(s.interleave, [scan.spiral.interleaves_of_tr(t)[0] for t in range(n_t)])
    np.testing.assert_allclose(s.dcf[0], scan.spiral.dcf())
    assert s.noise.shape == (3, scan.n_noise_readouts * scan.spiral.n_samples)
    assert isinstance(s.acquisition_header, ismrmrd.AcquisitionHeader)
    assert s.acquisition_header.idx.slice == 1 and s.acquisition_header.idx.repetition == 0
    # the readout of slice 1, time point 7 is the file's acquisition at that place
    acq = acquisitions[scan.n_noise_readouts + n_t + 7]
    np.testing.assert_array_equal(s.kspace[7], acq.data)


def test_gather_missing_time_points(small):
    scan, acquisitions, _, _ = small
    dropped = [a for i, a in enumerate(acquisitions) if i not in (scan.n_noise_readouts + 3, scan.n_noise_readouts + 9)]
    with pytest.raises(GatherError, match="slice 0: 2 of 40 time points missing"):
        _gather(scan, dropped)
    slices = _gather(scan, dropped, max_missing_fraction=0.1)
    assert slices[0].n_readouts == 38 and "missing" in slices[0].notes[0]
    assert 3 not in slices[0].timepoint


def test_gather_duplicate_readout(small):
    scan, acquisitions, _, _ = small
    with pytest.raises(GatherError, match="twice"):
        _gather(scan, acquisitions[:10] + acquisitions[8:9])


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_coefficients_and_timings(small, method):
    _, _, slices, basis = small
    settings = ReconSettings(method=method, n_virtual_coils=2, n_iterations=3,
                             llr_lambda=0.02 if method == "llr" else 0.0)
    result = reconstruct_slice(slices[0], basis, settings)
    assert result.coefficients.shape == (5, 32, 32) and result.coefficients.dtype == np.complex64
    assert np.all(np.isfinite(result.coefficients)) and np.abs(result.coefficients).max() > 0
    assert result.time_average.shape == (32, 32) and result.coil_maps.shape == (2, 32, 32)
    assert {"prewhiten", "compress", "coil_maps", "total"} <= set(result.timings_s)
    if method in ("cg", "llr"):
        assert {"psf", "iterations"} <= set(result.timings_s) and len(result.convergence) >= 2
    assert (result.time_series is not None) == (method == "gridding")


def test_reconstruction_is_deterministic(small):
    """Repeated runs agree to float rounding: there is no randomness (LLR shifts are seeded, finufft sums in
    a fixed order); BLAS and FFTW may pick SIMD paths by memory alignment, which moves the last bits
    (measured <= 3e-7 relative, in about 1 run of 8)."""
    _, _, slices, basis = small
    for method in ("cg", "llr"):
        settings = ReconSettings(method=method, n_iterations=4)
        first = reconstruct_slice(slices[0], basis, settings).coefficients
        for _ in range(2):
            again = reconstruct_slice(slices[0], basis, settings).coefficients
            assert np.abs(again - first).max() <= 1e-5 * np.abs(first).max()


def test_a_refit_solves_again_in_the_basis_it_returns(small):
    """reconstruct_slice's refit sees the first pass (coefficients, basis, time average); the basis it returns
    is solved in from the first pass's coefficients converted into it. CG does not depend on the coordinates:
    a second pass in a rotation of the first basis gives the rotation of a second pass in the first basis
    itself (to the PSF kernels' NUFFT accuracy, 1e-4), and a refit that returns None leaves the first pass."""
    from mrf_core.physics.temporal_basis import TemporalBasis

    _, _, slices, basis = small
    settings = ReconSettings(method="cg", n_iterations=6, tolerance=0.0)
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((5, 5)))
    rotated = TemporalBasis((basis.vectors.astype(np.float64) @ q).astype(np.float32), basis.singular_values,
                            basis.signal_phase, basis.schedule_hash)
    seen = []

    def refit(coefficients, first_basis, time_average):
        seen.append((coefficients.shape, first_basis.hash, time_average.shape))
        return rotated

    plain = reconstruct_slice(slices[0], basis, settings)
    kept = reconstruct_slice(slices[0], basis, settings, refit=lambda *_: None)
    again = reconstruct_slice(slices[0], basis, settings, refit=lambda *_: basis)
    result = reconstruct_slice(slices[0], basis, settings, refit=refit)
    assert seen == [((5, 32, 32), basis.hash, (32, 32))] and result.basis is rotated
    scale = np.abs(plain.coefficients).max()
    assert kept.basis is basis and np.abs(kept.coefficients - plain.coefficients).max() <= 1e-5 * scale
    assert np.abs(again.coefficients - plain.coefficients).max() > 1e-3 * scale  # the second pass moved on
    back = np.einsum("kl,lij->kij", q, result.coefficients)  # rotated coefficients back into the first basis
    assert np.abs(back - again.coefficients).max() <= 1e-3 * scale
    assert {"refit", "psf", "iterations"} <= set(result.timings_s)


def _edited(data, **changes):
    return dataclasses.replace(data, **changes)


def test_the_gatherer_finds_zero_readouts_as_they_arrive(sim_small_scan):
    scan, acquisitions, _ = sim_small_scan
    zeroed = acquisitions[7]  # an imaging readout of slice 0
    acquisitions = [*acquisitions[:7], copy.deepcopy(zeroed), *acquisitions[8:]]
    acquisitions[7].data[:] = 0
    data = _gather(scan, acquisitions)[0]
    kspace, nonzero = data.arrival_check
    assert kspace is data.kspace
    np.testing.assert_array_equal(nonzero, np.abs(data.kspace).reshape(data.n_readouts, -1).max(axis=1) > 0)
    assert nonzero.sum() == data.n_readouts - 1


def test_bad_inputs(small):
    _, _, slices, basis = small
    data = slices[0]
    with pytest.raises(ReconError, match="trajectory reaches"):
        reconstruct_slice(_edited(data, traj=data.traj * 2.0), basis)
    with pytest.raises(ReconError, match="trajectory reaches"):
        reconstruct_slice(_edited(data, traj=data.traj / 32.0), basis)  # normalised to 0.5, not cycles/FOV
    with pytest.raises(ReconError, match="all 40 readouts are zero"):
        reconstruct_slice(_edited(data, kspace=np.zeros_like(data.kspace)), basis)
    bad = data.kspace.copy()
    bad[4, 1, 10] = np.nan
    with pytest.raises(ReconError, match="non-finite"):
        reconstruct_slice(_edited(data, kspace=bad), basis)
    with pytest.raises(ReconError, match="do not cover k-space"):
        keep = np.isin(data.interleave, [0, 1])
        reconstruct_slice(_edited(data, kspace=data.kspace[keep], traj=data.traj[keep], dcf=data.dcf[keep],
                                  interleave=data.interleave[keep], timepoint=data.timepoint[keep]), basis)
    other = build_dictionary(data.schedule.truncated(30), percent_grid(30.0), rank=3, progress=False).basis
    with pytest.raises(ReconError, match="schedule"):
        reconstruct_slice(data, other, ReconSettings(rank=3))
    with pytest.raises(ReconError, match="method"):
        ReconSettings(method="magic")


@pytest.mark.skipif(backend_available("cufinufft", "cuda"), reason="a GPU is present")
def test_settings_reject_an_unavailable_nufft_backend():
    """The availability check runs when the settings are made, naming backend and device."""
    with pytest.raises(ReconError, match="'cufinufft' on device 'cpu' is not available"):
        ReconSettings(nufft_backend="cufinufft")
    with pytest.raises(ReconError, match="'finufft' on device 'cuda' is not available"):
        ReconSettings(nufft_backend="finufft", device="cuda")
    assert ReconSettings(nufft_backend="finufft", device="cpu").nufft_backend == "finufft"
    assert ReconSettings().iterations == 27


def test_zero_readouts_and_one_coil_are_documented_fallbacks(small):
    _, _, slices, basis = small
    data = slices[0]
    zeroed = data.kspace.copy()
    zeroed[[2, 5]] = 0
    result = reconstruct_slice(_edited(data, kspace=zeroed), basis, ReconSettings(n_iterations=3))
    assert any("2 of 40 readouts are all zero" in n for n in result.notes)
    one = _edited(data, kspace=data.kspace[:, :1], noise=data.noise[:1])
    result = reconstruct_slice(one, basis, ReconSettings(n_iterations=3))
    assert any("one receive channel" in n for n in result.notes) and np.all(np.isfinite(result.coefficients))
    no_noise = reconstruct_slice(_edited(data, noise=None), basis, ReconSettings(n_iterations=3))
    assert any("not prewhitened" in n for n in no_noise.notes)


def test_kspace_coverage():
    n = 64
    r = np.linspace(0, n / 2, 4000)
    golden = np.concatenate([np.stack([r * np.cos(a), r * np.sin(a)], 1) for a in np.arange(400) * 2.399])
    assert kspace_coverage(golden, n) == 1.0
    assert kspace_coverage(golden[golden[:, 0] > 0], n) < 0.6


# ---- methods on the NIST phantom ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def nist_slice():
    """NIST T1 plate, 64 x 64, the Jiang schedule (1000 TRs), 1 of 48 interleaves per TR, 8 coils, SNR 40;
    a 10 % dictionary (rank 10) of that schedule."""
    from mrf_core.physics.sequence import default_schedule
    from mrf_core.recon.trajectory import SpiralParams
    from mrf_core.sim.phantoms import nist_phantom
    from mrf_core.sim.simulate import ScanSettings, SimulatedScan

    phantom = nist_phantom("NiCl2", field_t=3.0, matrix=64, fov_mm=240.0)
    schedule = default_schedule()
    scan = SimulatedScan(phantom, schedule, SpiralParams(fov_mm=240.0, matrix=64), ScanSettings(n_coils=8, snr=40.0))
    (data,) = _gather(scan, scan.acquisitions())
    dictionary = build_dictionary(schedule, percent_grid(10.0), rank=10, progress=False)
    return data, phantom, dictionary


def _nrmse(estimate, truth, mask):
    e = np.where(np.isfinite(estimate), estimate, 0.0)[mask]
    return float(np.linalg.norm(e - truth[mask]) / np.linalg.norm(truth[mask]))


@pytest.fixture(scope="module")
def nist_gridded(nist_slice):
    data, _, dictionary = nist_slice
    return reconstruct_slice(data, dictionary.basis, ReconSettings(method="gridding"))


def test_gridding_projected_equals_backprojection(nist_slice, nist_gridded):
    """Gridding is linear: its time series projected onto a basis is the back-projection in that basis."""
    data, _, dictionary = nist_slice
    gridded = nist_gridded
    projected = reconstruct_slice(data, dictionary.basis, ReconSettings(method="backprojection"))
    assert gridded.time_series.shape == (1000, 64, 64)
    a, b = gridded.coefficients, projected.coefficients
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-3


def test_iterative_beats_backprojection_beats_gridding(nist_slice, nist_gridded):
    """Map NRMSE (T1 + T2, object voxels) after matching: gridding matched in time against the full
    fingerprints (Ma 2013), back-projection and CG at rank 5 in the subspace."""
    from dataclasses import replace

    from mrf_core.mapping.matching import match

    data, phantom, dictionary = nist_slice
    mask, errors = phantom.mask[0], {}
    matched = match(dictionary, np.moveaxis(nist_gridded.time_series, 0, -1), domain="time", mask=mask)
    errors["gridding"] = (_nrmse(matched.t1_ms, phantom.t1_ms[0], mask), _nrmse(matched.t2_ms, phantom.t2_ms[0], mask))
    for method in ("backprojection", "cg", "llr"):
        result = reconstruct_slice(data, dictionary.basis, ReconSettings(method=method, rank=5))
        truncated = replace(dictionary, basis=result.basis, compressed=dictionary.compressed[:, :5])
        matched = match(truncated, np.moveaxis(result.coefficients, 0, -1), mask=mask)
        errors[method] = (_nrmse(matched.t1_ms, phantom.t1_ms[0], mask),
                          _nrmse(matched.t2_ms, phantom.t2_ms[0], mask))
    total = {k: sum(v) for k, v in errors.items()}
    assert total["llr"] < total["cg"] < total["backprojection"] < total["gridding"], errors
    assert errors["cg"][0] < errors["backprojection"][0] and errors["cg"][1] < errors["backprojection"][1]
