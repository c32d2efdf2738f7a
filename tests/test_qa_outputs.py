"""Phantom QA outputs: the HTML report and results.json, the trend store, and the `mrf qa` command."""

from __future__ import annotations

import base64
import datetime
import io
import json
import sqlite3
from html.parser import HTMLParser

import matplotlib.image
import numpy as np
import pytest

import mrf_core
from mrf_core.qa import QAError
from mrf_core.qa.analysis import run_qa
from mrf_core.qa.report import summary_rgb, write_report
from mrf_core.qa.synthetic import nist_plate_maps, write_map_file
from mrf_core.qa.trends import TrendStore, plot_trend, repeatability_cv_pct
from mrf_core.sim.phantoms import Placement
from mrf_gadgetron.cli import main

PLACEMENT = Placement((6, -4), 12.0)


def _map_file(path, error_pct=None, placement=PLACEMENT, array="t1", seed=0):
    maps, _ = nist_plate_maps(array, placement=placement, error_pct=error_pct, noise_rel=0.01, seed=seed)
    write_map_file(path, [maps])
    return path


class _Collector(HTMLParser):
    """Images (src), rows of each table by id, and the text of elements with an id."""

    def __init__(self):
        super().__init__()
        self.images, self.tables, self.text, self._table, self._row, self._id = [], {}, {}, None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        if "id" in attrs and tag != "table":
            self._id = attrs["id"]
            self.text[self._id] = ""

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif self._id and tag in ("p", "ul"):
            self._id = None

    def handle_data(self, data):
        if self._row is not None and data.strip():
            self._row.append(data.strip())
        if self._id:
            self.text[self._id] += data


def _no_nan(text: str):
    def refuse(name):
        raise AssertionError(f"results.json holds {name}")
    return json.loads(text, parse_constant=refuse)


def test_report_html_is_self_contained_and_json_is_complete(tmp_path):
    errors = {"t1_ms": {3: 7.5}, "t2_ms": {8: -2.0}}
    result = run_qa(_map_file(tmp_path / "m.h5", errors), "t1", 3.0)
    paths = write_report(result, tmp_path / "report")
    text = paths["html"].read_text()
    assert "http" not in text.split("<body>")[1].replace("https://", "")  # nothing fetched from elsewhere
    page = _Collector()
    page.feed(text)
    assert len(page.images) == 4
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        image = matplotlib.image.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0.01
    rows = page.tables["spheres"]
    assert len(rows) == 15 and rows[1][0] == "1" and [r[0] for r in rows[1:]] == [str(n) for n in range(1, 15)]
    sphere_3 = rows[3]
    assert "FAIL" in sphere_3 and f"{result.evaluation.sphere(3, 't1_ms').error_pct:.2f}" in sphere_3
    assert abs(result.evaluation.sphere(3, "t1_ms").error_pct - 7.5) < 0.5
    assert any("not counted" in cell for cell in rows[13])
    metrics_rows = {r[0]: r[1:] for r in page.tables["metrics"][1:]}
    assert metrics_rows["spheres counted"] == ["12", "12"] and metrics_rows["verdict"] == ["FAIL", "PASS"]
    assert page.text["verdict"].strip() == "FAIL"
    assert "sphere 3 T1: error +7." in page.text["failures"]

    data = _no_nan(paths["json"].read_text())
    assert data["schema"] == "mrf-qa-result/1" and data["passed"] is False
    assert data["phantom"] == {"name": "nist", "array": "NiCl2", "field_T": 3.0, "batch": 1, "temperature_C": None,
                               "reference_temperature_C": 20.0, "temperature_corrected": False, "notes": [],
                               "temperature_assumption": "Phantom temperature not given: assumed 20 C, the "
                               "reference values' temperature."}
    assert data["software"] == {"name": "mrf-gadgetron", "version": mrf_core.__version__}
    assert f"mrf-gadgetron {mrf_core.__version__}" in paths["html"].read_text()
    assert set(data["metrics"]) == {"t1_ms", "t2_ms"}
    for q in ("t1_ms", "t2_ms"):
        assert {"r2", "lins_ccc", "bias_pct", "ba_lower_pct", "ba_upper_pct", "mean_cv_pct", "passed"} <= set(
            data["metrics"][q])
    assert [s["sphere"] for s in data["spheres"]] == list(range(1, 15))
    s3 = data["spheres"][2]
    assert s3["t1_ms"]["error_pct"] == pytest.approx(7.5, abs=0.2) and s3["t1_ms"]["passed"] is False
    assert {"roi_mean", "roi_median", "roi_std", "roi_cv_pct", "roi_n_voxels", "roi_n_mapped"} <= set(s3["t1_ms"])
    assert data["spheres"][13]["t1_ms"]["counted"] is False and data["spheres"][13]["t1_ms"]["passed"] is None
    assert data["placement"]["rotation_deg"] == pytest.approx(12.0, abs=0.5)
    assert matplotlib.image.imread(paths["summary"]).shape[0] > 200


def test_summary_rgb_is_an_image_of_the_verdict(tmp_path):
    passing = run_qa(_map_file(tmp_path / "p.h5"), "t1", 3.0)
    failing = run_qa(_map_file(tmp_path / "f.h5", {"t2_ms": {1: 20.0}}), "t1", 3.0)
    rgb_pass, rgb_fail = summary_rgb(passing), summary_rgb(failing)
    assert rgb_pass.dtype == np.uint8 and rgb_pass.ndim == 3 and rgb_pass.shape[2] == 3
    title_pass, title_fail = rgb_pass[: rgb_pass.shape[0] // 12], rgb_fail[: rgb_fail.shape[0] // 12]
    greenish = lambda im: (im[..., 1].astype(int) > im[..., 0].astype(int) + 60).sum()  # noqa: E731
    reddish = lambda im: (im[..., 0].astype(int) > im[..., 1].astype(int) + 60).sum()  # noqa: E731
    assert greenish(title_pass) > 100 and reddish(title_pass) == 0
    assert reddish(title_fail) > 100 and greenish(title_fail) == 0


def _results(tmp_path, n=3):
    out = []
    for i in range(n):
        path = _map_file(tmp_path / f"scan{i}.h5", {"t1_ms": {1: 1.0 * i}, "t2_ms": {2: -2.0 * i}}, seed=i)
        out.append(run_qa(path, "t1", 3.0))
    return out


def test_trend_store_round_trip_and_repeatability(tmp_path):
    results = _results(tmp_path)
    store_path = tmp_path / "qa.sqlite"
    times = [datetime.datetime(2025, 3, d, 9, 0) for d in (3, 10, 17)]
    with TrendStore(store_path) as store:
        ids = [store.add(r, t) for r, t in zip(results, times, strict=True)]
        with pytest.raises(QAError, match="already holds .*--replace"):
            store.add(results[0], times[0])
        assert store.add(results[0], times[0], replace=True) not in ids
    with TrendStore(store_path, create=False) as store:
        scans = store.scans("NiCl2", 3.0)
        assert len(scans) == 3 and [s["scan_time"] for s in scans] == [t.isoformat() for t in times]
        series = store.series("NiCl2", 3.0, "t1_ms")
        assert sorted(series) == list(range(1, 15))
        measured = [p.measured_ms for p in series[1]]
        assert measured == pytest.approx([r.evaluation.sphere(1, "t1_ms").measured_ms for r in results])
        assert [p.scan_time for p in series[1]] == times
        assert repeatability_cv_pct(series[1]) == pytest.approx(100 * np.std(measured, ddof=1) / np.mean(measured))
        assert not series[14][0].counted and series[1][0].counted
        assert store.results_json(scans[-1]["id"])["spheres"][0]["sphere"] == 1
        assert store.scans("MnCl2") == []
        assert plot_trend(store, "NiCl2", 3.0, "t2_ms", tmp_path / "t2.png") == 3
        assert matplotlib.image.imread(tmp_path / "t2.png").shape[1] > 1000
        with pytest.raises(QAError, match="no MnCl2 scans at 3 T \\(has: NiCl2 3 T\\)"):
            plot_trend(store, "MnCl2", 3.0, "t1_ms", tmp_path / "x.png")


def test_failed_add_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    results = _results(tmp_path, 2)
    store_path = tmp_path / "qa.sqlite"
    with TrendStore(store_path) as store:
        store.add(results[0])

    original = TrendStore._sphere_rows

    def broken_rows(scan_id, result):
        yield from list(original(scan_id, result))[:5]
        raise RuntimeError("disk went away")

    monkeypatch.setattr(TrendStore, "_sphere_rows", staticmethod(broken_rows))
    with TrendStore(store_path) as store, pytest.raises(RuntimeError, match="disk went away"):
        store.add(results[1])
    monkeypatch.undo()
    with sqlite3.connect(store_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM spheres").fetchone()[0] == 28


def test_corrupt_or_foreign_store_is_refused_untouched(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(QAError, match="corrupt or not an SQLite file"):
        TrendStore(junk)
    assert junk.read_bytes() == b"this is not a database" * 100
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(QAError, match="another application"):
        TrendStore(foreign)
    with pytest.raises(QAError, match="does not exist"):
        TrendStore(tmp_path / "missing.sqlite", create=False)


def test_cli_analysis_store_and_trend(tmp_path, capsys):
    maps = _map_file(tmp_path / "m.h5", {"t2_ms": {5: 9.0}})
    store = tmp_path / "qa.sqlite"
    code = main(["qa", str(maps), "--array", "t1", "--field", "3", "-o", str(tmp_path / "rep"), "--store", str(store),
                 "--scan-time", "2025-01-02T08:00", "--exit-code"])
    out = capsys.readouterr().out
    assert code == 1 and "FAIL" in out and "sphere 5 T2: error +" in out
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "results.json").is_file()
    assert main(["qa", str(maps), "--array", "t1", "--field", "3", "-o", str(tmp_path / "rep2"),
                 "--tolerance-t2", "10"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["qa", "trend", "--store", str(store), "-o", str(tmp_path / "trend")]) == 0
    assert (tmp_path / "trend" / "trend_NiCl2_3T_T1.png").is_file()
    assert "NiCl2 3 T T2: 1 scans" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    empty, _ = nist_plate_maps("t1")
    noise = np.random.default_rng(0).uniform(100, 2000, empty.t1_ms.shape).astype(np.float32)
    import dataclasses

    write_map_file(tmp_path / "noise.h5", [dataclasses.replace(empty, t1_ms=noise, t2_ms=noise / 10, pd=noise)])
    assert main(["qa", str(tmp_path / "noise.h5"), "--array", "t1", "--field", "3", "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mrf qa: error:") and "no NIST sphere array" in err and "\n" not in err
    assert main(["qa", str(tmp_path / "noise.h5"), "-o", str(tmp_path / "r")]) == 2
    assert "needs --array" in capsys.readouterr().err
    (tmp_path / "bad.sqlite").write_bytes(b"x" * 4096)
    assert main(["qa", "trend", "--store", str(tmp_path / "bad.sqlite")]) == 2
    assert "corrupt" in capsys.readouterr().err
