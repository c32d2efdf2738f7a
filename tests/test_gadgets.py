"""Gadgets run in-process (gadgets.in_process) on synthetic coefficient images: properties, stage images,
dictionary mapping accuracy, the network fallback, emit meta/series/geometry, and errors the client sees."""

from __future__ import annotations

import io
import sys
import xml.etree.ElementTree as ElementTree

import ismrmrd
import numpy as np
import pytest

from gadgets import compat
from gadgets.emit import PROPERTIES as EMIT_PROPERTIES
from gadgets.emit import emit
from gadgets.in_process import InProcessConnection, configuration, run_chain
from gadgets.map_dictionary import map_dictionary
from gadgets.map_network import map_network
from gadgets.map_stage import ScanContext, mapped
from gadgets.properties import GadgetConfigError, read_properties
from gadgets.runtime import ErrorMessage, write_error
from gadgets.stage_images import (
    MAPS_ROLE,
    add_warning,
    basis_image,
    maps_bundle,
    read_basis_image,
    read_coefficients,
    read_maps_bundle,
    role_of,
    warnings_of,
)
from mrf_core.io.map_images import ImageGeometry, coefficient_image, image_meta
from mrf_core.mapping.maps import QuantitativeMaps
from mrf_core.physics.dictionary import cache_key
from mrf_core.physics.epg import simulate_fingerprints
from mrf_core.physics.sequence import default_schedule
from mrf_core.pipeline import NetworkMapper, dictionary_for
from mrf_core.settings import for_stages

TISSUES = [(300.0, 40.0), (800.0, 60.0), (1300.0, 90.0), (2000.0, 150.0), (3500.0, 1500.0)]
N = 10
DICTIONARY_PROPERTIES = for_stages("dictionary")
GEOMETRY = ImageGeometry((220.0, 220.0, 5.0), position=(1.0, -2.0, 12.5), read_dir=(0.0, 1.0, 0.0),
                         phase_dir=(-1.0, 0.0, 0.0), slice_dir=(0.0, 0.0, 1.0))


@pytest.fixture(scope="module")
def schedule():
    return default_schedule().truncated(200)


@pytest.fixture(scope="module")
def dict_settings(tmp_path_factory):
    cache = tmp_path_factory.mktemp("dict_cache")
    return {"grid_step_pct": "8", "dictionary_cache_dir": str(cache)}


@pytest.fixture(scope="module")
def dictionary(schedule, dict_settings):
    settings = read_properties(configuration(dict_settings), DICTIONARY_PROPERTIES, "test")
    return dictionary_for(schedule, settings)


@pytest.fixture(scope="module")
def truth():
    """An N x N slice: background 0 in the first row, the TISSUES in stripes; pd complex."""
    t1 = np.full((N, N), np.nan)
    t2 = np.full((N, N), np.nan)
    for row in range(1, N):
        t1[row], t2[row] = TISSUES[row % len(TISSUES)]
    pd = np.where(np.isfinite(t1), 0.7 * np.exp(0.4j), 0)
    return t1, t2, pd


@pytest.fixture(scope="module")
def coefficients(schedule, dictionary, truth):
    """(rank, N, N) noiseless coefficients of the truth in the dictionary's basis."""
    t1, t2, pd = truth
    inside = np.isfinite(t1)
    fingerprints = simulate_fingerprints(schedule, t1[inside], t2[inside], device="cpu").numpy()
    signals = fingerprints.astype(np.complex64) * np.complex64(dictionary.basis.signal_phase)
    x = np.zeros((N, N, dictionary.basis.rank), np.complex64)
    x[inside] = dictionary.basis.project(signals) * pd[inside][:, None]
    return np.moveaxis(x, -1, 0)


def stream(schedule, basis, coefficients, slices=(0,)):
    items = [basis_image(basis, schedule)]
    items += [coefficient_image(coefficients, basis.hash, GEOMETRY, s, series=100) for s in slices]
    return items


def header_without_schedule():
    conditions = ismrmrd.xsd.experimentalConditionsType(H1resonanceFrequency_Hz=127_000_000)
    return ismrmrd.xsd.ismrmrdHeader(experimentalConditions=conditions)


# ---- properties ------------------------------------------------------------------------------------
def test_properties_defaults_overrides_and_errors():
    defaults = read_properties(None, EMIT_PROPERTIES, "emit")
    assert (defaults.series_base, defaults.ushort, defaults.t1_window) == (1, False, None)
    given = read_properties(configuration({"series_base": "10", "ushort": "true", "t1_window": "1000,2000",
                                           "maps": "t1_ms,t2_ms"}), EMIT_PROPERTIES, "emit")
    assert (given.series_base, given.ushort, given.t1_window, given.maps) == (10, True, (1000.0, 2000.0),
                                                                              ("t1_ms", "t2_ms"))
    with pytest.raises(GadgetConfigError, match=r"emit: unknown property 'seriesbase'; known: series_base"):
        read_properties(configuration({"seriesbase": "3"}), EMIT_PROPERTIES, "emit")
    with pytest.raises(GadgetConfigError, match=r"property ushort = 'maybe': must be true or false"):
        read_properties(configuration({"ushort": "maybe"}), EMIT_PROPERTIES, "emit")
    with pytest.raises(GadgetConfigError, match=r"series_base = '-1': must be an integer in \[0, 65000\]"):
        read_properties(configuration({"series_base": "-1"}), EMIT_PROPERTIES, "emit")
    with pytest.raises(GadgetConfigError, match="maps = 't3'"):
        read_properties(configuration({"maps": "t3"}), EMIT_PROPERTIES, "emit")
    twice = ElementTree.fromstring('<configuration><property name="ushort" value="1"/>'
                                   '<property name="ushort" value="0"/></configuration>')
    with pytest.raises(GadgetConfigError, match="given twice"):
        read_properties(twice, EMIT_PROPERTIES, "emit")


def test_unknown_property_reaches_the_host_as_an_error_message():
    connection = InProcessConnection(None, [], configuration({"colour": "red"}))
    with pytest.raises(GadgetConfigError):
        emit(connection)
    assert len(connection.sent) == 1 and isinstance(connection.sent[0], ErrorMessage)
    assert connection.sent[0].text.startswith("emit: unknown property 'colour'")


def test_a_stage_process_leaves_its_objects_to_the_exit(monkeypatch):
    import gc
    import types

    from gadgets.runtime import run_gadget, stage_process

    connection = InProcessConnection(None, [], configuration({}))
    assert not stage_process()
    run_gadget("pass", connection, lambda: None)
    assert gc.get_freeze_count() == 0  # in a test process (or any other host) nothing is frozen
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="gadgetron.__main__")  # as `python -m gadgetron PORT ...` runs it
    monkeypatch.setitem(sys.modules, "__main__", main)
    try:
        run_gadget("pass", connection, lambda: None)
        assert stage_process() and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_error_message_wire_format():
    buffer = io.BytesIO()
    write_error(buffer, ErrorMessage("map: bad é"))
    raw = buffer.getvalue()
    assert raw[:2] == (8).to_bytes(2, "little")
    length = int.from_bytes(raw[2:10], "little")
    assert raw[10:].decode("utf-8") == "map: bad é" and length == len(raw) - 10


def test_error_writer_registered_on_a_real_gadgetron_connection():
    from gadgetron.external.connection import Connection

    connection = object.__new__(Connection)  # its writer list and send, without a socket handshake
    connection.socket, connection.writers = io.BytesIO(), []
    connection.add_writer(lambda item: isinstance(item, ErrorMessage), write_error)
    with pytest.raises(TypeError):  # gadgetron-python 1.4.1's add_writer drops send's socket argument
        connection.send(ErrorMessage("x"))
    connection.writers = []
    compat.add_writer(connection, lambda item: isinstance(item, ErrorMessage), write_error)
    connection.send(ErrorMessage("reconstruct: bad"))
    assert connection.socket.getvalue()[10:] == b"reconstruct: bad"


def test_numpy2_shim_writes_arrays_that_need_a_cast():
    from gadgetron.external import writers

    compat.install()
    buffer = io.BytesIO()
    data = np.arange(6, dtype=np.float64).reshape(2, 3)  # needs a cast: np.array(copy=False) raises on numpy 2
    writers.write_array(buffer, data, np.complex64)
    raw = buffer.getvalue()
    assert int.from_bytes(raw[:8], "little") == 2
    values = np.frombuffer(raw[8 + 2 * 8:], dtype=np.complex64)
    np.testing.assert_array_equal(values, data.astype(np.complex64).ravel(order="F"))


# ---- stage images ----------------------------------------------------------------------------------
def test_basis_image_round_trip(schedule, dictionary):
    basis, read_schedule = read_basis_image(basis_image(dictionary.basis, schedule))
    assert basis.hash == dictionary.basis.hash and read_schedule.hash == schedule.hash
    np.testing.assert_allclose(basis.singular_values, dictionary.basis.singular_values)


def test_maps_bundle_round_trip_keeps_nan_and_warnings():
    t1 = np.array([[np.nan, 1000.0], [500.0, 800.0]], np.float32)
    maps = QuantitativeMaps(3, t1, t1 / 10, np.ones_like(t1), np.full_like(t1, 0.9), "dictionary")
    bundle = maps_bundle(maps, GEOMETRY, warnings=["network mapping not used: no model"])
    back = read_maps_bundle(bundle)
    assert role_of(bundle) == MAPS_ROLE and back.slice_index == 3 and back.mapper == "dictionary"
    np.testing.assert_array_equal(back.t1_ms, t1)
    assert back.b1 is None and warnings_of(bundle) == ["network mapping not used: no model"]
    assert tuple(bundle.getHead().position) == GEOMETRY.position


# ---- dictionary mapping ----------------------------------------------------------------------------
def test_dictionary_gadget_maps_within_grid_tolerance(schedule, dictionary, coefficients, truth, dict_settings):
    out = run_chain(header_without_schedule(), stream(schedule, dictionary.basis, coefficients),
                    [(map_dictionary, {**dict_settings, "threads": "1"})])
    bundles = [item for item in out if role_of(item) == MAPS_ROLE]
    assert len(bundles) == 1 and role_of(out[0]) == "TemporalBasis"  # the basis image passes through
    maps = read_maps_bundle(bundles[0])
    t1, t2, _ = truth
    inside = np.isfinite(t1)
    assert np.all(np.isnan(maps.t1_ms[~inside])), "background (zero coefficients) must stay unmapped"
    step = 0.081  # the 8 % grid: the best atom is at most one grid step away (T2 1500 ms over 200 TRs: one step)
    assert np.all(np.abs(maps.t1_ms[inside] / t1[inside] - 1) < step)
    assert np.all(np.abs(maps.t2_ms[inside] / t2[inside] - 1) < step)
    assert np.median(np.abs(maps.t2_ms[inside] / t2[inside] - 1)) < 0.04
    assert np.all(maps.quality[inside] > 0.99)
    np.testing.assert_allclose(maps.pd[inside], 0.7, rtol=0.05)


def test_dictionary_gadget_matches_in_the_coefficients_own_subspace(schedule, dictionary, coefficients, truth,
                                                                    dict_settings):
    """Coefficients in a truncated basis (as a rank-5 reconstruction gives) are matched against atoms
    expressed in that basis: T1 within one grid step, T2 too but for the long-T2 stripe (1500 ms over 200
    TRs is poorly determined in 4 components)."""
    small = dictionary.basis.truncated(4)
    out = run_chain(header_without_schedule(), stream(schedule, small, coefficients[:4]),
                    [(map_dictionary, dict_settings)])
    (bundle,) = [item for item in out if role_of(item) == MAPS_ROLE]
    maps = read_maps_bundle(bundle)
    t1, t2, _ = truth
    inside = np.isfinite(t1)
    t1_error, t2_error = np.abs(maps.t1_ms[inside] / t1[inside] - 1), np.abs(maps.t2_ms[inside] / t2[inside] - 1)
    assert t1_error.max() < 0.081 and t2_error.max() < 0.1, (t1_error.max(), t2_error.max())
    assert np.median(t2_error) < 0.04


def test_dictionary_cache_is_reused(schedule, dictionary, dict_settings, caplog):
    settings = read_properties(configuration(dict_settings), DICTIONARY_PROPERTIES, "test")
    key = cache_key(schedule, dictionary.grid, settings.n_states, settings.dictionary_rank)
    assert (settings.dictionary_cache_dir / f"dict_{key}.h5").is_file()
    caplog.set_level("INFO")
    again = dictionary_for(schedule, settings)
    assert again.basis.hash == dictionary.basis.hash and "from cache" in caplog.text


def test_dictionary_gadget_needs_a_schedule(dictionary, coefficients, dict_settings):
    items = [coefficient_image(coefficients, dictionary.basis.hash, GEOMETRY, 0, 100)]
    connection = InProcessConnection(header_without_schedule(), items, configuration(dict_settings))
    with pytest.raises(ValueError, match="no schedule for this scan"):
        map_dictionary(connection)
    assert isinstance(connection.sent[-1], ErrorMessage) and "map_dictionary: no schedule" in connection.sent[-1].text


# ---- network fallback ------------------------------------------------------------------------------
def test_network_gadget_passes_unmapped_with_a_warning_when_the_model_is_missing(
        schedule, dictionary, coefficients, truth, dict_settings, tmp_path, caplog):
    caplog.set_level("WARNING")
    missing = tmp_path / "nope.pt"
    out = run_chain(header_without_schedule(), stream(schedule, dictionary.basis, coefficients, slices=(0, 1)),
                    [(map_network, {"model": str(missing)})])
    coefficient_images = [item for item in out if role_of(item) == "SubspaceCoefficients"]
    assert len(coefficient_images) == 2, "both slices go on unmapped"
    warning = warnings_of(coefficient_images[0])
    assert len(warning) == 1 and "network mapping not used" in warning[0] and str(missing) in warning[0]
    assert "slice 1 not mapped by the network" in caplog.text
    np.testing.assert_array_equal(read_coefficients(coefficient_images[0])[0], coefficients)

    # the chain with both mappers and emit always returns maps, and says why the fallback was taken
    images = run_chain(header_without_schedule(), out, [(map_dictionary, dict_settings), (emit, None)])
    t1_images = [im for im in images if image_meta(im).get("GADGETRON_DataRole") == "T1"]
    assert len(t1_images) == 2
    meta = image_meta(t1_images[0])
    assert meta["MRF_Mapper"] == "dictionary" and "network mapping not used" in str(meta["MRF_Warning"])


def _network_mapper(model) -> NetworkMapper:
    mapper = NetworkMapper.__new__(NetworkMapper)
    mapper.model, mapper.unusable, mapper._checked = model, None, None
    return mapper


def test_network_mapper_falls_back_on_a_foreign_schedule_or_a_failing_model(schedule, dictionary, coefficients):
    class ForeignModel:
        basis = dictionary.basis

        def check(self, s):
            raise ValueError(f"model was trained for schedule abc, the scan's is {s.hash}")

    class BrokenModel(ForeignModel):
        def check(self, s):
            return None

        def map_coefficients(self, x, basis):
            raise RuntimeError("shape mismatch in layer 3")

    items = [basis_image(dictionary.basis, schedule), coefficient_image(coefficients, dictionary.basis.hash,
                                                                        GEOMETRY, 0, 100)]
    for model, reason in ((ForeignModel(), "trained for schedule abc"),
                          (BrokenModel(), "RuntimeError: shape mismatch in layer 3")):
        out = list(mapped(items, ScanContext(), _network_mapper(model), fallback=True))
        assert [role_of(item) for item in out] == ["TemporalBasis", "SubspaceCoefficients"]
        assert reason in warnings_of(out[1])[-1] and "network mapping not used" in warnings_of(out[1])[-1]
        with pytest.raises((ValueError, RuntimeError), match=reason.split(": ")[-1]):  # no fallback: an error
            list(mapped(items, ScanContext(), _network_mapper(model), fallback=False))


def test_network_mapper_maps_with_a_working_model(schedule, dictionary, coefficients, truth):
    """A stand-in model (dictionary matching behind the model API) shows the network path end to end: the
    coefficients' own basis handed to the model, background left out, maps bundle with mapper 'network',
    then the coefficient image marked as mapped."""
    from mrf_core.mapping.matching import match

    class MatchingModel:
        basis = dictionary.basis.truncated(6)

        def check(self, s):
            assert s.hash == schedule.hash

        def map_coefficients(self, x, basis):  # like MrfModel: coefficients in another basis are converted
            assert x.shape[1] == basis.rank and basis.hash == dictionary.basis.hash
            x = x @ basis.conversion_to(self.basis).T
            full = np.zeros((x.shape[0], dictionary.basis.rank), np.complex64)
            full[:, :6] = x
            return match(dictionary, full, device="cpu")

    items = [basis_image(dictionary.basis, schedule),
             coefficient_image(coefficients, dictionary.basis.hash, GEOMETRY, 2, 100)]
    out = list(mapped(items, ScanContext(), _network_mapper(MatchingModel()), fallback=True))
    assert [role_of(item) for item in out] == ["TemporalBasis", MAPS_ROLE, "SubspaceCoefficients"]
    assert image_meta(out[2])["MRF_Mapper"] == "network"
    maps = read_maps_bundle(out[1])
    inside = np.isfinite(truth[0])
    assert maps.mapper == "network" and maps.slice_index == 2
    assert np.all(np.isnan(maps.t1_ms[~inside]))
    assert np.median(np.abs(maps.t1_ms[inside] / truth[0][inside] - 1)) < 0.1
    # a mapped coefficient image passes later mappers untouched, and emit sends it only when asked
    assert list(mapped(out[2:], ScanContext(), _network_mapper(None), fallback=False)) == out[2:]
    assert run_chain(None, out[2:], [(emit, None)]) == []
    assert run_chain(None, out[2:], [(emit, {"coefficient_images": "true"})]) == out[2:]


# ---- emit ------------------------------------------------------------------------------------------
def _bundle(slice_index=1):
    t1 = np.array([[np.nan, 1000.0], [500.0, 800.0]], np.float32)
    maps = QuantitativeMaps(slice_index, t1, t1 / 10, np.array([[0, 2.0], [1.0, 1.5]], np.float32),
                            np.full_like(t1, 0.9), "network")
    return add_warning(maps_bundle(maps, GEOMETRY), "just a test")


def test_emit_float_series_meta_and_geometry(schedule, dictionary):
    images = run_chain(None, [basis_image(dictionary.basis, schedule), _bundle()], [(emit, None)])
    assert len(images) == 4, "basis image dropped; T1, T2, PD, quality sent (no B1 estimated)"
    by_role = {image_meta(im)["GADGETRON_DataRole"]: im for im in images}
    assert set(by_role) == {"T1", "T2", "PD", "MatchQuality"}
    assert [by_role[r].image_series_index for r in ("T1", "T2", "PD", "MatchQuality")] == [1, 2, 3, 5]
    t1 = by_role["T1"]
    assert t1.data.dtype == np.float32 and t1.data[0, 0, 1, 1] == pytest.approx(800.0)
    assert t1.data[0, 0, 0, 0] == 0.0, "unmapped voxels are 0 on the scanner"
    head = t1.getHead()
    assert tuple(head.position) == GEOMETRY.position and tuple(head.read_dir) == GEOMETRY.read_dir
    assert tuple(head.field_of_view) == GEOMETRY.fov_mm and head.slice == 1
    meta = image_meta(t1)
    assert meta["DataRole"] == "Quantitative" and meta["GADGETRON_ImageComment"] == "T1 [ms]"
    assert meta["MRF_Mapper"] == "network" and meta["MRF_Warning"] == "just a test"


def test_emit_ushort_windows_and_map_choice():
    properties = {"ushort": "true", "series_base": "20", "maps": "t1_ms,t2_ms", "t2_window": "80,100"}
    images = run_chain(None, [_bundle()], [(emit, properties)])
    assert [im.image_series_index for im in images] == [20, 21]
    t2 = images[1]
    meta = image_meta(t2)
    ratio = float(meta["GADGETRON_ScaleRatio"])
    assert t2.data.dtype == np.uint16 and t2.data[0, 0, 1, 1] == round(80.0 * ratio)
    assert float(meta["GADGETRON_WindowCenter"]) == pytest.approx(80 * ratio)
    assert float(meta["GADGETRON_WindowWidth"]) == pytest.approx(100 * ratio)


def test_emit_passes_unmapped_coefficients_with_a_warning(dictionary, coefficients, caplog):
    caplog.set_level("WARNING")
    image = coefficient_image(coefficients, dictionary.basis.hash, GEOMETRY, 0, 100)
    out = run_chain(None, [image], [(emit, None)])
    assert out == [image] and "reached emit unmapped" in caplog.text
