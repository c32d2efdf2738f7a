"""What a new user meets first: progress and the shared dictionary cache, map files that are added to
rather than overwritten, honest QA records, and errors that say what to do next."""

from __future__ import annotations

import datetime
import logging
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import ismrmrd
import numpy as np
import pytest
from chain_helpers import HEADER_XML, acquisitions

from mrf_core import progress
from mrf_core.io.map_images import ImageGeometry, map_images, write_images
from mrf_core.mapping.maps import MapsError
from mrf_core.mapping.training import TrainConfig
from mrf_core.physics.dictionary import cached_dictionary, percent_grid
from mrf_core.physics.sequence import default_schedule
from mrf_core.qa.analysis import run_qa
from mrf_core.qa.metrics import format_r2
from mrf_core.qa.synthetic import nist_plate_maps, write_map_file
from mrf_core.qa.trends import TrendStore, scan_time_of
from mrf_gadgetron.cli import main

SCHEDULE = default_schedule().truncated(20)


def _dictionary_args(tmp_path, out: Path) -> list[str]:
    return ["dictionary", "build", "--grid", "percent", "--step-pct", "40", "--timepoints", "20", "--states", "10",
            "--rank", "4", "-o", str(out), "--cache-dir", str(tmp_path / "cache")]


def test_a_built_dictionary_is_reused_by_the_pipeline_and_info_tells_what_the_file_holds(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    assert main(_dictionary_args(tmp_path, tmp_path / "d.h5")) == 0
    out = capsys.readouterr().out
    (cached,) = (tmp_path / "cache").glob("dict_*.h5")
    assert f"also cached as {cached}" in out and "--dictionary-file" in out
    assert main(["dictionary", "info", str(tmp_path / "d.h5")]) == 0
    assert "fingerprints + compressed" in capsys.readouterr().out
    assert main(["dictionary", "info", str(cached)]) == 0
    assert "compressed only" in capsys.readouterr().out
    # the pipeline's cache lookup (same schedule, grid, states, rank) finds the user's dictionary
    found = cached_dictionary(SCHEDULE, percent_grid(40.0), 10, 4, tmp_path / "cache")
    assert f"dictionary from cache {cached}" in caplog.text and found.n_atoms > 0
    caplog.clear()
    cached_dictionary(SCHEDULE, percent_grid(50.0), 10, 4, tmp_path / "cache")
    assert "building the dictionary of the 50 % grid for schedule " + SCHEDULE.hash in caplog.text
    assert "later scans of this schedule reuse it" in caplog.text and "--dictionary-file FILE" in caplog.text


def test_progress_is_log_lines_off_a_terminal_and_off_when_quiet(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="mrf.progress")
    monkeypatch.setattr(progress, "QUIET_S", 0.0)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    monkeypatch.setattr(progress, "_default", True)
    assert list(progress.bar(range(3), desc="building", unit="chunk")) == [0, 1, 2]  # pytest's stderr: no tty
    assert "building: 2/3 chunk (67 %)" in caplog.text and "building: 3/3 chunk (100 %)" in caplog.text
    caplog.clear()
    progress.set_default(False)
    assert list(progress.bar(range(3), desc="silent")) == [0, 1, 2]
    assert list(progress.bar(range(2), desc="asked", enabled=True)) == [0, 1] and "asked" in caplog.text
    assert "silent" not in caplog.text


def test_maps_are_added_as_a_new_group_and_a_same_name_group_needs_force(tmp_path):
    maps, _ = nist_plate_maps("t1", matrix=32)
    images = map_images(maps, ImageGeometry((300.0, 300.0, 5.0)))
    path = tmp_path / "maps.h5"
    write_images(path, images, "first")
    write_images(path, images, "second")
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["first", "second"]
    with pytest.raises(MapsError, match="already holds the group 'first'.*--force"):
        write_images(path, images[:1], "first")
    write_images(path, images[:1], "first", force=True)
    with h5py.File(path, "r") as f:
        assert sorted(f["first"]) == ["image_1"] and len(f["second"]) == len(images)
    # the commands refuse before any work (the raw file is not even opened)
    for argv in (["reconstruct", "missing.h5", "-o", str(path), "-G", "second"],
                 ["replay", "missing.h5", "-c", "mrf_default.xml", "-o", str(path), "-G", "second"]):
        assert main(argv) == 2
    with h5py.File(path, "r") as f:
        assert len(f["second"]) == len(images)


def test_missing_raw_file_and_raw_file_given_to_qa(tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path / "nope.h5"), "-o", str(tmp_path / "maps.h5")]) == 2
    assert capsys.readouterr().err.strip() == f"mrf reconstruct: error: raw file {tmp_path / 'nope.h5'} does not exist"
    assert main(["replay", str(tmp_path / "nope.h5"), "-c", "mrf_default.xml", "-o", str(tmp_path / "m.h5")]) == 2
    assert capsys.readouterr().err.strip() == f"mrf replay: error: raw file {tmp_path / 'nope.h5'} does not exist"
    raw = tmp_path / "scan.h5"  # the ISMRMRD raw layout, written by hand: dataset/xml and dataset/data
    with h5py.File(raw, "w") as f:
        f["dataset/xml"] = np.array([b"<ismrmrdHeader/>"])
        f["dataset/data"] = np.zeros(3)
    assert main(["qa", str(raw), "--array", "t1", "--field", "3", "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "raw acquisitions" in err and f"mrf reconstruct {raw} -o maps.h5" in err and "mrf replay" in err


def test_port_in_use_names_the_port_and_the_option(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is in use" in err and "--port" in err and "Errno" not in err


def test_broken_pipe_ends_quietly():
    """A reader that goes away (`mrf signal ... | head`): no error text, the exit status of SIGPIPE."""
    command = [sys.executable, "-c", "import sys; from mrf_gadgetron.cli import main; sys.exit(main())"]
    proc = subprocess.Popen([*command, "signal", "--t1", "1000", "--t2", "100", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "rror" not in err and "Broken pipe" not in err


def test_training_defaults_to_the_readme_rank():
    assert TrainConfig().rank == 10  # the README: the reconstruction needs rank 10 for the short-T1 spheres


def test_help_has_no_duplicate_defaults(capsys):
    for argv in (["simulate"], ["reconstruct"], ["train"], ["signal"], ["dictionary", "build"], ["replay"]):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text and "(library default)" not in text, argv
        assert not re.search(r"\(default [^)]*\) \(default:", text), argv
    with pytest.raises(SystemExit):
        main(["qa", "trend", "--help"])
    assert capsys.readouterr().out.startswith("usage: mrf qa trend --store FILE")


def test_qa_records_version_temperature_r2_and_quantised_cv(tmp_path):
    assert format_r2(0.99998) == "0.99998" and format_r2(1 - 3e-7) == "1 - 3e-07" and format_r2(1.0) == "1.00000"
    maps, _ = nist_plate_maps("t1")  # noiseless: every ROI holds one value, as a dictionary's grid gives
    write_map_file(tmp_path / "m.h5", [maps])
    result = run_qa(tmp_path / "m.h5", "t1", 3.0)
    assert result.reference.temperature_C is None and result.to_json()["phantom"]["temperature_C"] is None
    assert any("T1 ROI CV 0 % at spheres 1, 2" in w and "below one grid step" in w for w in result.warnings)


def test_trend_store_dates_client_groups_and_refused_duplicates_leave_no_report(tmp_path, capsys):
    for group, when in (("2025-03-01 21:30:31.764543", datetime.datetime(2025, 3, 1, 21, 30, 31, 764543)),
                        ("2025-Mar-01 21:30:31.764543", datetime.datetime(2025, 3, 1, 21, 30, 31, 764543)),
                        ("2025-03-01 21:30:31", datetime.datetime(2025, 3, 1, 21, 30, 31))):
        assert scan_time_of(SimpleNamespace(source={"group": group})) == when
    maps, _ = nist_plate_maps("t1", noise_rel=0.01)
    write_map_file(tmp_path / "m.h5", [maps])
    argv = ["qa", str(tmp_path / "m.h5"), "--array", "t1", "--field", "3", "--store", str(tmp_path / "s.sqlite")]
    assert main([*argv, "-o", str(tmp_path / "r1")]) == 0
    assert main([*argv, "-o", str(tmp_path / "r2")]) == 2
    assert "already holds" in capsys.readouterr().err and not (tmp_path / "r2").exists()
    with sqlite3.connect(tmp_path / "s.sqlite") as conn:
        assert conn.execute("SELECT temperature_C FROM scans").fetchall() == [(None,)]


V1_SCANS = """CREATE TABLE scans (id INTEGER PRIMARY KEY, scan_key TEXT NOT NULL UNIQUE, scan_time TEXT NOT NULL,
    added_time TEXT NOT NULL, array TEXT NOT NULL, field_T REAL NOT NULL, batch INTEGER NOT NULL,
    temperature_C REAL NOT NULL, passed INTEGER NOT NULL, results_json TEXT NOT NULL);
CREATE TABLE spheres (scan_id INTEGER NOT NULL REFERENCES scans(id) ON DELETE CASCADE, sphere INTEGER NOT NULL,
    quantity TEXT NOT NULL, reference_ms REAL NOT NULL, measured_ms REAL, error_pct REAL, roi_std_ms REAL,
    counted INTEGER NOT NULL, tolerance_pct REAL NOT NULL, PRIMARY KEY (scan_id, sphere, quantity));
CREATE INDEX scans_by_array ON scans(array, field_T, scan_time);
PRAGMA application_id = 1297237585; PRAGMA user_version = 1;"""


def test_a_schema_1_store_is_upgraded_with_its_scans(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:  # a store as the previous version wrote it (its schema, by hand)
        conn.executescript(V1_SCANS)
        conn.execute("INSERT INTO scans VALUES (1, 'k', '2025-01-01T09:00:00', '2025-01-01T09:00:00', 'NiCl2', 3.0, "
                     "1, 20.0, 1, '{}')")
        conn.execute("INSERT INTO spheres VALUES (1, 1, 't1_ms', 1989, 1990, 0.05, 3, 1, 5)")
    maps, _ = nist_plate_maps("t1", noise_rel=0.01)
    write_map_file(tmp_path / "m.h5", [maps])
    with TrendStore(path, create=False) as store:
        store.add(run_qa(tmp_path / "m.h5", "t1", 3.0))
        assert len(store.scans()) == 2 and store.series("NiCl2", 3.0, "t1_ms")[1][0].measured_ms == 1990
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert store.conn.execute("PRAGMA foreign_key_check").fetchall() == []
        store.conn.execute("DELETE FROM scans WHERE id = 1")  # the cascade still works after the upgrade
        assert store.conn.execute("SELECT COUNT(*) FROM spheres WHERE scan_id = 1").fetchone()[0] == 0


def test_mrf_send_is_a_client_of_the_server(serve, tmp_path, capsys):
    raw = tmp_path / "scan.h5"  # written with ismrmrd's own Dataset, not the project's writer
    dataset = ismrmrd.Dataset(str(raw), "dataset", create_if_needed=True)
    dataset.write_xml_header(HEADER_XML)
    sent = acquisitions(3)
    for acquisition in sent:
        dataset.append_acquisition(acquisition)
    dataset.close()
    server = serve()
    out = tmp_path / "images.h5"
    assert main(["send", "-f", str(raw), "-c", "echo.xml", "-p", str(server.port), "-o", str(out), "-G", "g"]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "server: [wire_test_gadget.images] WARNING" in captured.err
    back = ismrmrd.Dataset(str(out), "g", create_if_needed=False)
    try:
        assert back.number_of_images("image_7") == 3
        np.testing.assert_allclose(back.read_image("image_7", 1).data.ravel(), 2 * np.abs(sent[1].data).ravel())
    finally:
        back.close()
    assert main(["send", "-f", str(raw), "-c", "nothing.xml", "-p", str(server.port), "-o", str(out)]) == 2
    assert "no configuration 'nothing.xml'" in capsys.readouterr().err
    assert main(["send", "-f", str(raw), "-c", "echo.xml", "-p", str(_closed_port()), "-o", str(out),
                 "--connect-timeout", "0"]) == 2
    assert "is `mrf serve` or Gadgetron running there?" in capsys.readouterr().err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_quiet_and_log_level_set_progress_and_logging(monkeypatch, capsys):
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", root.level)  # restored afterwards
    monkeypatch.setattr(progress, "_default", False)
    for argv, level, shown in ((["--quiet"], logging.WARNING, False), ([], logging.INFO, True),
                               (["--log-level", "error"], logging.ERROR, False), (["--debug"], logging.DEBUG, True)):
        head = argv if argv == ["--debug"] else []
        rest = [] if argv == ["--debug"] else argv
        assert main([*head, "signal", "--t1", "1000", "--t2", "100", "--timepoints", "10", *rest]) == 0
        assert root.level == level and progress.is_enabled() is shown, argv
    assert "T1 1000 ms" in capsys.readouterr().out
