"""ISMRMRD writer and streaming reader: round trip, interoperability, index maps, and the errors that
name what a reconstruction is missing."""

from __future__ import annotations

import copy

import h5py
import ismrmrd
import numpy as np
import pytest

from mrf_core.io.rawio import (
    IndexMap,
    MrfRawFile,
    RawAcquisitionError,
    RawDataError,
    RawHeaderError,
    validate_header,
    write_raw,
)
from mrf_core.physics.sequence import FispSchedule
from mrf_core.recon.trajectory import SpiralParams, design_spiral
from mrf_core.sim.simulate import ScanSettings, SimulatedScan


def test_header_round_trip_carries_what_reconstruction_needs(sim_small_scan):
    scan, _, path = sim_small_scan
    with MrfRawFile(path) as raw:
        info, header = raw.info, raw.header
    assert info.schedule.hash == scan.schedule.hash and info.schedule.n_timepoints == 40
    assert info.spiral == scan.spiral.params and info.n_samples == scan.spiral.n_samples
    assert (info.matrix, info.fov_mm, info.n_slices, info.n_channels, info.field_t) == (32, 240.0, 2, 3, 3.0)
    assert info.index_map == IndexMap()
    enc = header.encoding[0]
    assert enc.trajectory.value == "spiral" and enc.trajectoryDescription.identifier == "mrf_vds"
    assert enc.encodingLimits.repetition.maximum == 39 and enc.encodingLimits.kspace_encoding_step_1.maximum == 7
    assert header.sequenceParameters.TE == [2.0] and header.sequenceParameters.TI == [18.0]
    np.testing.assert_allclose(header.sequenceParameters.flipAngle_deg, scan.schedule.flip_angle_deg)
    np.testing.assert_allclose(header.sequenceParameters.TR, scan.schedule.tr_ms)
    assert header.experimentalConditions.H1resonanceFrequency_Hz == pytest.approx(127.73e6, rel=1e-3)
    assert len(header.acquisitionSystemInformation.coilLabel) == 3


def test_acquisitions_round_trip_exactly_and_stream_in_blocks(sim_small_scan):
    _, acquisitions, path = sim_small_scan
    with MrfRawFile(path) as raw:
        assert raw.n_acquisitions == len(acquisitions) == 84  # more than one read block of 64
        for written, read in zip(acquisitions, raw.acquisitions(), strict=True):
            assert read.getHead() == written.getHead()
            np.testing.assert_array_equal(read.data, written.data)
            np.testing.assert_array_equal(read.traj, written.traj)
        readouts = list(raw.readouts())
        assert len(readouts) == 80 and readouts[0].number == 4
        r = readouts[45]
        assert (r.timepoint, r.interleave, r.slice) == (5, 5, 1)
        np.testing.assert_array_equal(r.data, acquisitions[49].data)
        np.testing.assert_array_equal(r.traj, acquisitions[49].traj)
        noise = raw.noise()
        assert noise.shape == (3, 4 * acquisitions[0].number_of_samples)
        np.testing.assert_array_equal(noise[:, : acquisitions[0].number_of_samples], acquisitions[0].data)


def test_the_ismrmrd_library_reads_the_file(sim_small_scan):
    _, acquisitions, path = sim_small_scan
    dataset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    try:
        assert dataset.number_of_acquisitions() == len(acquisitions)
        acq = dataset.read_acquisition(50)
        np.testing.assert_array_equal(acq.data, acquisitions[50].data)
        np.testing.assert_array_equal(acq.traj, acquisitions[50].traj)
        header = ismrmrd.xsd.CreateFromDocument(dataset.read_xml_header())
        assert FispSchedule.from_ismrmrd(header).n_timepoints == 40
    finally:
        dataset.close()


def test_ground_truth_round_trip(sim_small_scan):
    scan, _, path = sim_small_scan
    with MrfRawFile(path) as raw:
        truth = raw.truth()
    p = scan.phantom
    for name in ("t1_ms", "t2_ms", "pd", "b1", "labels"):
        np.testing.assert_array_equal(getattr(truth.phantom, name), getattr(p, name))
    assert truth.phantom.label_names == p.label_names and truth.phantom.field_t == 3.0
    assert truth.phantom.attrs["seed"] == 0 and truth.phantom.name == "brain"
    np.testing.assert_array_equal(truth.coil_sensitivities, scan.sensitivities)
    np.testing.assert_allclose(truth.noise_covariance, scan.noise_covariance)
    assert truth.simulation["noise_sigma"] == pytest.approx(scan.noise_sigma)
    assert truth.simulation["svd_rank"] == scan.stats.ranks and truth.simulation["snr"] == 30.0
    with h5py.File(path, "r") as f:
        assert set(f["dataset/mrf_truth"]) >= {"t1_ms", "t2_ms", "pd", "b1", "mask", "labels"}


def test_index_map_from_the_header_or_given(tmp_path, sim_small_scan):
    scan, _, _ = sim_small_scan
    imap = IndexMap(timepoint="user_int[0]", interleave="user[2]", slice="set")
    moved = SimulatedScan(scan.phantom, scan.schedule, scan.spiral.params,
                          ScanSettings(n_coils=3, snr=None, index_map=imap))
    path = tmp_path / "user.h5"
    acquisitions = list(moved.acquisitions())
    write_raw(path, moved.header, acquisitions)
    with MrfRawFile(path) as raw:
        assert raw.info.index_map == imap
        readouts = list(raw.readouts())
        assert [r.timepoint for r in readouts[:40]] == list(range(40)) and readouts[40].slice == 1
        assert [r.interleave for r in readouts[:9]] == [t % 8 for t in range(9)]
        assert raw.truth() is None
    with MrfRawFile(path, index_map=IndexMap()) as raw:  # told the wrong fields: every time point is 0
        assert {r.timepoint for r in raw.readouts()} == {0}
    acquisitions[7].user_int[0] = -1  # user_int is signed: out of range below too
    with pytest.raises(RawAcquisitionError, match="acquisition 7: time point user_int\\[0\\] = -1 is outside"):
        _write_and_read(tmp_path, moved.header, acquisitions)
    assert IndexMap.from_string("timepoint=idx.user[0], slice=slice").timepoint == "user[0]"
    for bad in ("timepoint=user_int[9]", "time=repetition", "timepoint=slice"):
        with pytest.raises(RawHeaderError):
            IndexMap.from_string(bad)


# ---- errors that name the field ---------------------------------------------------------------------
@pytest.fixture
def sim_parts(sim_small_scan):
    """A deep copy of the small scan's header and its first 24 acquisitions (4 noise), to break."""
    scan, acquisitions, _ = sim_small_scan
    return copy.deepcopy(scan.header), [copy.deepcopy(a) for a in acquisitions[:24]]


def _write_and_read(tmp_path, header, acquisitions, index_map=None):
    path = tmp_path / "broken.h5"
    write_raw(path, header, acquisitions)
    with MrfRawFile(path, index_map=index_map) as raw:
        return list(raw.readouts())


def _with_traj(acq, traj):
    out = ismrmrd.Acquisition.from_array(acq.data, traj)
    head = acq.getHead()
    head.trajectory_dimensions = traj.shape[1]
    out.setHead(head)
    out.data[:] = acq.data
    out.traj[:] = traj
    return out


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda h: setattr(h, "sequenceParameters", None), "sequenceParameters"),
        (lambda h: setattr(h.sequenceParameters, "TR", []), "TR list"),
        (lambda h: setattr(h.encoding[0], "trajectory", ismrmrd.xsd.trajectoryType.CARTESIAN),
         "trajectory = 'cartesian'"),
        (lambda h: setattr(h.encoding[0].encodedSpace.fieldOfView_mm, "x", 0.0), "fieldOfView_mm"),
        (lambda h: setattr(h.encoding[0].encodedSpace.matrixSize, "y", 16), "matrixSize = 32 x 16"),
        (lambda h: h.encoding[0].trajectoryDescription.userParameterDouble.pop(0), "'fov_mm'"),
        (lambda h: setattr(h, "encoding", []), "no encoding"),
    ],
)
def test_header_errors_name_the_field(sim_parts, breakage, message):
    header, _ = sim_parts
    breakage(header)
    with pytest.raises(RawHeaderError, match=message.replace("(", r"\(")):
        validate_header(header)


def test_acquisition_errors_name_the_field(tmp_path, sim_parts):
    header, acquisitions = sim_parts
    n = acquisitions[4].number_of_samples

    def broken(index, change):
        acqs = [copy.deepcopy(a) for a in acquisitions]
        acqs[index] = change(acqs[index])
        return acqs

    def set_index(acq, **values):
        for k, v in values.items():
            setattr(acq.idx, k, v)
        return acq

    cases = [
        (broken(10, lambda a: set_index(a, repetition=40)), "idx.repetition = 40|repetition = 40 is outside"),
        (broken(10, lambda a: set_index(a, kspace_encode_step_1=8)), "kspace_encode_step_1 = 8 is outside"),
        (broken(10, lambda a: set_index(a, slice=2)), "slice = 2 is outside"),
        (broken(10, lambda a: _with_traj(a, a.traj[:, :1])), "trajectory_dimensions = 1"),
        (broken(10, lambda a: _with_traj(a, a.traj / 32.0)), "other units"),
        (broken(10, lambda a: _with_traj(a, a.traj * 2.0)), "beyond matrix/2"),
        (broken(10, lambda a: ismrmrd.Acquisition.from_array(a.data[:, : n - 2], a.traj[: n - 2])),
         f"number_of_samples = {n - 2} disagrees with {n}"),
        (broken(10, lambda a: ismrmrd.Acquisition.from_array(a.data[:2], a.traj)), "active_channels = 2"),
    ]
    for acqs, message in cases:
        with pytest.raises(RawAcquisitionError, match=rf"acquisition 10: .*({message})"):
            _write_and_read(tmp_path, header, acqs)


def test_missing_traj_is_computed_from_the_header_or_named(tmp_path, sim_parts):
    header, acquisitions = sim_parts
    bare = [ismrmrd.Acquisition.from_array(a.data) for a in acquisitions]
    for a, b in zip(acquisitions, bare, strict=True):
        head = a.getHead()
        head.trajectory_dimensions = 0
        b.setHead(head)
        b.data[:] = a.data
    readouts = _write_and_read(tmp_path, header, bare)
    np.testing.assert_allclose(readouts[3].traj, acquisitions[7].traj, atol=1e-6)
    header.encoding[0].trajectoryDescription = None
    with pytest.raises(RawAcquisitionError, match="acquisition 4: trajectory_dimensions = 0 .*no 'mrf_vds'"):
        _write_and_read(tmp_path, header, bare)


def test_sample_count_must_match_the_trajectory_description(tmp_path, sim_parts):
    header, acquisitions = sim_parts
    for p in header.encoding[0].trajectoryDescription.userParameterLong:
        if p.name == "n_samples":
            p.value += 1
    with pytest.raises(RawAcquisitionError, match="acquisition 4: number_of_samples .* trajectoryDescription"):
        _write_and_read(tmp_path, header, acquisitions)


def test_not_an_ismrmrd_file(tmp_path):
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(RawDataError, match="cannot open"):
        MrfRawFile(tmp_path / "text.h5")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.create_group("other")
    with pytest.raises(RawDataError, match="no dataset group 'dataset'"):
        MrfRawFile(tmp_path / "empty.h5")
    with h5py.File(tmp_path / "noxml.h5", "w") as f:
        f.create_group("dataset").create_dataset("data", (0,), dtype="f4")
    with pytest.raises(RawDataError, match="no 'xml'"):
        MrfRawFile(tmp_path / "noxml.h5")


def test_third_traj_column_of_density_weights_is_ignored(tmp_path, sim_parts):
    header, acquisitions = sim_parts
    spiral = design_spiral(SpiralParams(fov_mm=240.0, matrix=32, n_interleaves=8, centre_interleaves=4))
    with_weights = [a if not a.trajectory_dimensions else
                    _with_traj(a, np.column_stack([a.traj, np.ones(a.number_of_samples, np.float32)]))
                    for a in acquisitions]
    readouts = _write_and_read(tmp_path, header, with_weights)
    np.testing.assert_allclose(readouts[2].traj, spiral.traj(2), atol=1e-6)
