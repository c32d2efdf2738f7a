"""Raw files in the conventions scanners' converters write, written here with h5py and a literal ISMRMRD XML
header (not the project's writer; k-space values from the project's signal simulation): each reconstructs
through `mrf reconstruct` to the maps of the default layout, or fails with an error naming the field and
the fix."""

from __future__ import annotations

import finufft
import h5py
import numpy as np
import pytest
from ismrmrd.hdf5 import acquisition_dtype

from gadgets.emit import emit
from gadgets.in_process import run_chain
from gadgets.map_dictionary import map_dictionary
from gadgets.reconstruct import reconstruct
from mrf_core.io.map_images import read_map_file, write_images
from mrf_core.io.rawio import MrfRawFile
from mrf_core.physics.epg import signal_phase
from mrf_core.physics.sequence import default_schedule
from mrf_core.recon.trajectory import HargreavesVds, SpiralParams, design_spiral, nufft_coords
from mrf_core.sim.phantoms import brain_phantom
from mrf_core.sim.simulate import ScanSettings, SimulatedScan, subspace_model
from mrf_gadgetron.cli import main

N, FOV_MM, N_T, N_INTERLEAVES, N_COILS = 32, 240.0, 40, 8, 3
NOISE_FLAG, LAST_IN_SLICE_FLAG = 1 << 18, 1 << 7  # ISMRMRD flag bits 19 and 8, 1-based
SCHEDULE = default_schedule().truncated(N_T)
VDS = HargreavesVds(N_INTERLEAVES, 2500, 2.4, 14414.4, (FOV_MM / 10,), N / (2 * FOV_MM / 10))


# ---- an independent writer -------------------------------------------------------------------------------
def _header(*, schedule: str = "full", description: str = "", index_map: str = "", limits: dict | None = None
            ) -> str:
    """ISMRMRD XML as a converter writes it. schedule: 'full' (per-TR lists) or 'one' (the protocol's one TR
    and flip angle, as siemens_to_ismrmrd writes); description: a trajectoryDescription element."""
    if schedule == "full":
        lists = "".join(f"<TR>{v:.6f}</TR>" for v in SCHEDULE.tr_ms) + "<TE>2.0</TE><TI>18.0</TI>" + "".join(
            f"<flipAngle_deg>{v:.6f}</flipAngle_deg>" for v in SCHEDULE.flip_angle_deg)
    else:
        lists = "<TR>12.0</TR><TE>2.0</TE><TI>18.0</TI><flipAngle_deg>60.0</flipAngle_deg>"
    limits = limits or {"kspace_encoding_step_1": N_INTERLEAVES - 1, "repetition": N_T - 1}
    limit_xml = "".join(f"<{k}><minimum>0</minimum><maximum>{v}</maximum><center>0</center></{k}>"
                        for k, v in limits.items())
    user = (f"<userParameters><userParameterString><name>MRF_index_map</name><value>{index_map}</value>"
            "</userParameterString></userParameters>" if index_map else "")
    space = (f"<matrixSize><x>{N}</x><y>{N}</y><z>1</z></matrixSize>"
             f"<fieldOfView_mm><x>{FOV_MM}</x><y>{FOV_MM}</y><z>5</z></fieldOfView_mm>")
    return (
        '<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">'
        f"<acquisitionSystemInformation><systemFieldStrength_T>3.0</systemFieldStrength_T>"
        f"<receiverChannels>{N_COILS}</receiverChannels></acquisitionSystemInformation>"
        "<experimentalConditions><H1resonanceFrequency_Hz>127731000</H1resonanceFrequency_Hz>"
        "</experimentalConditions>"
        f"<encoding><encodedSpace>{space}</encodedSpace><reconSpace>{space}</reconSpace>"
        f"<encodingLimits>{limit_xml}</encodingLimits><trajectory>spiral</trajectory>{description}</encoding>"
        f"<sequenceParameters>{lists}</sequenceParameters>{user}</ismrmrdHeader>"
    )


def _hargreaves_xml() -> str:
    longs = {"interleaves": VDS.interleaves, "fov_coefficients": 1, "SamplingTime_ns": VDS.sampling_time_ns}
    doubles = {"MaxGradient_G_per_cm": VDS.max_grad_G_per_cm, "MaxSlewRate_G_per_cm_per_s":
               VDS.max_slew_G_per_cm_per_s, "FOVCoeff_1_cm": VDS.fov_coefficients_cm[0],
               "krmax_per_cm": VDS.krmax_per_cm}
    return ("<trajectoryDescription><identifier>HargreavesVDS2000</identifier>"
            + "".join(f"<userParameterLong><name>{k}</name><value>{v}</value></userParameterLong>"
                      for k, v in longs.items())
            + "".join(f"<userParameterDouble><name>{k}</name><value>{v!r}</value></userParameterDouble>"
                      for k, v in doubles.items())
            + "</trajectoryDescription>")


def _write(path, xml: str, readouts, fields, traj_of=lambda r: r["traj"], noise=()) -> str:
    """Rows of ismrmrd's acquisition dtype, by h5py: noise readouts, then readouts (dicts with t, j, data,
    traj, ...) with the counters fields(readout) -> {field: value} ("user_int[i]" for user_int)."""
    rows = np.zeros(len(noise) + len(readouts), dtype=acquisition_dtype)
    for i, item in enumerate([*noise, *readouts]):
        head = rows[i]["head"]
        data = item["data"] if isinstance(item, dict) else item
        head["version"], head["number_of_samples"] = 1, data.shape[1]
        head["active_channels"] = head["available_channels"] = data.shape[0]
        head["channel_mask"][0] = (1 << data.shape[0]) - 1
        head["scan_counter"], head["sample_time_us"] = i + 1, 2.0
        head["read_dir"], head["phase_dir"], head["slice_dir"] = (1, 0, 0), (0, 1, 0), (0, 0, 1)
        traj = None
        if isinstance(item, dict):
            for name, value in fields(item).items():
                if name.startswith("user_int["):
                    head["user_int"][int(name[9])] = value
                else:
                    head["idx"][name] = value
            traj = traj_of(item)
        else:
            head["flags"] = NOISE_FLAG
        if traj is not None:
            head["trajectory_dimensions"] = traj.shape[1]
            rows[i]["traj"] = np.ascontiguousarray(traj, dtype=np.float32).reshape(-1)
        else:
            rows[i]["traj"] = np.zeros(0, dtype=np.float32)
        rows[i]["data"] = np.ascontiguousarray(data, dtype=np.complex64).view(np.float32).reshape(-1)
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset/xml", data=[xml.encode()], dtype=h5py.special_dtype(vlen=bytes))
        f.create_dataset("dataset/data", data=rows)
    return str(path)


def _default(r):
    return {"repetition": r["t"], "kspace_encode_step_1": r["j"]}


# ---- the scan and the maps of its default layout -----------------------------------------------------------
@pytest.fixture(scope="module")
def sim():
    phantom = brain_phantom(field_t=3.0, matrix=N, fov_mm=FOV_MM, n_slices=1)
    spiral = SpiralParams(fov_mm=FOV_MM, matrix=N, n_interleaves=N_INTERLEAVES, centre_interleaves=4)
    return SimulatedScan(phantom, SCHEDULE, spiral, ScanSettings(n_coils=N_COILS, snr=40.0, n_noise_readouts=2))


@pytest.fixture(scope="module")
def scan(sim, tmp_path_factory):
    """One slice (32 x 32, 40 TRs, 8 interleaves, 3 coils): readouts (t, j, data, traj in cycles/FOV) and
    noise from the simulator's signal model, the folder, and the maps of the default layout."""
    spiral = sim.spiral.params
    acquisitions = list(sim.acquisitions())
    noise = [a.data.copy() for a in acquisitions[:2]]
    readouts = [{"t": t, "j": t % N_INTERLEAVES, "data": a.data.copy(), "traj": a.traj.copy()}
                for t, a in enumerate(acquisitions[2:])]
    assert all(design_spiral(spiral).interleaves_of_tr(r["t"])[0] == r["j"] for r in readouts)
    folder = tmp_path_factory.mktemp("conventions")
    baseline = _reconstruct(_write(folder / "default.h5", _header(), readouts, _default, noise=noise), folder)
    return readouts, noise, folder, baseline


def _reconstruct(path, folder, *flags) -> dict:
    out = folder / "maps.h5"
    out.unlink(missing_ok=True)
    argv = ["reconstruct", str(path), "-o", str(out), "--mapper", "dictionary", "--grid-step-pct", "20",
            "--method", "cg", "--psf-cache-dir", str(folder / "mrf-gadgetron" / "psf"), "--dictionary-cache-dir",
            str(folder / "mrf-gadgetron" / "dictionaries"), "--threads", "1", *flags]
    assert main(argv) == 0
    maps = read_map_file(out)
    return {"t1": maps.maps["t1_ms"], "t2": maps.maps["t2_ms"], "meta": maps.meta, "geometry": maps.geometry}


def _same_maps(maps, baseline):
    """The same data in another convention: the same maps, up to float32 rounding of the trajectory, which
    can move a voxel to a neighbouring atom of the 20 % grid, or a voxel at the mask threshold (mask_fraction
    of the signal) across it: at most 1 % of the voxels masked differently or further than 1 %."""
    mapped = np.isfinite(baseline["t1"])
    assert mapped.sum() > 200
    assert (np.isfinite(maps["t1"]) != mapped).sum() <= 0.01 * mapped.sum()
    mapped &= np.isfinite(maps["t1"])
    for key in ("t1", "t2"):
        off = np.abs(maps[key][mapped] - baseline[key][mapped]) > 0.01 * baseline[key][mapped]
        assert off.mean() <= 0.01, key


def _fails(capsys, path, folder, message, *flags):
    out = folder / "failed.h5"
    assert main(["reconstruct", str(path), "-o", str(out), "--mapper", "dictionary", "--grid-step-pct", "20",
                 "--dictionary-cache-dir", str(folder / "mrf-gadgetron" / "dictionaries"), *flags]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert message in err, err


# ---- index layouts ---------------------------------------------------------------------------------------
def test_swapped_counters_are_detected_or_refused_with_the_fix(scan, capsys):
    """Time point in kspace_encode_step_1 and interleave in repetition (traj normalised to [-0.5, 0.5], as
    Gadgetron's spiral gadgets write it): detected when no index map is stated; refused naming the counters
    and the index map that fixes it when the header states the default map."""
    readouts, noise, folder, baseline = scan

    def swapped(r):
        return {"kspace_encode_step_1": r["t"], "repetition": r["j"]}

    path = _write(folder / "swapped.h5", _header(limits={"kspace_encoding_step_1": N_T - 1}), readouts, swapped,
                  traj_of=lambda r: r["traj"] / N, noise=noise)
    _same_maps(_reconstruct(path, folder), baseline)
    stated = _write(folder / "stated.h5", _header(index_map="timepoint=repetition,interleave=kspace_encode_step_1"),
                    readouts, swapped, noise=noise)
    _fails(capsys, stated, folder, "time point field repetition has 8 distinct values with up to 5 readouts each, "
           "for a schedule of 40 time points of 1 readout(s): kspace_encode_step_1 fits (40 distinct values): set "
           "index_map (--index-map, property index_map) to 'timepoint=kspace_encode_step_1,interleave=repetition'")


@pytest.mark.parametrize("fields, units, scale", [
    (lambda r: {"contrast": r["t"], "segment": r["j"]}, "rad_per_m", 2 * np.pi / (FOV_MM / 1000)),
    (lambda r: {"user_int[0]": r["t"], "user_int[1]": r["j"]}, "cycles_per_m", 1 / (FOV_MM / 1000)),
])
def test_other_counters_and_traj_units_are_detected(scan, fields, units, scale, caplog):
    caplog.set_level("INFO")
    readouts, noise, folder, baseline = scan
    path = _write(folder / f"{units}.h5", _header(limits={}), readouts, fields,
                  traj_of=lambda r: r["traj"] * scale, noise=noise)
    _same_maps(_reconstruct(path, folder), baseline)
    assert f"units {units} (detected" in caplog.text and "index layout detected" in caplog.text


def test_an_ambiguous_layout_is_refused(scan, capsys):
    readouts, noise, folder, _ = scan
    order = np.random.default_rng(0).permutation(N_T)
    path = _write(folder / "ambiguous.h5", _header(), readouts,
                  lambda r: {"repetition": r["t"], "contrast": int(order[r["t"]]), "kspace_encode_step_1": r["j"]},
                  noise=noise)
    _fails(capsys, path, folder, "the time point could be in repetition or contrast (each 40 distinct values): "
           "name it with index_map (--index-map timepoint=repetition)")


def test_a_stated_interleave_field_that_contradicts_the_trajectories_names_the_one_that_fits(scan, capsys):
    readouts, noise, folder, _ = scan
    path = _write(folder / "segment.h5", _header(index_map="timepoint=repetition,interleave=kspace_encode_step_1"),
                  readouts, lambda r: {"repetition": r["t"], "segment": r["j"]}, noise=noise)
    _fails(capsys, path, folder, "readouts with one interleave kspace_encode_step_1 value have different "
           "trajectories (1 values, 8 trajectories): name the interleave's field with index_map (--index-map "
           "interleave=segment")


# ---- schedules -------------------------------------------------------------------------------------------
def test_a_one_tr_header_asks_for_the_schedule(scan, capsys):
    """siemens_to_ismrmrd writes the protocol's one TR and flip angle: the schedule comes from a file or a
    built-in schedule's name."""
    readouts, noise, folder, baseline = scan
    path = _write(folder / "siemens.h5", _header(schedule="one"), readouts, _default, noise=noise)
    _fails(capsys, path, folder, "the header holds 1 TR for 40 time points")
    _fails(capsys, path, folder, "give the schedule with --schedule-file FILE")
    _same_maps(_reconstruct(path, folder, "--schedule", "fisp_jiang2015[:40]"), baseline)


# ---- Gadgetron's HargreavesVDS2000 description -----------------------------------------------------------
def test_a_hargreaves_description_without_traj_gives_the_maps_of_its_trajectory(sim, scan):
    """Siemens spiral data through siemens_to_ismrmrd: no traj, Gadgetron's description, interleave in
    kspace_encode_step_1. Its maps are those of the same readouts with the trajectory written out as
    Gadgetron's SpiralToGenericGadget writes it (normalised, a third column of weights). The readouts are the
    simulator's subspace signal model on that trajectory (the forward model of mrf_core.recon.trajectory)."""
    _, noise, folder, _ = scan
    n_samples = VDS.n_samples - 5  # the ADC stops a little before the design's end
    cycles = VDS.traj(np.arange(N_INTERLEAVES), n_samples, FOV_MM)
    model = subspace_model(sim.phantom, 0, SCHEDULE)
    rows, cols = nufft_coords(cycles, N)
    images = (sim.sensitivities[:, 0, None] * complex(signal_phase(SCHEDULE)) * model.coefficients[None])
    k_basis = finufft.nufft2d2(rows, cols, images.reshape(-1, N, N).astype(np.complex128), isign=-1, eps=1e-9)
    k_basis = k_basis.reshape(N_COILS, model.rank, N_INTERLEAVES, n_samples)
    readouts = [{"t": t, "j": t % N_INTERLEAVES,
                 "data": np.einsum("k,cks->cs", model.basis[t], k_basis[:, :, t % N_INTERLEAVES])}
                for t in range(N_T)]
    normalised = cycles / N
    with_weights = np.concatenate([normalised, np.ones((N_INTERLEAVES, n_samples, 1), np.float32)], axis=2)
    vds_xml = _header(description=_hargreaves_xml())
    bare = _reconstruct(_write(folder / "vds.h5", vds_xml, readouts, _default, traj_of=lambda r: None,
                               noise=noise), folder)
    written = _reconstruct(_write(folder / "vds_traj.h5", vds_xml, readouts, _default,
                                  traj_of=lambda r: with_weights[r["j"]], noise=noise), folder)
    _same_maps(bare, written)
    inside = sim.phantom.mask & np.isfinite(bare["t1"])
    true = sim.phantom.t1_ms[inside]
    # the maps are the phantom's: T1 within the 20 % grid's spacing (T2 from 40 TRs at 32 x 32 is coarse)
    assert np.median(np.abs(bare["t1"][inside] - true) / true) < 0.2


# ---- incomplete scans ------------------------------------------------------------------------------------
def test_a_scan_stopped_early_or_with_dropped_readouts(scan, capsys):
    readouts, noise, folder, _ = scan
    stopped = _write(folder / "stopped.h5", _header(), readouts[:30], _default, noise=noise)
    maps = _reconstruct(stopped, folder)
    assert np.isfinite(maps["t1"]).sum() > 200
    assert "the scan stopped after 30 of 40 time points" in str(maps["meta"]["t1_ms"]["MRF_Warning"])
    dropped = _write(folder / "dropped.h5", _header(), readouts[:7] + readouts[8:], _default, noise=noise)
    _fails(capsys, dropped, folder, "slice 0: 1 of 40 time points missing (first: 7); 39 readouts: more than "
           "max_missing_fraction = 0.02 allows (--max-missing-fraction")
    maps = _reconstruct(dropped, folder, "--max-missing-fraction", "0.05")
    assert "1 of 40 time points missing" in str(maps["meta"]["t1_ms"]["MRF_Warning"])


def test_the_gadget_chain_on_a_detected_layout_stopped_early_gives_the_command_line_maps(scan):
    """The gadgets (in process: the wire is the replay tests'): swapped counters detected, a scan stopped
    after 30 time points mapped by map_dictionary with the truncated schedule's basis, the warning in the
    images' meta."""
    readouts, noise, folder, _ = scan
    path = _write(folder / "swapped_stopped.h5", _header(limits={}), readouts[:30],
                  lambda r: {"kspace_encode_step_1": r["t"], "repetition": r["j"]}, noise=noise)
    cli = _reconstruct(path, folder)
    caches = {"grid_step_pct": "20", "threads": "1", "dictionary_cache_dir": str(folder / "mrf-gadgetron" /
              "dictionaries")}
    with MrfRawFile(path) as raw:
        images = run_chain(raw.header, list(raw.acquisitions()), [
            (reconstruct, {**caches, "method": "cg", "basis": "dictionary",
                           "psf_cache_dir": str(folder / "mrf-gadgetron" / "psf")}),
            (map_dictionary, caches), (emit, None)])
    write_images(folder / "chain.h5", images, "run")
    chain = read_map_file(folder / "chain.h5")
    _same_maps({"t1": chain.maps["t1_ms"], "t2": chain.maps["t2_ms"]}, cli)
    assert "the scan stopped after 30 of 40 time points" in str(chain.meta["t1_ms"]["MRF_Warning"])


# ---- a stack of spirals ----------------------------------------------------------------------------------
def test_a_stack_of_spirals_gives_the_maps_of_its_partitions(tmp_path):
    """Three partitions in kspace_encode_step_2 (header matrix z = 3): the maps of the slices the test
    encodes along kz (y_p = sum_z x_z exp(-2 pi i (p - 1)(z - 1) / 3) / sqrt(3), noiseless) are those of the
    same slices as a 2D scan, at (z - 1) x 5 mm; the simulator's stack of spirals writes those partitions."""
    phantom = brain_phantom(field_t=3.0, matrix=N, fov_mm=FOV_MM, n_slices=3)
    spiral = SpiralParams(fov_mm=FOV_MM, matrix=N, n_interleaves=N_INTERLEAVES, centre_interleaves=4)
    settings = {"n_coils": N_COILS, "snr": None, "slice_thickness_mm": 5.0, "slice_spacing_mm": 5.0}
    flat = list(SimulatedScan(phantom, SCHEDULE, spiral, ScanSettings(**settings)).acquisitions())
    slices = np.stack([a.data for a in flat]).reshape(3, N_T, N_COILS, -1)
    z = np.arange(3) - 1
    partitions = np.einsum("pz,ztcs->ptcs", np.exp(-2j * np.pi * np.outer(z, z) / 3) / np.sqrt(3), slices)
    traj = [a.traj.copy() for a in flat[:N_T]]
    two_d = [{"t": t, "j": t % N_INTERLEAVES, "s": s, "data": slices[s, t], "traj": traj[t]}
             for s in range(3) for t in range(N_T)]
    header_2d = _header(limits={"repetition": N_T - 1, "slice": 2})
    maps_2d = _reconstruct(_write(tmp_path / "2d.h5", header_2d, two_d,
                                  lambda r: {**_default(r), "slice": r["s"]}), tmp_path)
    three_d = [{"t": t, "j": t % N_INTERLEAVES, "p": p, "data": partitions[p, t], "traj": traj[t]}
               for p in range(3) for t in range(N_T)]
    header_3d = _header(limits={"repetition": N_T - 1, "kspace_encoding_step_2": 2}).replace(
        "<z>1</z>", "<z>3</z>").replace("<z>5</z>", "<z>15</z>")
    maps_3d = _reconstruct(_write(tmp_path / "3d.h5", header_3d, three_d,
                                  lambda r: {**_default(r), "kspace_encode_step_2": r["p"]}), tmp_path)
    _same_maps(maps_3d, maps_2d)
    assert [maps_3d["geometry"][s].position[2] for s in range(3)] == [-5.0, 0.0, 5.0]
    assert maps_3d["geometry"][0].fov_mm[2] == 5.0
    stack = SimulatedScan(phantom, SCHEDULE, spiral, ScanSettings(**settings, stack_of_spirals=True))
    written = list(stack.acquisitions())
    assert stack.header.encoding[0].encodedSpace.matrixSize.z == 3
    assert [a.idx.kspace_encode_step_2 for a in written[::N_T]] == [0, 1, 2]
    np.testing.assert_allclose(np.stack([a.data for a in written]).reshape(partitions.shape), partitions,
                               atol=1e-5 * np.abs(partitions).max())


def test_the_settings_table_lists_the_trajectory_units():
    from mrf_core import settings
    from mrf_core.recon.trajectory import TRAJ_UNITS

    assert settings.TRAJ_UNITS == TRAJ_UNITS


def test_readouts_are_labelled_by_trajectory_as_numpy_sorts_them():
    from mrf_core.recon.gather import _content_labels

    rng = np.random.default_rng(3)
    distinct = [rng.standard_normal((50, 2)).astype(np.float32).tobytes() for _ in range(7)]
    contents = [distinct[i] for i in rng.integers(0, 7, 40)]
    expected = np.unique(np.array(contents), return_inverse=True)[1].reshape(-1)
    np.testing.assert_array_equal(_content_labels(contents), expected)
