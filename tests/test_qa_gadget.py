"""The QA gadget (in process, on the map images emit sends) and config_xml/mrf_qa.xml."""

from __future__ import annotations

import dataclasses
import json
import logging
import xml.etree.ElementTree as ElementTree
from types import SimpleNamespace

import ismrmrd
import numpy as np
import pytest

from gadgets.in_process import InProcessConnection, configuration
from gadgets.properties import read_properties
from gadgets.qa import PROPERTIES, field_of, qa
from mrf_core.io.map_images import ImageGeometry, image_meta, map_images
from mrf_core.qa.synthetic import nist_plate_maps
from mrf_core.qa.trends import TrendStore
from mrf_core.sim.phantoms import Placement
from mrf_gadgetron.host.stream_config import default_config_dir, load_stream_config

CONFIG_DIR = default_config_dir()  # the checkout's config_xml, or the installed package's
GEOMETRY = ImageGeometry(fov_mm=(300.0, 300.0, 5.0), position=(0.0, 0.0, 12.0))


def _header(field_t: float | None = 3.0):
    """What the gadget reads of an ismrmrd header: acquisitionSystemInformation.systemFieldStrength_T."""
    system = ismrmrd.xsd.acquisitionSystemInformationType(systemFieldStrength_T=field_t) if field_t else None
    return SimpleNamespace(acquisitionSystemInformation=system)


def _emitted(ushort=False):
    """What emit sends for a two-slice NIST scan: T1 plate (one sphere off by 12 % in T2) and T2 plate."""
    t1, _ = nist_plate_maps("t1", placement=Placement((8, 4), 20.0), error_pct={"t2_ms": {3: 12.0}})
    t2, _ = nist_plate_maps("t2", placement=Placement((8, 4), 20.0))
    slices = [t1, dataclasses.replace(t2, slice_index=1)]
    return [im for maps in slices for im in map_images(maps, GEOMETRY, as_ushort=ushort)]


def _run(items, properties=None, header=None):
    connection = InProcessConnection(header or _header(), items, configuration(properties))
    qa(connection)
    return connection.sent


@pytest.mark.parametrize("ushort", [False, True])
def test_maps_pass_and_one_qa_figure_per_slice_follows(ushort, tmp_path):
    images = _emitted(ushort)
    sent = _run(images, {"store": tmp_path / "qa.sqlite", "report_dir": tmp_path / "reports" if ushort else ""})
    assert sent[: len(images)] == images  # the maps reach the scanner untouched, first
    figures = sent[len(images):]
    assert len(figures) == 2
    verdicts = []
    for slice_index, figure in enumerate(figures):
        head, meta = figure.getHead(), image_meta(figure)
        rgb = 6  # ISMRMRD_IMTYPE_RGB; ismrmrd-python 1.14 lacks the name
        assert head.image_series_index == 99 and head.slice == slice_index and head.image_type == rgb
        assert figure.data.dtype == np.uint16 and figure.data.shape[0] == 3 and figure.data.max() <= 255
        assert figure.data.shape[2] > 300 and figure.data.std() > 1
        assert np.allclose(head.position, GEOMETRY.position) and head.field_of_view[0] == 300.0
        assert meta["DataRole"] == "QAFigure" and meta["GADGETRON_DataRole"] == "QA"
        verdicts.append(meta["MRF_QAVerdict"])
    assert verdicts == ["FAIL", "PASS"]  # scaled ushort maps measure as well as float ones
    assert "NIST NiCl2" in image_meta(figures[0])["GADGETRON_ImageComment"]
    assert "NIST MnCl2" in image_meta(figures[1])["GADGETRON_ImageComment"]
    with TrendStore(tmp_path / "qa.sqlite", create=False) as store:
        assert [s["array"] for s in store.scans()] == ["NiCl2", "MnCl2"]
    if not ushort:
        assert not (tmp_path / "reports").exists()
        return
    reports = sorted((tmp_path / "reports").glob("qa-*-slice*/results.json"))
    assert len(reports) == 2
    assert any(f.startswith("sphere 3 T2") for f in json.loads(reports[0].read_text())["failures"])
    t2_plate = json.loads(reports[1].read_text())
    assert not any("saturates" in w for w in t2_plate["warnings"]) and not t2_plate["failures"]


def test_grey_figure_and_a_slice_without_a_phantom(caplog):
    images = _emitted()
    t1_only = [im for im in images if im.getHead().slice == 0]
    noise = [im for im in map_images(
        dataclasses.replace(nist_plate_maps("t1")[0], slice_index=1,
                            **{k: np.random.default_rng(1).uniform(100, 2000, (128, 128)).astype(np.float32)
                               for k in ("t1_ms", "t2_ms", "pd")}), GEOMETRY)]
    with caplog.at_level(logging.WARNING):
        sent = _run(t1_only + noise, {"figure": "grey", "array": "t1", "field": "3"}, header=_header(None))
    figures = sent[len(t1_only) + len(noise):]
    assert [image_meta(f)["MRF_QAVerdict"] for f in figures] == ["FAIL", "QA NOT POSSIBLE"]
    assert all(f.data.shape[0] == 1 and f.getHead().image_type == ismrmrd.IMTYPE_MAGNITUDE for f in figures)
    assert figures[0].data.max() > 3000
    assert "no NIST sphere array" in image_meta(figures[1])["GADGETRON_ImageComment"]
    assert any("slice 1: phantom QA not possible" in r.message for r in caplog.records)


def test_field_from_the_header_and_bad_settings():
    assert field_of(_header(2.89), "auto") == 3.0 and field_of(_header(1.494), "auto") == 1.5
    assert field_of(_header(None), "1.5") == 1.5
    with pytest.raises(ValueError, match="not 1.5 or 3 T; set the 'field' property"):
        field_of(_header(7.0), "auto")
    with pytest.raises(ValueError, match="qa: property array = 'pd'"):
        _run(_emitted(), {"array": "pd"})
    with pytest.raises(ValueError, match="not 1.5 or 3 T"):
        _run(_emitted(), header=_header(None))


def test_no_map_images_means_no_figure(caplog):
    other = ismrmrd.Image.from_array(np.zeros((1, 1, 4, 4), np.float32), transpose=False)
    with caplog.at_level(logging.WARNING):
        assert _run([other]) == [other]
    assert any("no map images" in r.message for r in caplog.records)


def _nodes(name: str) -> list[ElementTree.Element]:
    return list(ElementTree.parse(CONFIG_DIR / name).getroot().find("stream"))


def _canonical(element: ElementTree.Element) -> str:
    element.tail = None
    return ElementTree.canonicalize(ElementTree.tostring(element), strip_text=True)


def test_qa_configuration_is_the_default_chain_plus_qa():
    root = ElementTree.parse(CONFIG_DIR / "mrf_qa.xml").getroot()
    default = ElementTree.parse(CONFIG_DIR / "mrf_default.xml").getroot()
    assert root.findtext("version").strip() == "2"
    for part in ("readers", "writers"):
        assert _canonical(root.find(part)) == _canonical(default.find(part))
    nodes, default_nodes = _nodes("mrf_qa.xml"), _nodes("mrf_default.xml")
    assert [_canonical(n) for n in nodes[:-1]] == [_canonical(n) for n in default_nodes]
    last = nodes[-1]
    assert last.find("execute").attrib == {"name": "gadgets.qa", "target": "qa", "type": "python"}
    settings = read_properties(last.find("configuration"), PROPERTIES, "qa")
    assert settings.series_index == 99 and settings.array == "auto"
    config = load_stream_config(CONFIG_DIR / "mrf_qa.xml")
    assert [node.target for node in config.nodes][-2:] == ["emit", "qa"]
