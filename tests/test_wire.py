"""The wire layer on its own: framing and limits, stream configurations, and real `python -m gadgetron`
stage processes running a throwaway test gadget (written to tmp, not the product's gadgets)."""

from __future__ import annotations

import os
import socket
import struct
import time

import ismrmrd
import numpy as np
import pytest
from chain_helpers import HEADER_XML, acquisitions, assert_reaped, child_pids, config_xml, header

from mrf_gadgetron.host.chain import ChainError, ChainOptions, run_chain
from mrf_gadgetron.host.messages import (
    Limits,
    MessageId,
    MessageReader,
    PeerClosed,
    WireError,
    encode_config_name,
    encode_header,
    encode_id,
    encode_item,
    encode_string,
)
from mrf_gadgetron.host.stream_config import (
    XML_DECLARATION,
    StreamConfigError,
    parse_stream_config,
    resolve_config_name,
)


# ---- framing -----------------------------------------------------------------------------------------
def pair(limits: Limits | None = None):
    a, b = socket.socketpair()
    b.settimeout(5)
    return a, MessageReader(b, "peer", limits or Limits())


def test_every_message_round_trips():
    a, reader = pair()
    acq = acquisitions(1)[0]
    acq.resize(16, 2, 2)
    acq.traj[:] = np.arange(32, dtype=np.float32).reshape(16, 2)
    image = ismrmrd.Image.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), transpose=False)
    meta = ismrmrd.Meta()
    meta["MRF_Test"] = "yes"
    image.attribute_string = meta.serialize()
    a.sendall(encode_config_name("mrf_default.xml") + encode_string(MessageId.CONFIG, "<x/>") + encode_header(header())
              + encode_item(acq) + encode_item(image) + encode_string(MessageId.ERROR, "bad", wide=True)
              + encode_id(MessageId.CLOSE))
    assert reader.read_id() == MessageId.FILENAME and reader.read_config_name() == "mrf_default.xml"
    assert reader.read_id() == MessageId.CONFIG and reader.read_string(100, "config") == "<x/>"
    assert reader.read_id() == MessageId.HEADER
    assert "ismrmrdHeader" in reader.read_string(10**6, "header")
    assert reader.read_id() == MessageId.ACQUISITION
    got = reader.read_item(MessageId.ACQUISITION)
    assert np.array_equal(got.data, acq.data) and np.array_equal(got.traj, acq.traj) and got.scan_counter == 0
    assert reader.read_id() == MessageId.IMAGE
    got = reader.read_item(MessageId.IMAGE)
    assert np.array_equal(got.data, image.data) and "MRF_Test" in got.attribute_string
    assert reader.read_id() == MessageId.ERROR and reader.read_string(10, "error", wide=True) == "bad"
    assert reader.read_id() == MessageId.CLOSE
    a.close()
    with pytest.raises(PeerClosed):
        reader.read_id()


def test_truncated_message_is_an_error_not_a_hang():
    a, reader = pair()
    a.sendall(encode_item(acquisitions(1)[0])[:100])
    a.close()
    assert reader.read_id() == MessageId.ACQUISITION
    with pytest.raises(WireError, match="truncated"):
        reader.read_item(MessageId.ACQUISITION)


def test_absurd_lengths_are_refused_before_reading():
    a, reader = pair(Limits(header_bytes=1000, item_bytes=10**6))
    a.sendall(struct.pack("<HI", MessageId.HEADER, 2**31))
    assert reader.read_id() == MessageId.HEADER
    with pytest.raises(WireError, match="exceeds the limit"):
        reader.read_string(reader.limits.header_bytes, "the header")
    huge = ismrmrd.AcquisitionHeader()
    huge.number_of_samples, huge.active_channels, huge.available_channels = 60000, 1000, 1000
    a.sendall(struct.pack("<H", MessageId.ACQUISITION) + bytes(huge))
    assert reader.read_id() == MessageId.ACQUISITION
    with pytest.raises(WireError, match="1000 channels x 60000 samples.*exceeds"):
        reader.read_item(MessageId.ACQUISITION)


def test_silent_peer_times_out():
    a, reader = pair()
    reader.sock.settimeout(0.2)
    with pytest.raises(WireError, match="no message for 0.2 s"):
        reader.read_id()
    a.close()


# ---- stream configurations ---------------------------------------------------------------------------
def test_configuration_parses_and_stages_get_their_configuration_element():
    config = parse_stream_config(config_xml(("images", {"scale": "2"}), ("passthrough", None)))
    assert [n.label for n in config.nodes] == ["wire_test_gadget.images", "wire_test_gadget.passthrough"]
    first, second = config.nodes
    assert first.configuration_xml.startswith(XML_DECLARATION)
    assert '<property name="scale" value="2" />' in first.configuration_xml
    assert second.configuration_xml == XML_DECLARATION  # no <configuration>: the declaration only, as Gadgetron
    assert config.input_ids == {MessageId.ACQUISITION}
    assert config.writes(ismrmrd.Image()) and not config.writes(ismrmrd.Acquisition())


@pytest.mark.parametrize(("xml", "message"), [
    ("<gadgetronStreamConfiguration/>", "legacy"),
    ("<configuration><version>2</version><stream><gadget><name>x</name></gadget></stream></configuration>",
     "only <external>"),
    ("<configuration><version>2</version><stream><external><connect port='9'/></external></stream></configuration>",
     "<connect>"),
    ("<configuration><version>2</version><stream><external><execute name='m' target='f' type='matlab'/>"
     "</external></stream></configuration>", "only python"),
    ("<configuration><version>2</version><stream><external><execute name='m' type='python'/>"
     "</external></stream></configuration>", "needs both"),
    ("<configuration><version>2</version><readers><reader><classname>DependencyQueryReader</classname></reader>"
     "</readers><stream><external><execute name='m' target='f' type='python'/></external></stream></configuration>",
     "DependencyQueryReader"),
    ("<configuration><version>2", "not well-formed"),
])
def test_configurations_we_cannot_run_are_refused_by_name(xml, message):
    with pytest.raises(StreamConfigError, match=message):
        parse_stream_config(xml)


@pytest.mark.parametrize("name", ["../etc/passwd.xml", "sub/x.xml", "/abs/x.xml", "..", "", "a\0.xml", "~root"])
def test_configuration_names_never_leave_the_folder(tmp_path, name):
    (tmp_path / "ok.xml").write_text("<x/>")
    with pytest.raises(StreamConfigError, match="refused"):
        resolve_config_name(name, tmp_path)


def test_configuration_name_resolves_inside_the_folder(tmp_path):
    (tmp_path / "ok.xml").write_text("<x/>")
    assert resolve_config_name("ok.xml", tmp_path) == tmp_path / "ok.xml"
    assert resolve_config_name("ok", tmp_path) == tmp_path / "ok.xml"  # MRD clients leave out .xml
    with pytest.raises(StreamConfigError, match="available: ok.xml"):
        resolve_config_name("missing.xml", tmp_path)


# ---- stage processes ----------------------------------------------------------------------------------
def run(config_text, items, options: ChainOptions | None = None):
    outputs, logs = [], []
    report = run_chain(parse_stream_config(config_text), header(), items, outputs.append,
                       lambda *a: logs.append(a), options or ChainOptions(connect_s=30, io_s=30, exit_s=10))
    return outputs, logs, report


def test_two_stages_relay_items_with_their_configuration_and_warnings(test_gadget):
    outputs, logs, report = run(config_xml(("images", {"scale": "3"}), ("passthrough", None)), acquisitions(4))
    assert [o.image_index for o in outputs] == [0, 1, 2, 3]
    assert all(o.image_series_index == 8 for o in outputs)  # 7 from the first stage, +1 from the second
    assert np.allclose(outputs[2].data, 3 * 3)  # |3| x scale 3: the property reached the stage
    assert logs == [("wire_test_gadget.images", "WARNING", "wire test gadget: scale 3, mode echo, encoded x 8")]
    assert [(s.items_in, s.items_out) for s in report.stages] == [(4, 4), (4, 4)]
    assert all(s.peak_rss_mib > 10 for s in report.stages)
    assert_reaped(s.pid for s in report.stages)


def test_outputs_no_writer_accepts_are_dropped(test_gadget):
    outputs, _, report = run(config_xml(("images", {"mode": "acquisitions"})), acquisitions(3))
    assert len(outputs) == 3 and all(isinstance(o, ismrmrd.Image) for o in outputs) and report.dropped == 3


@pytest.mark.parametrize(("stages", "items", "message"), [
    ([("images", None), ("passthrough", None)], acquisitions(6, nan_at=2),
     r"wire_test_gadget.images: failed \(exit code 1\): acquisition 2 has non-finite samples"),
    ([("images", {"mode": "error"}), ("passthrough", None)], acquisitions(2),
     "wire_test_gadget refuses acquisition 0|wire test gadget refuses acquisition 0"),
    ([("images", {"mode": "text"})], acquisitions(2), "illegal message id from an external peer: 5"),
    ([("images", {"mode": "reset"}), ("passthrough", None)], acquisitions(4),
     r"wire_test_gadget.images: failed \(exit code 1\): .*reset its socket at acquisition 0"),
    ([("passthrough", None), ("no_such_target", None)], acquisitions(2), "no_such_target"),
])
def test_a_failing_stage_reports_its_own_words_and_leaves_no_process(test_gadget, stages, items, message):
    before = child_pids()
    with pytest.raises(ChainError, match=message):
        run(config_xml(*stages), items)
    assert child_pids() <= before


def test_missing_module_is_reported(test_gadget):
    config = config_xml(("images", None)).replace("wire_test_gadget", "no_such_module_anywhere")
    with pytest.raises(ChainError, match=r"images: failed \(exit code 1\): No module named 'no_such_module_anywhere'"):
        run(config, acquisitions(1))


def test_a_silent_stage_times_out_and_is_killed(test_gadget):
    before = child_pids()
    started = time.monotonic()
    with pytest.raises(ChainError, match="no message for 1 s"):
        run(config_xml(("images", {"mode": "hang"})), acquisitions(1), ChainOptions(connect_s=30, io_s=1, exit_s=5))
    assert time.monotonic() - started < 15 and child_pids() <= before


def test_stages_start_without_preexec_fn(test_gadget, monkeypatch):
    """A preexec_fn in a fork of this threaded process is unsafe (subprocess docs): a stage is its own
    session, and ties itself to us in stage_main (PR_SET_PDEATHSIG) before running gadgetron's __main__.
    test_replay's SIGKILL case checks that a killed parent leaves no stage behind."""
    import subprocess

    real_popen, calls = subprocess.Popen, []

    def recording_popen(command, **kwargs):
        calls.append((command, kwargs))
        return real_popen(command, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    outputs, _, report = run(config_xml(("images", None), ("passthrough", None)), acquisitions(2))
    assert len(outputs) == 2 and len(calls) == 2
    for command, kwargs in calls:
        assert "preexec_fn" not in kwargs and kwargs.get("start_new_session") is True
        assert kwargs["env"]["NUMPY_MADVISE_HUGEPAGE"] == "0"  # no transparent huge pages for numpy's arrays
        assert command[1:4] == ["-m", "mrf_gadgetron.host.stage_main", str(os.getpid())]
        assert command[-2] == "wire_test_gadget" and command[-1] in ("images", "passthrough")
    assert_reaped(s.pid for s in report.stages)


def test_a_stage_environment_keeps_what_the_user_set():
    from mrf_gadgetron.host.external import stage_environment

    env = stage_environment({"NUMPY_MADVISE_HUGEPAGE": "1", "PYTHONPATH": "/x"}, memory_mib=512)
    assert env["NUMPY_MADVISE_HUGEPAGE"] == "1" and env["MRF_STAGE_MEMORY_MIB"] == "512"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == "/x"


def test_stage_main_refuses_to_start_without_its_launcher():
    """A launcher gone before the stage could tie itself to it (its parent is then another process): the
    stage exits at once rather than run unowned."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mrf_gadgetron.host.stage_main", "1", "9", "m", "t"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "launcher (pid 1) is gone: not starting" in done.stderr
    done = subprocess.run([sys.executable, "-m", "mrf_gadgetron.host.stage_main", "9"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "usage:" in done.stderr


def _wire_items():
    acq = ismrmrd.Acquisition.from_array((np.arange(6, dtype=np.complex64) * (1 + 2j)).reshape(2, 3),
                                         np.arange(6, dtype=np.float32).reshape(3, 2))
    acq.scan_counter = 7
    image = ismrmrd.Image.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), transpose=False)
    meta = ismrmrd.Meta()
    meta["MRF_Test"] = "yes"
    image.attribute_string = meta.serialize()
    waveform = ismrmrd.Waveform.from_array(np.arange(8, dtype=np.uint32).reshape(2, 4))
    return acq, image, waveform


def test_frames_are_the_bytes_of_a_hand_built_frame():
    acq, image, waveform = _wire_items()
    u16, u32, u64 = (lambda v: struct.pack("<H", v)), (lambda v: struct.pack("<I", v)), (lambda v: struct.pack("<Q", v))
    assert encode_id(MessageId.CLOSE) == b"\x04\x00"
    assert encode_config_name("a.xml") == u16(1) + b"a.xml" + b"\0" * 1019
    assert encode_string(MessageId.CONFIG, "<c/>") == u16(2) + u32(4) + b"<c/>"
    assert encode_string(MessageId.TEXT, "h\u00e9") == u16(5) + u32(3) + "h\u00e9".encode()
    assert encode_string(MessageId.ERROR, "bad", wide=True) == u16(8) + u64(3) + b"bad"
    xml = ismrmrd.xsd.ToXML(header()).encode()
    assert encode_header(header()) == u16(3) + u32(len(xml)) + xml
    assert encode_header(HEADER_XML) == u16(3) + u32(len(HEADER_XML.encode())) + HEADER_XML.encode()
    assert encode_item(acq) == (u16(1008) + bytes(acq.getHead()) + acq.traj.astype("<f4").tobytes()
                                + acq.data.astype("<c8").tobytes())
    attributes = image.attribute_string.encode()
    head = image.getHead()
    head.attribute_string_len = len(attributes)
    assert encode_item(image) == u16(1022) + bytes(head) + u64(len(attributes)) + attributes + image.data.tobytes()
    assert encode_item(waveform) == u16(1026) + bytes(waveform.getHead()) + waveform.data.astype("<u4").tobytes()


def test_frames_equal_ismrmrd_protocol_serializer():
    """Where ismrmrd has ProtocolSerializer (1.14.2 on; CONFIG_FILE / CONFIG_TEXT from 1.15.0), its bytes
    and ours agree message by message."""
    import io

    serialization = pytest.importorskip("ismrmrd.serialization")
    acq, image, waveform = _wire_items()
    ours = [encode_item(acq), encode_item(image), encode_item(waveform), encode_header(header()),
            encode_string(MessageId.TEXT, "note")]
    theirs = [acq, image, waveform, header(), "note"]
    if hasattr(serialization, "ConfigText"):
        ours += [encode_config_name("mrf_default.xml"), encode_string(MessageId.CONFIG, "<c/>")]
        theirs += [serialization.ConfigFile("mrf_default.xml"), serialization.ConfigText("<c/>")]
    for expected, item in zip(ours, theirs, strict=True):
        stream = io.BytesIO()
        serialization.ProtocolSerializer(stream).serialize(item)
        assert stream.getvalue() == expected, type(item).__name__
    stream = io.BytesIO()
    serialization.ProtocolSerializer(stream).close()
    assert stream.getvalue() == encode_id(MessageId.CLOSE)
