"""What several test modules share (not a test module: tests do not import each other): a throwaway
gadget for the wire tests, a tiny header and acquisitions, stream configurations of it, a client exchange,
and the product's default configuration with properties replaced."""

from __future__ import annotations

import os
import re
import socket

import ismrmrd
import numpy as np
import pytest

from mrf_gadgetron.host.messages import MessageId, MessageReader, encode_header, encode_id, encode_item
from mrf_gadgetron.host.stream_config import default_config_dir

TEST_ALLOW = ("wire_test_gadget:images", "wire_test_gadget:passthrough")  # what mrf serve may run in tests

HEADER_XML = """<?xml version="1.0"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
<experimentalConditions><H1resonanceFrequency_Hz>128000000</H1resonanceFrequency_Hz></experimentalConditions>
<encoding><encodedSpace><matrixSize><x>8</x><y>8</y><z>1</z></matrixSize>
<fieldOfView_mm><x>100</x><y>100</y><z>5</z></fieldOfView_mm></encodedSpace>
<reconSpace><matrixSize><x>8</x><y>8</y><z>1</z></matrixSize>
<fieldOfView_mm><x>100</x><y>100</y><z>5</z></fieldOfView_mm></reconSpace>
<encodingLimits/><trajectory>cartesian</trajectory></encoding>
</ismrmrdHeader>"""

# A throwaway gadget: turns each acquisition into an image of |data| * scale; its `mode` property makes it
# misbehave in the ways the wire layer must survive.
TEST_GADGET = '''
import logging, os, socket, struct, time
import ismrmrd
import numpy as np

def _properties(config):
    return {} if config is None else {p.get("name"): p.get("value") for p in config.findall("property")}

def images(connection):
    props = _properties(connection.config)
    scale, mode = float(props.get("scale", 1)), props.get("mode", "echo")
    logging.warning("wire test gadget: scale %g, mode %s, encoded x %d", scale, mode,
                    connection.header.encoding[0].encodedSpace.matrixSize.x)
    if mode == "hang":
        time.sleep(600)
    for item in connection:
        if not isinstance(item, ismrmrd.Acquisition):
            connection.send(item)
            continue
        if mode == "text":
            connection.socket.write(struct.pack("<HI", 5, 2) + b"hi")
        if mode == "error":
            text = "wire test gadget refuses acquisition %d" % item.scan_counter
            connection.socket.write(struct.pack("<HQ", 8, len(text)) + text.encode())
            raise RuntimeError(text)
        if mode == "reset":  # the socket resets before the process exits with its reason
            raw = connection.socket.socket
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            os.dup2(os.open(os.devnull, os.O_RDWR), raw.fileno())  # closes the socket (RST), keeps the fd valid
            time.sleep(0.3)
            logging.critical("wire test gadget reset its socket at acquisition %d", item.scan_counter)
            os._exit(1)
        if not np.all(np.isfinite(item.data)):
            raise ValueError("acquisition %d has non-finite samples" % item.scan_counter)
        image = ismrmrd.Image.from_array((np.abs(item.data) * scale).astype(np.float32)[None], transpose=False)
        image.image_series_index = 7
        image.image_index = item.scan_counter
        connection.send(image)
        if mode == "acquisitions":
            connection.send(item)

def passthrough(connection):
    for item in connection:
        if isinstance(item, ismrmrd.Image):
            item.image_series_index += 1
        connection.send(item)
'''


def config_xml(*stages: tuple[str, dict[str, str] | None], writers=("ImageWriter",)) -> str:
    nodes = []
    for target, props in stages:
        conf = "" if props is None else "<configuration>" + "".join(
            f'<property name="{k}" value="{v}"/>' for k, v in props.items()) + "</configuration>"
        nodes.append(f'<external><execute name="wire_test_gadget" target="{target}" type="python"/>{conf}</external>')
    writer_xml = "".join(f"<writer><dll>gadgetron_core_writers</dll><classname>{w}</classname></writer>"
                         for w in writers)
    return (f"<configuration><version>2</version><readers><reader><dll>gadgetron_core_readers</dll>"
            f"<classname>AcquisitionReader</classname></reader></readers><writers>{writer_xml}</writers>"
            f"<stream>{''.join(nodes)}</stream></configuration>")


def acquisitions(n: int = 4, channels: int = 2, samples: int = 16, nan_at: int | None = None):
    out = []
    for i in range(n):
        data = np.full((channels, samples), i + 1, dtype=np.complex64)
        if i == nan_at:
            data[0, 3] = np.nan
        acq = ismrmrd.Acquisition.from_array(data)
        acq.scan_counter = i
        out.append(acq)
    return out


def header():
    return ismrmrd.xsd.CreateFromDocument(HEADER_XML)


def assert_reaped(pids):
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def exchange(port: int, data: bytes, shut_write: bool = False, timeout_s: float = 30):
    """Send bytes as a client, read the answer until CLOSE: (images, texts)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        reader = MessageReader(sock, "server")
        images, texts = [], []
        while True:
            mid = reader.read_id()
            if mid == MessageId.CLOSE:
                return images, texts
            if mid == MessageId.TEXT:
                texts.append(reader.read_string(10**6, "text"))
            else:
                images.append(reader.read_item(mid))


def scan(config: bytes, items=None, head: bytes | None = None) -> bytes:
    items = acquisitions(3) if items is None else items
    return (config + (encode_header(header()) if head is None else head) + b"".join(map(encode_item, items))
            + encode_id(MessageId.CLOSE))


def default_config_text(**properties: str) -> str:
    """config_xml/mrf_default.xml with some property values replaced."""
    text = (default_config_dir() / "mrf_default.xml").read_text()
    for name, value in properties.items():
        text, n = re.subn(rf'(<property name="{name}" value=")[^"]*(")', rf"\g<1>{value}\g<2>", text)
        assert n, f"mrf_default.xml has no property {name}"
    return text


def child_pids(parent: int | None = None, command: bytes | None = None) -> set[int]:
    """Processes whose parent is `parent` (default: this process), and with `command` among their arguments
    when given (read from /proc): stage processes a test expects to find, or to be gone."""
    parent = os.getpid() if parent is None else parent
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            if command is not None:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if command not in f.read().split(b"\0"):
                        continue
        except (OSError, ValueError, IndexError):
            continue
        found.add(int(entry))
    return found
