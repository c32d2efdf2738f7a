"""Gathering acquisitions into slices, the reconstruction pipeline, its bad-input handling and
determinism. The methods' accuracy ordering is in test_recon_methods below (NIST phantom)."""

from __future__ import annotations

import dataclasses

import ismrmrd
import numpy as np
import pytest

from mrf_core.dictionary import build_dictionary, percent_grid
from mrf_core.gather import GatherError, SliceGatherer
from mrf_core.rawio import validate_header
from mrf_core.recon import METHODS, ReconError, ReconSettings, kspace_coverage, reconstruct_slice


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
    _, _, slices, basis = small
    first = reconstruct_slice(slices[0], basis, ReconSettings(n_iterations=4))
    second = reconstruct_slice(slices[0], basis, ReconSettings(n_iterations=4))
    np.testing.assert_array_equal(first.coefficients, second.coefficients)


def _edited(data, **changes):
    return dataclasses.replace(data, **changes)


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
