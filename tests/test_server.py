"""`mrf serve`'s protocol through real sockets, with the throwaway gadget of test_wire: configurations by
name and inline, images back, every bad input answered with a TEXT error then CLOSE, and the server
still serving the next connection (also several at once)."""

from __future__ import annotations

import re
import socket
import struct
import threading
import time

import ismrmrd
import numpy as np
import pytest
from chain_helpers import acquisitions, config_xml, exchange, header, scan

from mrf_gadgetron.host.messages import (
    Limits,
    MessageId,
    encode_config_name,
    encode_header,
    encode_id,
    encode_item,
    encode_string,
)


@pytest.fixture()
def server(serve):
    return serve(drain_s=5, limits=Limits(header_bytes=10**5))


def test_configuration_by_name_returns_images_and_warnings(server):
    images, texts = exchange(server.port, scan(encode_config_name("echo.xml")))
    assert [i.image_index for i in images] == [0, 1, 2] and np.allclose(images[1].data, 4.0)
    assert texts == ["[wire_test_gadget.images] WARNING: wire test gadget: scale 2, mode echo, encoded x 8"]


def test_mrd_client_habits_name_without_xml_texts_and_nul_terminated_header(server):
    """MRD (FIRE) clients: a configuration name without .xml, TEXT messages, a header ending in NUL."""
    head = encode_string(MessageId.HEADER, ismrmrd.xsd.ToXML(header()) + "\0")
    data = (encode_config_name("echo") + encode_string(MessageId.TEXT, "hello") + head
            + encode_string(MessageId.TEXT, "more") + b"".join(map(encode_item, acquisitions(2)))
            + encode_id(MessageId.CLOSE))
    images, texts = exchange(server.port, data)
    assert len(images) == 2 and not any(t.startswith("ERROR") for t in texts), texts


def test_inline_configuration(server):
    images, _ = exchange(server.port, scan(encode_string(MessageId.CONFIG, config_xml(("images", {"scale": "5"})))))
    assert len(images) == 3 and np.allclose(images[0].data, 5.0)


def bad_acquisition() -> bytes:
    head = ismrmrd.AcquisitionHeader()
    head.number_of_samples, head.active_channels, head.available_channels = 2**16 - 1, 2**16 - 1, 2**16 - 1
    return struct.pack("<H", MessageId.ACQUISITION) + bytes(head)


@pytest.mark.parametrize(("data", "message"), [
    (scan(encode_config_name("../echo.xml")), "refused"),
    (scan(encode_config_name("/etc/echo.xml")), "refused"),
    (scan(encode_config_name("missing.xml")), "no configuration 'missing.xml'.*available: echo.xml, hang.xml"),
    (encode_config_name("echo.xml") + struct.pack("<H", 4242), "expected the ISMRMRD header.*unknown \\(4242\\)"),
    (encode_config_name("echo.xml") + encode_header(header()) + struct.pack("<H", 4242),
     "unexpected message id unknown \\(4242\\)"),
    (struct.pack("<H", 77), "expected a configuration.*unknown \\(77\\)"),
    (encode_config_name("echo.xml") + encode_string(MessageId.HEADER, "<not a header"), "header does not parse"),
    (encode_config_name("echo.xml") + struct.pack("<HI", MessageId.HEADER, 2**30), "exceeds the limit"),
    (encode_config_name("echo.xml") + encode_header(header()) + bad_acquisition(), "exceeds the limit"),
    (encode_config_name("echo.xml") + encode_header(header()) + encode_item(acquisitions(1)[0])[:200],
     "truncated message"),
    (scan(encode_config_name("echo.xml"), acquisitions(4, nan_at=1)), "acquisition 1 has non-finite samples"),
])
def test_bad_input_gets_an_error(server, data, message):
    images, texts = exchange(server.port, data, shut_write=True)
    assert texts and texts[-1].startswith("ERROR: ")
    assert re.search(message, texts[-1]), texts


def test_the_server_serves_on_after_bad_input(server):
    for data in (struct.pack("<H", 77), scan(encode_config_name("echo.xml"), acquisitions(2, nan_at=0))):
        assert exchange(server.port, data, shut_write=True)[1][-1].startswith("ERROR: ")
    images, texts = exchange(server.port, scan(encode_config_name("echo.xml")))
    assert len(images) == 3 and not any(t.startswith("ERROR") for t in texts)


def test_connections_run_side_by_side_and_one_failure_touches_no_other(server):
    results = {}

    def client(name, data):
        results[name] = exchange(server.port, data)

    threads = [threading.Thread(target=client, args=("good", scan(encode_config_name("echo.xml"), acquisitions(20)))),
               threading.Thread(target=client, args=("bad", scan(encode_config_name("echo.xml"),
                                                                 acquisitions(20, nan_at=3))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results["good"][0]) == 20 and not any(t.startswith("ERROR") for t in results["good"][1])
    assert "non-finite" in results["bad"][1][-1]


def test_connections_beyond_the_limit_are_refused_not_queued(server):
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
    try:
        held[0].sendall(encode_config_name("hang.xml") + encode_header(header()))
        held[1].sendall(encode_config_name("hang.xml") + encode_header(header()))
        time.sleep(0.5)
        _, texts = exchange(server.port, scan(encode_config_name("echo.xml")), timeout_s=10)
        assert texts == ["ERROR: server busy (2 scans running); try again later"]
    finally:
        for sock in held:
            sock.close()


def test_mrf_serve_command_serves_until_stopped(tmp_path):
    """`mrf serve --port 0 --config-dir DIR` announces its port, answers a client, and stops on Ctrl-C."""
    import signal
    import subprocess
    import sys

    (tmp_path / "echo.xml").write_text(config_xml(("images", None)))
    proc = subprocess.Popen([sys.executable, "-m", "mrf_gadgetron", "serve", "--port", "0", "--config-dir",
                             str(tmp_path), "--allow", "wire_test_gadget:images"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()
        assert "configurations in" in line and "echo.xml" in line, line
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line)[1])
        _, texts = exchange(port, scan(encode_config_name("../echo.xml")), shut_write=True)
        assert "refused" in texts[-1]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    assert proc.returncode == 130
