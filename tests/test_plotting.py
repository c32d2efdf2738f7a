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
from mrf_core.plotting import plot_basis, plot_fingerprints, plot_map_file
from mrf_core.qa.analysis import run_qa
from mrf_core.qa.report import summary_rgb, write_report
from mrf_core.qa.synthetic import nist_plate_maps, write_map_file
from mrf_core.qa.trends import TrendStore, plot_trend
from mrf_core.sim.phantoms import Placement
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
    plot_map_file(map_path, tmp_path / "maps.png", title="maps")
    _unchanged()
    assert matplotlib.image.imread(tmp_path / "maps.png").shape[1] > 500


def test_simulate_preview_keeps_the_backend(sim_small_scan, tmp_path, svg_backend):
    write_preview(str(sim_small_scan[2]), str(tmp_path / "preview.png"))
    _unchanged()
    assert matplotlib.image.imread(tmp_path / "preview.png").shape[1] > 1000


def _luminance(rgb) -> float:
    """WCAG relative luminance of an sRGB colour."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def test_map_colours_windows_and_labels():
    """The low end of the T1/T2 scales stands out from the black background (contrast ratio >= 1.5, WCAG);
    fixed windows (log by default, the scanner's linear ones with --linear) and their overrides; 1-2-5 log
    ticks; orientation letters of LPS directions; PD relative to the object's median."""
    from cmcrameri import cm

    from mrf_core.plotting import (
        FigureError,
        FigureStyle,
        Window,
        colormap,
        direction_letters,
        relative_pd,
    )

    for key, crameri in (("t1_ms", cm.lipari), ("t2_ms", cm.navia)):
        scale = colormap(key)
        np.testing.assert_array_equal(scale(1.0), crameri(1.0))
        np.testing.assert_allclose(scale(0.0), crameri(0.12), atol=2 / 255)  # LOW_END: one table step at most
        assert (_luminance(scale(0.0)) + 0.05) / 0.05 >= 1.5, key
        assert tuple(scale(np.ma.masked_invalid([np.nan]))[0][:3]) == (0.0, 0.0, 0.0)  # unmapped: background
    assert Window(10, 5000, log=True).ticks() == [10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    style = FigureStyle()
    assert (style.window("t1_ms"), style.window("t2_ms")) == (Window(10, 5000, True), Window(2, 2000, True))
    linear = FigureStyle.from_options(linear=True)
    assert (linear.window("t1_ms"), linear.window("t2_ms")) == (Window(0, 3000), Window(0, 300))
    assert FigureStyle.from_options(windows=["t1=100:2500"]).window("t1_ms") == Window(100, 2500, log=True)
    for bad in ("t1=0:3000", "x1=1:2", "t2=a:b", "t1=5"):
        with pytest.raises(FigureError):
            FigureStyle.from_options(windows=[bad])
    assert [direction_letters(v) for v in ((1, 0, 0), (-1, 0, 0), (0, -0.8, 0.6), (0, 0.1, -0.995))] == [
        "L", "R", "AS", "I"]
    pd = np.array([[np.nan, 2.0], [4.0, 6.0]])
    np.testing.assert_allclose(relative_pd(pd), [[np.nan, 0.5], [1.0, 1.5]])


def test_a_short_t1_object_is_visible_on_the_background():
    """A 20 ms object drawn at the default window: its pixels differ from the background's; the panel
    is titled in words, the colour bar carries the unit, the edges their patient directions."""
    from mrf_core.io.map_images import ImageGeometry
    from mrf_core.plotting import draw_map, new_figure

    values = np.full((32, 32), np.nan)
    values[10:22, 10:22] = 20.0
    fig = new_figure(figsize=(4, 4), dpi=50)
    ax = fig.subplots()
    tilt = np.deg2rad(30)
    geometry = ImageGeometry((160.0, 160.0, 5.0), read_dir=(np.cos(tilt), np.sin(tilt), 0.0),
                             phase_dir=(-np.sin(tilt), np.cos(tilt), 0.0))
    draw_map(fig, ax, values, "t1_ms", geometry, where="slice 0")
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    height = rgb.shape[0]
    inside, outside = (ax.transData.transform(p) for p in ((0.0, 0.0), (-70.0, -70.0)))  # mm
    pixel = lambda xy: rgb[height - int(xy[1]), int(xy[0])].astype(int)  # noqa: E731
    assert np.abs(pixel(inside) - pixel(outside)).sum() > 60 and pixel(outside).sum() == 0
    assert ax.get_title() == "T1, slice 0" and fig.axes[1].get_ylabel().startswith("T1 (ms)")
    assert sorted(t.get_text() for t in ax.texts) == ["AL", "LP", "PR", "RA"]
