"""The figures leave matplotlib's backend alone: plotting from a notebook (inline backend) or another
application must not switch it to Agg, and nothing goes through pyplot's global figure registry."""

from __future__ import annotations

import datetime
import sys
from types import SimpleNamespace

import matplotlib
import matplotlib.image
import numpy as np
import pytest

from mrf_core.physics.sequence import default_schedule
from mrf_core.plotting import plot_basis, plot_fingerprints
from mrf_core.qa.analysis import run_qa
from mrf_core.qa.report import summary_rgb, write_report
from mrf_core.qa.synthetic import nist_plate_maps, write_map_file
from mrf_core.qa.trends import TrendStore, plot_trend
from mrf_core.sim.phantoms import Placement
from mrf_gadgetron.cli.replay import save_maps_png
from mrf_gadgetron.cli.simulate import write_preview


@pytest.fixture()
def svg_backend():
    """matplotlib's backend set to 'svg' (not Agg) for the test, the previous one restored after."""
    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    yield
    matplotlib.use(previous)


def _unchanged():
    assert matplotlib.get_backend() == "svg"
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []


def _qa_result(tmp_path, name="m.h5", seed=0):
    maps, _ = nist_plate_maps("t1", placement=Placement((6, -4), 12.0), noise_rel=0.01, seed=seed)
    path = tmp_path / name
    write_map_file(path, [maps])
    return path, run_qa(path, "t1", 3.0)


def test_library_figures_keep_the_backend(tmp_path, svg_backend):
    schedule = default_schedule().truncated(60)
    plot_fingerprints(schedule, np.ones((2, 60)), ["a", "b"], tmp_path / "fingerprints.png")
    _unchanged()
    vectors = np.linalg.qr(np.random.default_rng(0).standard_normal((60, 3)))[0]
    basis = SimpleNamespace(n_timepoints=60, rank=3, vectors=vectors, residual_energy=lambda k: 0.5 ** k)
    plot_basis(basis, schedule, tmp_path / "basis.png")
    _unchanged()
    for name in ("fingerprints", "basis"):
        assert matplotlib.image.imread(tmp_path / f"{name}.png").shape[1] > 500


def test_qa_figures_keep_the_backend(tmp_path, svg_backend):
    from gadgets.qa import message_rgb

    map_path, result = _qa_result(tmp_path)
    paths = write_report(result, tmp_path / "report")
    _unchanged()
    assert matplotlib.image.imread(paths["summary"]).shape[0] > 200
    rgb = summary_rgb(result)
    _unchanged()
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3 and rgb.shape[0] > 200
    message = message_rgb("QA did not run", "no maps")
    _unchanged()
    assert message.shape == (600, 800, 3) and (message < 128).any()
    with TrendStore(tmp_path / "qa.sqlite") as store:
        for day in (3, 10):
            store.add(_qa_result(tmp_path, f"s{day}.h5", seed=day)[1], datetime.datetime(2025, 3, day, 9, 0))
        assert plot_trend(store, "NiCl2", 3.0, "t1_ms", tmp_path / "trend.png") == 2
    _unchanged()
    save_maps_png(map_path, tmp_path / "maps.png", title="maps")
    _unchanged()
    assert matplotlib.image.imread(tmp_path / "maps.png").shape[1] > 500


def test_simulate_preview_keeps_the_backend(sim_small_scan, tmp_path, svg_backend):
    write_preview(str(sim_small_scan[2]), str(tmp_path / "preview.png"))
    _unchanged()
    assert matplotlib.image.imread(tmp_path / "preview.png").shape[1] > 1000
