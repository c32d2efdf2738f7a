"""config_xml/*.xml: valid version-2 stream configurations for Gadgetron 4.x whose every node runs a gadget
that exists and accepts every property the node sets."""

from __future__ import annotations

import importlib
import inspect
import xml.etree.ElementTree as ElementTree

import pytest

from gadgets.properties import read_properties
from mrf_gadgetron.host.stream_config import default_config_dir, load_stream_config

CONFIG_DIR = default_config_dir()  # the checkout's config_xml, or the installed package's
CHAINS = {
    "mrf_default.xml": ["reconstruct", "map_network", "map_dictionary", "emit"],
    "mrf_dictionary.xml": ["reconstruct", "map_dictionary", "emit"],
    "mrf_coefficients.xml": ["reconstruct"],
    "mrf_qa.xml": ["reconstruct", "map_network", "map_dictionary", "emit", "qa"],
}


def _root(name: str) -> ElementTree.Element:
    return ElementTree.parse(CONFIG_DIR / name).getroot()


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_configuration_is_version_2_with_core_readers_and_image_writer(name):
    root = _root(name)
    assert root.tag == "configuration" and root.findtext("version").strip() == "2"
    readers = {(r.findtext("dll"), r.findtext("classname")) for r in root.findall("readers/reader")}
    writers = {(w.findtext("dll"), w.findtext("classname")) for w in root.findall("writers/writer")}
    assert ("gadgetron_core_readers", "AcquisitionReader") in readers
    assert readers <= {("gadgetron_core_readers", "AcquisitionReader"), ("gadgetron_core_readers", "WaveformReader")}
    assert writers == {("gadgetron_core_writers", "ImageWriter")}, "images reach the client through ImageWriter"


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_every_node_runs_an_existing_gadget_with_properties_it_accepts(name):
    nodes = list(_root(name).find("stream"))
    assert [n.tag for n in nodes] == ["external"] * len(CHAINS[name])
    targets = []
    for node in nodes:
        execute = node.find("execute")
        assert execute.get("type") == "python"
        module = importlib.import_module(execute.get("name"))  # as `python -m gadgetron PORT MODULE TARGET`
        target = getattr(module, execute.get("target"))
        assert callable(target) and list(inspect.signature(target).parameters) == ["connection"]
        read_properties(node.find("configuration"), module.PROPERTIES, module.NAME)  # known names, valid values
        targets.append(execute.get("target"))
    assert targets == CHAINS[name]


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_the_replay_accepts_the_configuration(name):
    config = load_stream_config(CONFIG_DIR / name)
    assert [node.target for node in config.nodes] == CHAINS[name]
    assert all(node.configuration_xml.lstrip().startswith("<?xml") for node in config.nodes)


def test_only_the_dictionary_chain_never_needs_a_model():
    basis = {name: _root(name).find("stream/external/configuration/property[@name='basis']").get("value")
             for name in CHAINS}
    assert basis == {"mrf_default.xml": "auto", "mrf_dictionary.xml": "dictionary", "mrf_coefficients.xml": "auto",
                     "mrf_qa.xml": "auto"}
