"""`mrf serve` under hostile and careless clients (issue 15): entity bombs, paths in error texts, targets
outside the allow-list, slow clients, clients that leave, oversized claims, and a seeded fuzz of
malformed streams. Every case runs through real sockets on 127.0.0.1 against an in-process MrfServer."""

from __future__ import annotations

import os
import random
import re
import select
import socket
import struct
import sys
import time

import ismrmrd
import pytest
from chain_helpers import acquisitions, child_pids, config_xml, exchange, header, scan

from mrf_gadgetron.host.chain import ChainOptions
from mrf_gadgetron.host.external import REPO_ROOT
from mrf_gadgetron.host.messages import (
    Limits,
    MessageId,
    MessageReader,
    encode_config_name,
    encode_header,
    encode_item,
    encode_string,
)
from mrf_gadgetron.host.server import is_allowed, public_text

MiB = 2**20


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.MULTILINE)[1]) / 1024


def entity_bomb(levels: int = 10) -> str:
    entities = ['<!ENTITY e0 "lollollollollollollollollollol">']
    entities += [f'<!ENTITY e{i} "{f"&e{i - 1};" * 10}">' for i in range(1, levels)]
    return (f'<?xml version="1.0"?>\n<!DOCTYPE ismrmrdHeader [{"".join(entities)}]>\n'
            f'<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><studyInformation><studyID>&e{levels - 1};'
            f'</studyID></studyInformation></ismrmrdHeader>')


# ---- 2: XML ----------------------------------------------------------------------------------------------
def test_entity_bomb_header_is_refused_before_parsing(serve):
    srv = serve()
    before = rss_mib()
    for _ in range(3):
        data = encode_config_name("echo.xml") + encode_string(MessageId.HEADER, entity_bomb())
        _, texts = exchange(srv.port, data, shut_write=True, timeout_s=10)
        assert re.search(r"ERROR: the ISMRMRD header refused: it has a DOCTYPE declaration", texts[-1]), texts
    assert rss_mib() - before < 50


def test_entity_in_an_inline_configuration_is_refused(serve):
    srv = serve()
    text = config_xml(("images", None)).replace("<configuration>", '<!DOCTYPE c [<!ENTITY x "y">]><configuration>', 1)
    _, texts = exchange(srv.port, scan(encode_string(MessageId.CONFIG, text)), shut_write=True)
    assert "DOCTYPE declaration" in texts[-1] and "entities are not accepted" in texts[-1], texts


# ---- 7: no server paths in texts ---------------------------------------------------------------------------
def test_error_texts_show_no_server_paths(serve, tmp_path):
    srv = serve()
    _, texts = exchange(srv.port, scan(encode_config_name("missing.xml")), shut_write=True)
    assert texts[-1] == "ERROR: no configuration 'missing.xml' (available: echo.xml, hang.xml)"
    (tmp_path / "configs" / "broken.xml").write_text("<configuration><version>2</version>")
    _, texts = exchange(srv.port, scan(encode_config_name("broken.xml")), shut_write=True)
    assert texts[-1].startswith("ERROR: broken.xml: not well-formed XML"), texts
    assert not any(str(tmp_path) in t for t in texts)


def test_public_text_cuts_the_server_folders():
    assert public_text(f'File "{REPO_ROOT}/gadgets/emit.py", line 3') == 'File "gadgets/emit.py", line 3'
    assert public_text(f"{sys.prefix}/lib/x.py and {os.path.expanduser('~')}") == \
        "lib/x.py and <server folder>"
    assert public_text("see http://www.ismrm.org/ISMRMRD, ratio 3/4") == "see http://www.ismrm.org/ISMRMRD, ratio 3/4"


# ---- 4: allow-list and node limits ---------------------------------------------------------------------------
def test_is_allowed_entries():
    allow = ("gadgets.emit:emit", "site_gadgets", "other:*")
    assert is_allowed("gadgets.emit", "emit", allow) and not is_allowed("gadgets.emit", "dumps", allow)
    assert is_allowed("site_gadgets.x", "f", allow) and is_allowed("site_gadgets", "g", allow)
    assert not is_allowed("site_gadgets_evil", "g", allow) and is_allowed("other", "anything", allow)
    assert not is_allowed("json", "dumps", allow)


def test_a_target_outside_the_allow_list_is_refused_and_never_started(serve):
    srv = serve()
    before = child_pids()
    text = config_xml(("images", None)).replace('name="wire_test_gadget" target="images"', 'name="json" target="dumps"')
    _, texts = exchange(srv.port, scan(encode_string(MessageId.CONFIG, text)), shut_write=True)
    assert "stage json:dumps is not allowed on this server" in texts[-1], texts
    assert "mrf serve --allow json:dumps" in texts[-1]
    assert child_pids() <= before


def test_too_many_nodes_and_inline_off_are_refused(serve):
    srv = serve(max_nodes=3)
    text = config_xml(*[("passthrough", None)] * 4)
    _, texts = exchange(srv.port, scan(encode_string(MessageId.CONFIG, text)), shut_write=True)
    assert "4 stream nodes; this server runs at most 3 per configuration (mrf serve --max-nodes)" in texts[-1]
    srv = serve(inline_configs=False)
    _, texts = exchange(srv.port, scan(encode_string(MessageId.CONFIG, config_xml(("images", None)))),
                        shut_write=True)
    assert "inline configurations (message 2) are not accepted" in texts[-1] and "--no-inline" in texts[-1]


def test_stage_processes_in_all_are_limited(serve):
    srv = serve(max_stages=1)
    held = socket.create_connection(("127.0.0.1", srv.port))
    try:
        held.sendall(encode_config_name("hang.xml") + encode_header(header()))
        time.sleep(0.5)
        _, texts = exchange(srv.port, scan(encode_config_name("echo.xml")), timeout_s=10)
        assert "1 stage processes running, at most 1 (mrf serve --max-stages)" in texts[-1], texts
    finally:
        held.close()


# ---- 3: deadlines and rates ---------------------------------------------------------------------------------
def dribble_on(sock, data: bytes, every_s: float, timeout_s: float = 10) -> str:
    """Send `data` a byte every `every_s` on `sock` until the server answers; then all it sends, as text."""
    for i in range(len(data)):
        try:
            sock.sendall(data[i:i + 1])
        except OSError:
            break
        if select.select([sock], [], [], every_s)[0]:
            break
    sock.settimeout(timeout_s)
    answer = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        answer += chunk
    return answer.decode("utf-8", "replace")


def dribble(port: int, data: bytes, every_s: float, timeout_s: float = 10) -> tuple[str, float]:
    """dribble_on a new connection: the answer and the seconds it took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        answer = dribble_on(sock, data, every_s, timeout_s)
    return answer, time.monotonic() - started


def test_a_slow_handshake_is_refused_at_its_deadline(serve):
    srv = serve(handshake_s=1.0, min_rate=0)
    answer, elapsed = dribble(srv.port, encode_config_name("echo.xml") + encode_header(header()), 0.2)
    assert "the handshake (configuration and header, 1 s) not complete in time" in answer, answer
    assert elapsed < 4


def test_a_slow_acquisition_is_refused_for_its_rate(serve):
    srv = serve(min_rate=1000, rate_grace_s=1.0)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(encode_config_name("echo.xml") + encode_header(header()))
        started = time.monotonic()
        answer = dribble_on(sock, encode_item(acquisitions(1)[0]), 0.2)
    assert "too slow" in answer and "minimum 1000 bytes/s after 1 s" in answer, answer
    assert time.monotonic() - started < 5


# ---- 5: a client that leaves --------------------------------------------------------------------------------
@pytest.mark.parametrize("read_first", [False, True], ids=["unread-answer", "read-all-then-close"])
def test_a_departed_client_stops_its_stages(serve, read_first):
    """Closing with the stage's warning unread (a reset) or after reading it (an end of stream, which the
    server's probe turns into a reset): the hanging stage is gone within ~3 s either way."""
    srv = serve()
    before = child_pids()
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    sock.sendall(scan(encode_config_name("hang.xml")))
    if read_first:
        reader = MessageReader(sock, "server")
        assert reader.read_id() == MessageId.TEXT and "mode hang" in reader.read_string(10**6, "text")
    deadline = time.monotonic() + 20
    while not (child_pids() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    stages = child_pids() - before
    assert stages
    time.sleep(1.0)  # the stage is connected and hanging
    sock.close()
    left = time.monotonic()
    while (child_pids() - before) and time.monotonic() - left < 10:
        time.sleep(0.05)
    assert not (child_pids() - before)
    assert time.monotonic() - left < 3.5


def test_a_half_closing_client_still_gets_its_images(serve):
    srv = serve()
    images, texts = exchange(srv.port, scan(encode_config_name("echo.xml")), shut_write=True)
    assert len(images) == 3 and not any(t.startswith("ERROR") for t in texts), texts


# ---- 1: memory ----------------------------------------------------------------------------------------------
def oversized_claim(samples: int, channels: int) -> bytes:
    head = ismrmrd.AcquisitionHeader()
    head.number_of_samples, head.active_channels, head.available_channels = samples, channels, channels
    return struct.pack("<H", MessageId.ACQUISITION) + bytes(head)


def test_oversized_claims_leave_the_server_memory_where_it_was(serve):
    srv = serve(limits=Limits(item_bytes=512 * MiB))
    claim = oversized_claim(65535, 400)  # 210 MB claimed, 1 MiB sent
    exchange(srv.port, scan(encode_config_name("echo.xml")))  # warm up
    before = rss_mib()
    for _ in range(5):
        data = encode_config_name("echo.xml") + encode_header(header()) + claim + bytes(MiB)
        _, texts = exchange(srv.port, data, shut_write=True, timeout_s=20)
        assert "truncated message" in texts[-1], texts
    assert rss_mib() - before < 60


def test_the_memory_budget_refuses_an_item_beyond_it(serve):
    srv = serve(max_memory_bytes=50 * MiB)
    data = encode_config_name("echo.xml") + encode_header(header()) + oversized_claim(65535, 200) + bytes(MiB)
    _, texts = exchange(srv.port, data, shut_write=True, timeout_s=20)
    assert "server memory budget reached" in texts[-1] and "--max-memory" in texts[-1], texts
    assert srv.state.budget.used == 0
    images, _ = exchange(srv.port, scan(encode_config_name("echo.xml")))
    assert len(images) == 3 and srv.state.budget.used == 0


# ---- 8: fuzz -------------------------------------------------------------------------------------------------
def mutate(rng: random.Random, valid: bytes, handshake_end: int) -> bytes:
    """A malformed variant of a valid stream, mostly in its handshake (which starts no stage: a stream
    past it starts one, ~0.3 s, so those are one case in 30)."""
    kind = rng.randrange(5) if rng.randrange(30) else 5
    data = bytearray(valid)
    if kind == 0:  # truncated
        return bytes(data[:rng.randrange(handshake_end)])
    if kind == 1:  # bytes flipped
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(handshake_end)] = rng.randrange(256)
        return bytes(data[:handshake_end - 1])
    if kind == 2:  # a random message id somewhere
        at = rng.choice([0, 1026])
        return bytes(data[:at]) + struct.pack("<H", rng.randrange(65536)) + bytes(data[at:at + 64])
    if kind == 3:  # a length replaced
        at = 1026 + 2
        return bytes(data[:at]) + struct.pack("<I", rng.randrange(2**32)) + bytes(data[at + 4:handshake_end])
    if kind == 4:  # random bytes
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    return bytes(data[:handshake_end]) + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))


def test_fuzzed_streams_get_text_and_close_and_the_server_serves_on(serve):
    srv = serve(max_connections=4, handshake_s=3, client_timeout_s=3, drain_s=1,
                chain=ChainOptions(connect_s=30, io_s=10, exit_s=5, grace_s=0.5))
    rng = random.Random(15)
    valid = scan(encode_config_name("echo.xml"), acquisitions(2))
    handshake_end = len(encode_config_name("echo.xml") + encode_header(header()))
    before = child_pids()
    started = time.monotonic()
    for case in range(200):
        data = mutate(rng, valid, handshake_end)
        images, texts = exchange(srv.port, data, shut_write=True, timeout_s=20)
        assert texts, (case, data[:80])  # a TEXT (an ERROR, or a stage warning when still valid), then CLOSE
    assert time.monotonic() - started < 40
    images, texts = exchange(srv.port, valid)
    assert len(images) == 2 and not any(t.startswith("ERROR") for t in texts)
    deadline = time.monotonic() + 10
    while child_pids() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (child_pids() - before)
