"""Shared fixtures: the small simulated scan (sim_small_scan), the throwaway wire-test gadget on the stage
processes' path (test_gadget), a private cache for the gadget processes of a session (gadget_cache), and
MrfServers running it (serve)."""

from __future__ import annotations

import os
import textwrap
import threading
from pathlib import Path

import pytest
from chain_helpers import TEST_ALLOW, TEST_GADGET, config_xml

from mrf_core.io.rawio import write_raw
from mrf_core.physics.sequence import default_schedule
from mrf_core.recon.trajectory import SpiralParams
from mrf_core.sim.phantoms import brain_phantom
from mrf_core.sim.simulate import ScanSettings, SimulatedScan
from mrf_gadgetron.host.chain import ChainOptions
from mrf_gadgetron.host.server import MrfServer, ServerSettings

REPOSITORY = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    config.addinivalue_line("markers", "repository: checks the repository's own files (README, Dockerfile, "
                            "pyproject); skipped when the tests run from a copy outside the checkout")


def pytest_collection_modifyitems(config, items):
    """Outside the checkout (the suite run against an installed wheel) the repository tests are skipped;
    everything else must pass there."""
    if (REPOSITORY / "pyproject.toml").is_file():
        return
    skip = pytest.mark.skip(reason="needs the repository's files: run from the checkout")
    for item in items:
        if "repository" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sim_small_scan(tmp_path_factory):
    """A small noisy 2-slice brain scan (32x32, 40 TRs, 8 interleaves, 3 coils, B1 field): the
    SimulatedScan, its acquisitions as a list, and the file they were written to."""
    phantom = brain_phantom(field_t=3.0, matrix=32, fov_mm=240.0, n_slices=2, b1_amplitude=0.1)
    spiral = SpiralParams(fov_mm=240.0, matrix=32, n_interleaves=8, centre_interleaves=4)
    scan = SimulatedScan(phantom, default_schedule().truncated(40), spiral, ScanSettings(n_coils=3, snr=30.0))
    acquisitions = list(scan.acquisitions())
    path = tmp_path_factory.mktemp("sim") / "small.h5"
    write_raw(path, scan.header, acquisitions, scan.truth())
    return scan, acquisitions, path


@pytest.fixture(scope="session")
def gadget_cache(tmp_path_factory):
    """A private dictionary cache (XDG_CACHE_HOME) for the gadget processes of the whole session."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("gadget_cache")))
    yield
    mp.undo()


@pytest.fixture()
def test_gadget(tmp_path, monkeypatch):
    """The test gadget module on the stage processes' PYTHONPATH."""
    (tmp_path / "wire_test_gadget.py").write_text(textwrap.dedent(TEST_GADGET))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    return tmp_path


@pytest.fixture()
def serve(test_gadget, tmp_path):
    """serve(**settings) -> a running MrfServer on 127.0.0.1 (configurations echo.xml and hang.xml)."""
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "echo.xml").write_text(config_xml(("images", {"scale": "2"})))
    (folder / "hang.xml").write_text(config_xml(("images", {"mode": "hang"})))
    servers = []

    def start(**overrides) -> MrfServer:
        values = dict(config_dir=folder, max_connections=2, client_timeout_s=5, drain_s=2, allow=TEST_ALLOW,
                      chain=ChainOptions(connect_s=30, io_s=30, exit_s=10))
        values.update(overrides)
        srv = MrfServer(("127.0.0.1", 0), ServerSettings(**values))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()
