"""config_xml/mrf_distributed.xml and `mrf serve --distributed-worker`: the configuration is a valid Gadgetron 4
`<distributed>` node over slices, and the server answers the sub-stream such a node sends a worker, played
here as Gadgetron's Distributed node plays it (nodes/Distributed.cpp, common/Configuration.cpp,
common/ExternalChannel.cpp, common/Serialization.cpp, config/Config.cpp serialize_config): message 2 with the
node's readers, writers and stream serialized as a configuration (every `<external>` with empty `<readers/>`
and `<writers/>` and an `<execute>` without its target), the header, one slice's acquisitions, CLOSE; back
it reads items until CLOSE, takes ERROR (8, uint64 length) as the worker's failure, and any other message
id (TEXT included) as illegal."""

from __future__ import annotations

import socket
import time
import xml.etree.ElementTree as ET

import ismrmrd
import pytest
from chain_helpers import acquisitions, config_xml, header

from mrf_gadgetron.host.messages import MessageId, MessageReader, encode_header, encode_id, encode_item, encode_string
from mrf_gadgetron.host.server import DEFAULT_ALLOW, sole_allowed_target
from mrf_gadgetron.host.stream_config import default_config_dir, load_stream_config, parse_stream_config

CONFIG = default_config_dir() / "mrf_distributed.xml"
# Gadgetron's AcquisitionDistributor selectors (AcquisitionDistributor.cpp, function_map)
DIMENSIONS = {"kspace_encode_step_1", "kspace_encode_step_2", "average", "slice", "contrast", "phase",
              "repetition", "set", "segment", *(f"user_{i}" for i in range(8))}


def forwarded(distributed: ET.Element) -> str:
    """The configuration Gadgetron sends a worker for a `<distributed>` node (serialize_config of its
    readers, writers and stream; XMLSerializer keeps dll and classname of readers and writers, and of an
    `<external>` only name and type of `<execute>`, and its `<configuration>` whole)."""
    root = ET.Element("configuration")
    ET.SubElement(root, "version").text = "2"
    for section, item in (("readers", "reader"), ("writers", "writer")):
        out = ET.SubElement(root, section)
        for node in distributed.findall(f"{section}/{item}"):
            copy = ET.SubElement(out, item)
            for tag in ("dll", "classname"):
                ET.SubElement(copy, tag).text = node.findtext(tag)
    stream = ET.SubElement(root, "stream", key="")
    for node in distributed.find("stream"):
        external = ET.SubElement(stream, "external")
        ET.SubElement(external, "readers")
        ET.SubElement(external, "writers")
        execute = node.find("execute")
        ET.SubElement(external, "execute", name=execute.get("name"), type=execute.get("type"))
        if node.find("configuration") is not None:
            external.append(node.find("configuration"))
    return '<?xml version="1.0"?>\n' + ET.tostring(root, encoding="unicode")


def test_the_configuration_distributes_mrf_defaults_chain_over_slices():
    root = ET.parse(CONFIG).getroot()
    assert root.findtext("version").strip() == "2"
    (node,) = list(root.find("stream"))
    assert node.tag == "distributed"
    distributor = node.find("distributor")
    assert (distributor.findtext("dll"), distributor.findtext("classname")) == \
        ("gadgetron_core_distributed", "AcquisitionDistributor")
    dimension = distributor.find("property[@name='parallel_dimension']").get("value")
    assert dimension == "slice" and dimension in DIMENSIONS
    classes = {(s, n.findtext("classname")) for s in ("readers", "writers") for n in node.find(s)}
    assert {("readers", "AcquisitionReader"), ("readers", "ImageReader"), ("writers", "AcquisitionWriter"),
            ("writers", "ImageWriter")} == classes  # acquisitions to a worker, images back, on both ends
    default = load_stream_config(default_config_dir() / "mrf_default.xml")
    worker = parse_stream_config(forwarded(node), "forwarded", lambda m: sole_allowed_target(m, DEFAULT_ALLOW))
    assert [(n.module, n.target) for n in worker.nodes] == [(n.module, n.target) for n in default.nodes]
    in_place = load_stream_config(CONFIG)  # mrf replay and a client of mrf serve: the node's stream in place
    assert [(n.module, n.target, _properties(n)) for n in in_place.nodes] == \
        [(n.module, n.target, _properties(n)) for n in default.nodes] and in_place.readers == default.readers
    assert [_properties(n) for n in worker.nodes] == [_properties(n) for n in default.nodes]
    assert worker.writes(ismrmrd.Image()) and worker.input_ids == {MessageId.ACQUISITION, MessageId.IMAGE}


def _properties(node) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in ET.fromstring(node.configuration_xml).iter("property")}


def _worker_exchange(port: int, config: str, items) -> list[tuple[int, object]]:
    """The distributor's side: configuration, header, one slice's items, CLOSE; (id, item or text) back."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(encode_string(MessageId.CONFIG, config) + encode_header(header())
                     + b"".join(map(encode_item, items)) + encode_id(MessageId.CLOSE))
        reader, back = MessageReader(sock, "worker"), []
        while (mid := reader.read_id()) != MessageId.CLOSE:
            assert mid not in (MessageId.TEXT, MessageId.CONFIG, MessageId.HEADER), "illegal for the node"
            back.append((mid, reader.read_string(10**6, "error", wide=True) if mid == MessageId.ERROR
                         else reader.read_item(mid)))
        return back


@pytest.mark.parametrize("mode", ["echo", "error"])
def test_mrf_serve_answers_a_distributed_nodes_sub_stream(serve, mode):
    server = serve(distributed_worker=True, allow=("wire_test_gadget:images",))
    node = ET.fromstring(CONFIG.read_text()).find("stream/distributed")
    node.find("stream").clear()
    node.find("stream").append(ET.fromstring(config_xml(("images", {"mode": mode, "scale": "3"}))).find(
        "stream/external"))
    slice_1 = acquisitions(3)
    for acq in slice_1:
        acq.idx.slice = 1
    back = _worker_exchange(server.port, forwarded(node), slice_1)
    if mode == "echo":  # images only (the gadget's warning stays in the worker's log), then CLOSE
        assert [(mid, item.image_index) for mid, item in back] == [(MessageId.IMAGE, i) for i in range(3)]
        assert abs(back[0][1].data.ravel()[0] - 3.0) < 1e-6
    else:
        assert [mid for mid, _ in back] == [MessageId.ERROR]
        assert "wire test gadget refuses acquisition 0" in back[0][1]


def test_a_worker_queues_connections_beyond_its_slots_and_stops_a_departed_nodes_chain(serve):
    server = serve(distributed_worker=True, max_connections=1, allow=("wire_test_gadget:images",))
    node = ET.fromstring(CONFIG.read_text()).find("stream/distributed")

    def sub_stream(mode: str) -> bytes:
        node.find("stream").clear()
        node.find("stream").append(ET.fromstring(config_xml(("images", {"mode": mode}))).find("stream/external"))
        return (encode_string(MessageId.CONFIG, forwarded(node)) + encode_header(header())
                + b"".join(map(encode_item, acquisitions(2))) + encode_id(MessageId.CLOSE))

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as first:
        first.sendall(sub_stream("hang"))  # holds the only slot
        time.sleep(1.0)
        second = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        second.sendall(sub_stream("echo"))  # waits for the slot instead of a "busy" refusal
        second.settimeout(1.0)
        with pytest.raises(TimeoutError):
            second.recv(1)
    started = time.monotonic()  # the first node left: its chain stops, the second sub-stream runs
    second.settimeout(30)
    reader = MessageReader(second, "worker")
    ids = []
    while (mid := reader.read_id()) != MessageId.CLOSE:
        ids.append(mid)
        reader.read_item(mid)
    second.close()
    assert ids == [MessageId.IMAGE, MessageId.IMAGE] and time.monotonic() - started < 20
