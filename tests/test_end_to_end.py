"""The product end to end: a small simulated NIST scan through the real configurations in config_xml/ and
the real gadgets, each stage its own `python -m gadgetron` process behind real sockets (replay and the
server): maps within tolerance of the truth, the dictionary fallback with a TEXT warning when the model is
missing or made for another schedule, and every bad input answered with an error while the server goes on.
"""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
from chain_helpers import default_config_text, exchange

from mrf_core.io.map_images import read_map_file
from mrf_core.io.rawio import MrfRawFile
from mrf_core.physics.sequence import default_schedule
from mrf_core.recon.trajectory import SpiralParams
from mrf_core.sim.phantoms import nist_phantom
from mrf_core.sim.simulate import ScanSettings, simulate_to_file
from mrf_gadgetron.cli.demo import sphere_accuracy
from mrf_gadgetron.host.chain import ChainOptions
from mrf_gadgetron.host.messages import (
    MessageId,
    encode_config_name,
    encode_header,
    encode_id,
    encode_item,
    encode_string,
)
from mrf_gadgetron.host.replay import replay
from mrf_gadgetron.host.server import MrfServer, ServerSettings
from mrf_gadgetron.host.stream_config import default_config_dir, load_stream_config, parse_stream_config

N_TIMEPOINTS = 200
OPTIONS = ChainOptions(connect_s=120, io_s=300, exit_s=60)
pytestmark = pytest.mark.skipif(not (default_config_dir() / "mrf_default.xml").is_file(),
                                reason="config_xml/mrf_default.xml is not there yet")


@pytest.fixture(scope="session")
def e2e_scan(tmp_path_factory, gadget_cache):
    """An 80x80 NIST T1-plate scan (240 mm, 200 TRs, 16 interleaves, 4 coils, SNR 40): the file, its
    header, acquisitions and phantom."""
    path = tmp_path_factory.mktemp("e2e") / "nist.h5"
    simulate_to_file(path, nist_phantom(matrix=80, fov_mm=240.0), default_schedule().truncated(N_TIMEPOINTS),
                     SpiralParams(fov_mm=240.0, matrix=80, n_interleaves=16, centre_interleaves=8),
                     ScanSettings(n_coils=4, snr=40.0))
    with MrfRawFile(path) as f:
        return path, f.header, list(f.acquisitions()), f.truth().phantom


def inline_config(**properties: str) -> bytes:
    """The default configuration, inline (message 2), with a 10 % dictionary grid (4x fewer atoms to
    build than the default 5 %, built once per session) and the given properties."""
    return encode_string(MessageId.CONFIG, default_config_text(grid_step_pct="10", **properties))


def assert_accurate(maps_path, phantom):
    """Spheres 1-9 (T1 > 100 ms: well posed with 200 TRs of ~12 ms): most mapped, and the median |error|
    over the mapped ones below 10 % (T1) and 20 % (T2)."""
    rows = [r for r in sphere_accuracy(read_map_file(maps_path), phantom) if r["t1_ms_true"] > 100]
    mapped = [r for r in rows if r["mapped_fraction"] > 0.5]
    assert len(rows) == 9 and len(mapped) >= 7, [(r["sphere"], r["mapped_fraction"]) for r in rows]
    for key, limit in (("t1_ms", 10.0), ("t2_ms", 20.0)):
        errors = [r[f"{key}_error_pct"] for r in mapped]
        assert np.median(errors) < limit, (key, errors)


@pytest.fixture(scope="module")
def server(e2e_scan):
    srv = MrfServer(("127.0.0.1", 0), ServerSettings(config_dir=default_config_dir(), max_connections=6,
                                                     chain=OPTIONS))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def client_scan(config: bytes, header, acquisitions) -> bytes:
    """What gadgetron_ismrmrd_client sends: configuration, header, acquisitions, close."""
    return config + encode_header(header) + b"".join(map(encode_item, acquisitions)) + encode_id(MessageId.CLOSE)


def test_default_chain_through_the_server_maps_the_phantom_with_the_dictionary_fallback(server, e2e_scan, tmp_path):
    """As `gadgetron_ismrmrd_client -C mrf_default.xml -f scan.h5` with a model file that does not exist:
    a TEXT warning from map_network, then T1, T2, PD (+ quality) series mapped by the dictionary, written
    like the client writes them, within tolerance of the truth."""
    from mrf_core.io.map_images import write_images

    _, header, acquisitions, phantom = e2e_scan
    missing = tmp_path / "no_such_model.pt"
    images, texts = exchange(server.port, client_scan(inline_config(model=str(missing)), header, acquisitions),
                             timeout_s=300)
    assert not [t for t in texts if t.startswith("ERROR")], texts
    assert any(t.startswith("[gadgets.map_network.map_network] WARNING") and str(missing) in t for t in texts), texts
    write_images(tmp_path / "maps.h5", images)
    maps = read_map_file(tmp_path / "maps.h5")
    assert {"t1_ms", "t2_ms", "pd"} <= set(maps.maps)
    assert maps.meta["t1_ms"]["MRF_Mapper"] in ("dictionary", ["dictionary"])
    assert_accurate(tmp_path / "maps.h5", phantom)


def test_default_chain_with_a_b1_map_reconstructs_twice_and_maps_at_the_map(e2e_scan, tmp_path):
    """By replay, a B1 map (an .npy of the scan's B1 = 1) set on the three nodes: the reconstruct stage solves
    each slice again in its fitted basis (announced to the mapping stages by its basis image), the network
    stage takes the package's B1-input model, which was trained for the full 1000-TR schedule, so it hands
    this 200-TR slice to the dictionary with the reason, and the dictionary maps it at the map's B1 in that
    basis (the maps say B1 came from the map), within tolerance of the truth."""
    raw, _, _, phantom = e2e_scan
    np.save(tmp_path / "b1.npy", np.ones((80, 80)))
    text = default_config_text(grid_step_pct="10", b1_map=str(tmp_path / "b1.npy"))
    text = text.replace('<property name="basis" value="auto"/>',
                        '<property name="basis" value="auto"/><property name="grid_step_pct" value="10"/>')
    warnings = []
    result = replay(raw, parse_stream_config(text), tmp_path / "maps.h5", on_text=warnings.append, options=OPTIONS)
    assert any("map_network" in w and "default_b1_model.pt" in w and "fallback" in w for w in warnings), warnings
    meta = read_map_file(result.path).meta["t1_ms"]
    assert meta["MRF_Mapper"] in ("dictionary", ["dictionary"]) and meta["MRF_B1Correction"] in ("map", ["map"])
    assert_accurate(result.path, phantom)


@pytest.fixture(scope="session")
def foreign_model(tmp_path_factory):
    """A (barely trained) network model made for another schedule (the first 50 TRs)."""
    from mrf_core.mapping.training import TrainConfig, train_model

    path = tmp_path_factory.mktemp("model") / "foreign.pt"
    # a coarse basis grid (25 %) and 10 EPG states: 0.2 s instead of 5 s, and still a valid archive
    train_model(default_schedule().truncated(50), TrainConfig(n_train=64, n_val=16, epochs=1, progress=False,
                                                              table_nodes=5, n_states=10, basis_step_pct=25.0,
                                                              device="cpu"), path)
    return path


def test_model_for_another_schedule_falls_back_with_a_warning(e2e_scan, foreign_model, tmp_path):
    """By replay: the model's schedule is not the scan's, so the dictionary maps, and the replay says why."""
    raw, *_ = e2e_scan
    config = parse_stream_config(default_config_text(grid_step_pct="10", model=str(foreign_model)))
    warnings = []
    result = replay(raw, config, tmp_path / "maps.h5", on_text=warnings.append, options=OPTIONS)
    assert any("map_network" in w and "schedule" in w for w in warnings), warnings
    assert read_map_file(result.path).meta["t1_ms"]["MRF_Mapper"] in ("dictionary", ["dictionary"])


def _copy(header):
    import ismrmrd

    return ismrmrd.xsd.CreateFromDocument(ismrmrd.xsd.ToXML(header))


def bad_scans(header, acquisitions) -> dict[str, tuple[bytes, str]]:
    """Each bad input that reaches the gadgets, as a client sends it, and what its error must say (protocol
    errors, unknown ids and configuration names with a path: tests/test_server.py)."""
    no_schedule = _copy(header)
    no_schedule.sequenceParameters = None
    nan = type(acquisitions[10])(acquisitions[10].getHead())
    nan.data[:], nan.traj[:] = acquisitions[10].data, acquisitions[10].traj
    nan.data[0, 5] = np.nan
    by_name = encode_config_name("mrf_default.xml")
    return {  # a header error and a mid-stream error; the other bad inputs are tested in process
        # (tests/test_gadgets_reconstruct.py): four chains at once cost 16 stage processes on 2 cores
        "no schedule": (client_scan(by_name, no_schedule, acquisitions[:40]), "sequenceParameters|schedule"),
        "NaN readout": (client_scan(inline_config(), header, acquisitions[:10] + [nan] + acquisitions[11:]),
                        "non-finite"),
    }


def test_bad_inputs_at_once_each_get_their_error(server, e2e_scan):
    """All bad scans on connections side by side: each client gets its own reason as TEXT, then CLOSE."""
    _, header, acquisitions, _ = e2e_scan
    cases = bad_scans(header, acquisitions)
    answers = {}

    def client(case: str) -> None:
        answers[case] = exchange(server.port, cases[case][0], shut_write=True, timeout_s=300)

    threads = [threading.Thread(target=client, args=(case,)) for case in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    for case, (_, message) in cases.items():
        images, texts = answers[case]
        assert not images and texts and texts[-1].startswith("ERROR: "), (case, texts)
        assert re.search(message, texts[-1]), (case, texts[-1])


def test_configurations_in_config_xml_all_parse():
    names = sorted(p.name for p in default_config_dir().glob("*.xml"))
    assert "mrf_default.xml" in names
    for name in names:
        config = load_stream_config(default_config_dir() / name)
        assert all(node.module.startswith("gadgets.") for node in config.nodes)
