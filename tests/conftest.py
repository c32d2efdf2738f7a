"""Shared fixtures of the simulator and raw-data tests (names prefixed sim_)."""

from __future__ import annotations

import pytest

from mrf_core.io.rawio import write_raw
from mrf_core.physics.sequence import default_schedule
from mrf_core.recon.trajectory import SpiralParams
from mrf_core.sim.phantoms import brain_phantom
from mrf_core.sim.simulate import ScanSettings, SimulatedScan


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
