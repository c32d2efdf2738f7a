"""`mrf batch` on a Dask LocalCluster: scans through real stage processes (a stand-in gadget that answers
every scan with the maps of a NIST plate, so QA has something to find), a corrupt file recorded as failed
while the others finish, the summary, --resume by input and settings hash, and a trend store that holds
each scan once however often it is written."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import textwrap
import xml.etree.ElementTree as ET

import h5py
import pytest
from chain_helpers import config_xml

from mrf_core.qa.analysis import run_qa
from mrf_core.qa.synthetic import nist_plate_maps, write_map_file
from mrf_core.qa.trends import TrendStore
from mrf_gadgetron.batch import (
    META_KEY,
    BatchError,
    QASpec,
    ScanJob,
    default_workers,
    file_sha256,
    find_jobs,
    run_batch,
    run_job,
    settings_sha256,
    store_qa,
    with_settings,
)
from mrf_gadgetron.cli import main
from mrf_gadgetron.host.stream_config import find_config

distributed = pytest.importorskip("distributed")

PLATE_GADGET = '''
from mrf_core.io.map_images import ImageGeometry, map_images
from mrf_core.qa.synthetic import nist_plate_maps

def maps(connection):
    n = sum(1 for _ in connection)
    plate, _ = nist_plate_maps("t1", matrix=112)
    for image in map_images(plate, ImageGeometry(fov_mm=(300.0, 300.0, 5.0))):
        connection.send(image)

def hog(connection):
    import numpy
    for _ in connection:
        numpy.ones(2**32, dtype=numpy.uint8)  # 4 GiB
'''


@pytest.fixture()
def batch_folder(sim_small_scan, test_gadget, tmp_path):
    """Two raw files, a corrupt one, the stand-in gadget's configuration (plate.xml) and the wire-test
    gadget's (echo.xml: an image per acquisition, the cheapest chain)."""
    (test_gadget / "batch_test_gadget.py").write_text(textwrap.dedent(PLATE_GADGET))
    raws = tmp_path / "raw"
    raws.mkdir()
    for name in ("a", "b"):
        shutil.copy(sim_small_scan[2], raws / f"{name}.h5")
    (raws / "corrupt.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(2000))
    (tmp_path / "plate.xml").write_text(config_xml(("maps", None)).replace("wire_test_gadget", "batch_test_gadget"))
    (tmp_path / "echo.xml").write_text(config_xml(("images", None)))
    (tmp_path / "hog.xml").write_text(config_xml(("hog", None)).replace("wire_test_gadget", "batch_test_gadget"))
    return raws


@pytest.fixture(scope="module")
def client():
    """A cluster in this process (its worker threads start the stage processes), reachable by address."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


def _rows(folder):
    with open(folder / "summary.csv", newline="") as f:
        return {r["scan"]: r for r in csv.DictReader(f)}


def test_batch_of_a_manifest_records_a_corrupt_file_and_finishes_the_others(batch_folder, tmp_path, client, capsys):
    out = tmp_path / "out"
    (tmp_path / "scans.csv").write_text(
        "raw,config,out,qa_array,qa_field,qa_store\n"
        "raw/a.h5,plate.xml,out/a_maps.h5,t1,3,trend.db\n"
        "raw/b.h5,echo.xml,,,,\n"
        "raw/corrupt.h5,echo.xml,,,,\n")
    code = main(["batch", str(tmp_path / "scans.csv"), "-o", str(out), "--scheduler", client.scheduler.address])
    printed = capsys.readouterr().out
    assert code == 1 and "dashboard http" in printed and "[3/3] done 2, skipped 0, failed 1" in printed
    rows = _rows(out)
    assert {k: r["status"] for k, r in rows.items()} == {"a": "done", "b": "done", "corrupt": "failed"}
    assert rows["corrupt"]["error"].startswith(f"cannot open raw file {batch_folder / 'corrupt.h5'}")
    a = rows["a"]
    assert a["qa_passed"] == "PASS" and a["qa_stored"] == f"{tmp_path / 'trend.db'}#1"
    assert a["worker"].startswith("tcp://") and float(a["chain_s"]) > 0 and "batch_test_gadget.maps=" in a["stages"]
    assert os.path.isfile(a["figure"]) and os.path.isfile(a["qa_report"]) and rows["b"]["qa_report"] == ""
    assert rows["b"]["notes"].startswith("no maps figure:") and rows["b"]["figure"] == ""
    with h5py.File(a["out"], "r") as f:
        meta = json.loads(f.attrs[META_KEY])
    assert meta["input_sha256"] == file_sha256(batch_folder / "a.h5") == a["input_sha256"]
    assert [r["scan"] for r in json.loads((out / "summary.json").read_text())] == ["a", "b", "corrupt"]
    page = (out / "index.html").read_text()
    assert 'href="a_maps.png"' in page and 'href="a_maps_qa/report.html"' in page
    assert not list(out.glob(".*.tmp"))  # no temporary outputs left behind


def test_resume_skips_only_the_same_input_with_the_same_settings(batch_folder, tmp_path, client):
    (batch_folder / "corrupt.h5").unlink()
    out = tmp_path / "out"
    defaults = {"config": str(tmp_path / "echo.xml"), "out_dir": str(out), "figure": False}
    jobs = find_jobs(str(batch_folder / "*.h5"), defaults)
    assert [r["status"] for r in run_batch(jobs, client, out)] == ["done", "done"]
    with h5py.File(batch_folder / "b.h5", "r+") as f:  # another input for b
        f.attrs["touched"] = 1
    rows = run_batch(find_jobs(str(batch_folder), defaults), client, out, resume=True)
    assert [(r["scan"], r["status"]) for r in rows] == [("a", "skipped"), ("b", "done")]
    (tmp_path / "echo3.xml").write_text(config_xml(("images", {"scale": "3"})))
    (job,) = find_jobs(str(batch_folder / "a.h5"), dict(defaults, config="mrf_default.xml"))
    changes = ({}, {"config": str(tmp_path / "echo3.xml")}, {"figure": True}, {"settings": (("method", "cg"),)},
               {"qa": QASpec("t1", 3.0)}, {"qa": QASpec("t1", 3.0, store="elsewhere.db")})
    hashes = set()
    for change in changes:
        other = dataclasses.replace(job, **change)
        hashes.add(settings_sha256(other, with_settings(find_config(other.config), other.settings)))
    assert len(hashes) == 5  # another configuration, setting, figure or QA is another output; the store is not


def test_manifest_settings_go_to_the_stages_that_accept_them(tmp_path):
    (tmp_path / "scans.csv").write_text("raw,settings\nscan.h5,method=cg; rank=6 ;ushort=true\n")
    (job,) = find_jobs(str(tmp_path / "scans.csv"), {"config": "mrf_default.xml", "out_dir": str(tmp_path)})
    assert job.settings == (("method", "cg"), ("rank", "6"), ("ushort", "true"))
    config = with_settings(find_config(job.config), job.settings)
    values = [{p.get("name"): p.get("value") for p in ET.fromstring(n.configuration_xml).iter("property")}
              for n in config.nodes]
    assert values[0]["method"] == "cg" and values[0]["rank"] == "6" and values[0]["threads"] == "2"
    assert values[3]["ushort"] == "true" and "method" not in values[3]
    with pytest.raises(BatchError, match="settings colour: no stage of .*mrf_default.xml accepts them"):
        with_settings(find_config("mrf_default.xml"), (("colour", "red"),))
    # LocalCluster workers: cores // the stages' threads (2 in the shipped configurations), settings applied
    assert [default_workers("mrf_default.xml", s, cores=16) for s in ((), (("threads", "1"),), (("threads", "0"),))] \
        == [8, 16, 1]


def test_a_scan_beyond_its_memory_limit_fails_in_its_stage(batch_folder, tmp_path):
    job = ScanJob("a", str(batch_folder / "a.h5"), str(tmp_path / "hog.xml"), str(tmp_path / "a_maps.h5"),
                  figure=False, stage_memory_mib=1024)
    row, _ = run_job(job)
    assert row["status"] == "failed" and "Unable to allocate 4.00 GiB" in row["error"]
    assert not (tmp_path / "a_maps.h5").exists()


def test_the_trend_store_holds_a_scan_once_however_often_it_is_written(tmp_path):
    plate, _ = nist_plate_maps("t1", matrix=112)
    write_map_file(tmp_path / "m.h5", [plate])
    result = run_qa(tmp_path / "m.h5", "t1", 3.0)
    for _ in range(2):  # a retried task, a batch run again: the entry is replaced
        store_qa(result, tmp_path / "trend.db")
    with TrendStore(tmp_path / "trend.db") as store:
        assert len(store.scans()) == 1
