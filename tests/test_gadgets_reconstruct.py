"""Gadget reconstruct (and the whole chain) in-process on the small simulated scan: coefficient images, basis
image, geometry, maps against the phantom's truth, and the bad inputs the client must hear about."""

from __future__ import annotations

import copy

import ismrmrd
import numpy as np
import pytest

from gadgets.emit import emit
from gadgets.in_process import InProcessConnection, configuration, run_chain
from gadgets.map_dictionary import map_dictionary
from gadgets.map_network import map_network
from gadgets.reconstruct import reconstruct
from gadgets.runtime import ErrorMessage
from gadgets.stage_images import BASIS_ROLE, read_basis_image, read_coefficients, role_of, warnings_of
from mrf_core.io.map_images import COEFFICIENT_ROLE, image_meta
from mrf_core.io.rawio import RawAcquisitionError, RawHeaderError
from mrf_core.physics.sequence import FispSchedule
from mrf_core.pipeline import PipelineError
from mrf_core.recon.gather import GatherError

DICT = {"grid_step_pct": "8"}


@pytest.fixture(scope="module")
def props(tmp_path_factory):
    return {**DICT, "dictionary_cache_dir": str(tmp_path_factory.mktemp("dict_cache"))}


@pytest.fixture(scope="module")
def recon_out(sim_small_scan, props):
    scan, acquisitions, _ = sim_small_scan
    return run_chain(scan.header, acquisitions, [(reconstruct, {**props, "basis": "dictionary", "threads": "1"})])


def test_reconstruct_sends_a_basis_image_then_one_coefficient_image_per_slice(sim_small_scan, recon_out):
    scan, acquisitions, _ = sim_small_scan
    assert [role_of(item) for item in recon_out] == [BASIS_ROLE, COEFFICIENT_ROLE, COEFFICIENT_ROLE]
    basis, schedule = read_basis_image(recon_out[0])
    assert basis.rank == 10 and schedule.n_timepoints == 40 and basis.n_timepoints == 40
    for slice_index, image in enumerate(recon_out[1:]):
        coefficients, basis_hash = read_coefficients(image)
        assert basis_hash == basis.hash and coefficients.shape == (10, 32, 32)
        assert image_meta(image)["MRF_Rank"] == "10"
        head = image.getHead()
        first = next(a for a in acquisitions if a.idx.slice == slice_index and not a.is_flag_set(
            ismrmrd.ACQ_IS_NOISE_MEASUREMENT))
        assert head.slice == slice_index
        np.testing.assert_allclose(head.position, first.position)
        np.testing.assert_allclose(head.slice_dir, first.slice_dir)
        assert head.field_of_view[0] == pytest.approx(240.0)
        background = ~(np.abs(coefficients) > 0).any(axis=0)
        assert 0.2 < background.mean() < 0.8, "the object mask zeroes the background, not the object"


def test_whole_chain_maps_the_phantom_and_reports_the_fallback(sim_small_scan, recon_out, props, tmp_path):
    scan, _, _ = sim_small_scan
    images = run_chain(scan.header, recon_out, [(map_network, {"model": str(tmp_path / "missing.pt")}),
                                                (map_dictionary, props), (emit, None)])
    roles = sorted((image_meta(im)["GADGETRON_DataRole"], im.getHead().slice) for im in images)
    assert roles == sorted((r, s) for r in ("T1", "T2", "PD", "MatchQuality") for s in (0, 1))
    phantom = scan.truth().phantom
    for image in images:
        meta = image_meta(image)
        assert meta["MRF_Mapper"] == "dictionary" and "missing.pt" in str(meta["MRF_Warning"])
        if meta["GADGETRON_DataRole"] not in ("T1", "T2"):
            continue
        s = image.getHead().slice
        truth = (phantom.t1_ms if meta["GADGETRON_DataRole"] == "T1" else phantom.t2_ms)[s]
        estimate = image.data[0, 0]
        both = (truth > 0) & (estimate > 0)
        assert both.sum() > 0.8 * (truth > 0).sum(), "most of the object is mapped"
        assert np.median(np.abs(estimate[both] / truth[both] - 1)) < 0.25  # 40 TRs, 32^2, SNR 30, B1 +-10 %


def test_auto_basis_without_a_model_uses_the_dictionary(sim_small_scan, props, tmp_path, caplog):
    scan, acquisitions, _ = sim_small_scan
    caplog.set_level("INFO")
    one_slice = [a for a in acquisitions if a.idx.slice == 0]
    out = run_chain(scan.header, one_slice, [(reconstruct, {**props, "model": str(tmp_path / "none.pt"),
                                                            "method": "backprojection"})])
    assert [role_of(item) for item in out] == [BASIS_ROLE, COEFFICIENT_ROLE]
    assert "basis from the dictionary (the network model cannot be used: no model file" in caplog.text


# ---- bad input -------------------------------------------------------------------------------------
def _fails(header, items, properties, error, message):
    """The gadget raises `error` matching `message`, and its last output is the ERROR for the host."""
    connection = InProcessConnection(header, items, configuration(properties))
    with pytest.raises(error, match=message):
        reconstruct(connection)
    assert isinstance(connection.sent[-1], ErrorMessage)
    assert connection.sent[-1].text.startswith("reconstruct: ")
    return connection


def _untouchable():
    """Acquisitions that must not be read: header errors come before the data."""
    raise AssertionError("the gadget read acquisitions after a header error")
    yield


def test_header_without_schedule_is_an_error_before_any_data(sim_small_scan, props):
    header = copy.deepcopy(sim_small_scan[0].header)
    header.sequenceParameters = None
    _fails(header, _untouchable(), props, RawHeaderError, "no sequenceParameters")


def test_schedule_file_replaces_a_missing_header_schedule(sim_small_scan, props, tmp_path):
    scan, acquisitions, _ = sim_small_scan
    path = tmp_path / "schedule.json"
    FispSchedule.from_ismrmrd(scan.header).save(path)
    header = copy.deepcopy(scan.header)
    header.sequenceParameters = None
    out = run_chain(header, [a for a in acquisitions if a.idx.slice == 1],
                    [(reconstruct, {**props, "schedule_file": str(path), "method": "backprojection"})])
    assert read_basis_image(out[0])[1].n_timepoints == 40 and out[1].getHead().slice == 1


def test_header_without_a_spiral_trajectory_is_an_error(sim_small_scan, props):
    header = copy.deepcopy(sim_small_scan[0].header)
    header.encoding[0].trajectory = ismrmrd.xsd.trajectoryType.CARTESIAN
    _fails(header, _untouchable(), props, RawHeaderError, "non-Cartesian")


def test_nan_readout_is_an_error(sim_small_scan, props):
    scan, acquisitions, _ = sim_small_scan
    items = list(acquisitions[:20])
    number = next(i for i, a in enumerate(items) if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)) + 2
    data = items[number].data.copy()
    data[0, 5] = np.nan
    items[number] = ismrmrd.Acquisition(items[number].getHead(), data, items[number].traj.copy())
    _fails(scan.header, items, props, RawAcquisitionError, f"acquisition {number}: data has non-finite samples")


def test_zero_imaging_acquisitions_is_an_error(sim_small_scan, props):
    scan, acquisitions, _ = sim_small_scan
    noise_only = [a for a in acquisitions if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    _fails(scan.header, noise_only, props, GatherError, "no imaging acquisitions")


def test_basis_model_without_a_model_is_an_error(sim_small_scan, props, tmp_path):
    _fails(sim_small_scan[0].header, _untouchable(), {**props, "basis": "model", "model": str(tmp_path / "x.pt")},
           PipelineError, "basis = model, but the model cannot be used: no model file")


def test_bad_index_map_property_is_an_error(sim_small_scan, props):
    _fails(sim_small_scan[0].header, _untouchable(), {**props, "index_map": "timepoint=user_int[9]"},
           RawHeaderError, "index map timepoint")


def test_waveforms_and_other_items_pass_through(sim_small_scan, props):
    scan, acquisitions, _ = sim_small_scan
    waveform = ismrmrd.Waveform.from_array(np.zeros((1, 4), np.uint32))
    out = run_chain(scan.header, [waveform, *[a for a in acquisitions if a.idx.slice == 0]],
                    [(reconstruct, {**props, "method": "backprojection"})])
    assert out[0] is waveform and [role_of(i) for i in out[1:]] == [BASIS_ROLE, COEFFICIENT_ROLE]
    assert warnings_of(out[2]) == []


# ---- with a real (tiny) model archive --------------------------------------------------------------
def _tiny_model(schedule, path):
    from mrf_core.mapping.parameters import ParameterSpace
    from mrf_core.mapping.training import TrainConfig, train_model

    config = TrainConfig(arch="mlp", n_train=256, n_val=64, epochs=1, batch_size=64, table_nodes=9, n_states=10,
                         progress=False, space=ParameterSpace((20.0, 3000.0), (5.0, 500.0)))
    train_model(schedule, config, path)
    return path


@pytest.fixture(scope="module")
def models(sim_small_scan, tmp_path_factory):
    """A model for the scan's schedule and one for another schedule (the first 32 of its 40 TRs)."""
    schedule = FispSchedule.from_ismrmrd(sim_small_scan[0].header)
    folder = tmp_path_factory.mktemp("models")
    return _tiny_model(schedule, folder / "own.pt"), _tiny_model(schedule.truncated(32), folder / "foreign.pt")


def test_default_chain_with_a_model_for_the_scan_maps_with_the_network(sim_small_scan, models, props):
    scan, acquisitions, _ = sim_small_scan
    one_slice = [a for a in acquisitions if a.idx.slice == 0]
    own = str(models[0])
    images = run_chain(scan.header, one_slice, [(reconstruct, {**props, "model": own, "method": "backprojection"}),
                                                (map_network, {"model": own}), (map_dictionary, props),
                                                (emit, None)])
    t1 = next(im for im in images if image_meta(im)["GADGETRON_DataRole"] == "T1")
    meta = image_meta(t1)
    assert meta["MRF_Mapper"] == "network" and "MRF_Warning" not in meta
    truth = scan.truth().phantom.t1_ms[0]
    assert (t1.data[0, 0][truth > 0] > 0).mean() > 0.8, "the network maps the object"


def test_default_chain_with_a_foreign_model_falls_back_to_the_dictionary(sim_small_scan, models, props, caplog):
    scan, acquisitions, _ = sim_small_scan
    caplog.set_level("WARNING")
    one_slice = [a for a in acquisitions if a.idx.slice == 0]
    foreign = str(models[1])
    images = run_chain(scan.header, one_slice, [(reconstruct, {**props, "model": foreign, "method": "backprojection"}),
                                                (map_network, {"model": foreign}), (map_dictionary, props),
                                                (emit, None)])
    meta = image_meta(next(im for im in images if image_meta(im)["GADGETRON_DataRole"] == "T1"))
    assert meta["MRF_Mapper"] == "dictionary" and "trained for schedule hash" in str(meta["MRF_Warning"])
    assert "slice 0 not mapped by the network: model foreign.pt was trained for schedule" in caplog.text


def test_gathering_runs_ahead_of_the_reconstruction_and_keeps_errors_in_order():
    """prefetched (the reconstruct stage's gather thread): while the consumer still holds item 1, the
    producer already makes item 2 (slice k + 1 streams in while slice k is reconstructed); a producer's
    exception arrives after the items before it."""
    import threading

    from mrf_core.pipeline import prefetched

    second = threading.Event()

    def items():
        yield 1
        second.set()
        yield 2
        raise GatherError("slice 2: incomplete")

    stream = prefetched(items())
    assert next(stream) == 1
    assert second.wait(timeout=30)  # made while item 1 is being worked on
    assert next(stream) == 2
    with pytest.raises(GatherError, match="slice 2"):
        next(stream)
