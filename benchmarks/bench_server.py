"""`mrf serve` under hostile and careless clients (issue 15): a real `mrf serve` process on 127.0.0.1, and
its resident memory (VmRSS) and children measured from /proc while clients misbehave.

    python benchmarks/bench_server.py [--repeats 4] [--identity N]

Prints: RSS before/after each of `--repeats` connections that claim a 536 MB acquisition (65535 samples x
1023 channels) and send 1 MiB, and of entity-bomb headers (ten nested levels); the outcome for two
slowloris clients (a byte a second) against a 5 s handshake deadline and whether a normal client is
served meanwhile; the allow-list refusal text; the time from a client leaving to its (hanging) stage
processes being gone. With --identity N: the default chain on a small simulated scan, serially and N
connections at once, whether the images are bit-identical, and the times.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import ismrmrd  # noqa: E402
from chain_helpers import TEST_GADGET, config_xml, exchange, header, scan  # noqa: E402

from mrf_gadgetron.host.messages import (  # noqa: E402
    MessageId,
    encode_config_name,
    encode_header,
    encode_string,
)

MiB = 2**20


def rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)[1]) / 1024


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def start_server(folder: Path, gadget_dir: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(gadget_dir), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "mrf_gadgetron", "serve", "--port", "0", "--config-dir",
                             str(folder), "--allow", "wire_test_gadget", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline()
    return proc, int(re.search(r":(\d+);", line)[1])


def oversized(port: int) -> str:
    head = ismrmrd.AcquisitionHeader()
    head.number_of_samples, head.active_channels, head.available_channels = 65535, 1023, 1023
    data = (encode_config_name("echo.xml") + encode_header(header()) + struct.pack("<H", MessageId.ACQUISITION)
            + bytes(head) + bytes(MiB))
    return exchange(port, data, shut_write=True, timeout_s=60)[1][-1]


def entity_bomb(port: int) -> str:
    entities = ['<!ENTITY e0 "lollollollollollollollollollol">']
    entities += [f'<!ENTITY e{i} "{f"&e{i - 1};" * 10}">' for i in range(1, 10)]
    xml = (f'<?xml version="1.0"?>\n<!DOCTYPE ismrmrdHeader [{"".join(entities)}]>\n<ismrmrdHeader '
           f'xmlns="http://www.ismrm.org/ISMRMRD"><studyInformation><studyID>&e9;</studyID></studyInformation>'
           f'</ismrmrdHeader>')
    data = encode_config_name("echo.xml") + encode_string(MessageId.HEADER, xml)
    return exchange(port, data, shut_write=True, timeout_s=60)[1][-1]


def family(name: str, pid: int, port: int, attempt, repeats: int) -> None:
    rows = []
    for _ in range(repeats):
        before = rss_mib(pid)
        started = time.perf_counter()
        text = attempt(port)
        rows.append(f"{before:.0f} -> {rss_mib(pid):.0f} MB ({time.perf_counter() - started:.1f} s)")
    print(f"{name}: {'; '.join(rows)}\n  answer: {text[:160]}")


def slowloris(port: int) -> None:
    data = encode_config_name("echo.xml") + encode_header(header())
    outcome = {}

    def client(i: int) -> None:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            for k in range(len(data)):
                try:
                    sock.sendall(data[k:k + 1])
                except OSError:
                    break
                if _readable(sock, 1.0):  # the server answered
                    break
            sock.settimeout(10)
            answer = b""
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except OSError:
                pass
        outcome[i] = (time.monotonic() - started, answer.decode("utf-8", "replace"))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    started = time.monotonic()
    images, texts = exchange(port, scan(encode_config_name("echo.xml")), timeout_s=60)
    served = time.monotonic() - started
    for t in threads:
        t.join(60)
    time.sleep(0.5)
    again = exchange(port, scan(encode_config_name("echo.xml")), timeout_s=60)
    for i, (seconds, answer) in sorted(outcome.items()):
        found = re.search(r"ERROR: [^\x00-\x1f]*", answer)
        print(f"slowloris client {i}: answered after {seconds:.1f} s: {found[0][:160] if found else answer[:80]!r}")
    print(f"  a normal client meanwhile: {texts[-1][:100]!r} after {served:.1f} s, {len(images)} images; after "
          f"the slowloris clients were cut: {len(again[0])} images, errors: {[t for t in again[1] if 'ERROR' in t]}")


def _readable(sock: socket.socket, seconds: float) -> bool:
    import select
    return bool(select.select([sock], [], [], seconds)[0])


def departed(pid: int, port: int) -> None:
    before = children(pid)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(scan(encode_config_name("hang.xml")))
    deadline = time.monotonic() + 30
    while not (children(pid) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)
    running = len(children(pid) - before)
    sock.close()
    left = time.monotonic()
    while children(pid) - before and time.monotonic() - left < 30:
        time.sleep(0.02)
    print(f"departed client: {running} hanging stage process(es) gone {time.monotonic() - left:.2f} s after the "
          f"client closed")


def identity(port: int, n: int, threads: str | None = None) -> None:
    """The default chain on a small simulated scan: serially, then n connections at once (`threads`: the
    stages' threads property, else the configuration's)."""
    import numpy as np
    from chain_helpers import default_config_text

    from mrf_core.physics.sequence import default_schedule
    from mrf_core.recon.trajectory import SpiralParams
    from mrf_core.sim.phantoms import brain_phantom
    from mrf_core.sim.simulate import ScanSettings, SimulatedScan
    from mrf_gadgetron.host.messages import encode_id, encode_item

    phantom = brain_phantom(field_t=3.0, matrix=32, fov_mm=240.0, n_slices=1, b1_amplitude=0.1)
    spiral = SpiralParams(fov_mm=240.0, matrix=32, n_interleaves=8, centre_interleaves=4)
    sim = SimulatedScan(phantom, default_schedule().truncated(40), spiral, ScanSettings(n_coils=3, snr=30.0))
    properties = {"grid_step_pct": "10", **({"threads": threads} if threads else {})}
    data = (encode_string(MessageId.CONFIG, default_config_text(**properties)) + encode_header(sim.header)
            + b"".join(map(encode_item, sim.acquisitions())) + encode_id(MessageId.CLOSE))

    def run() -> list:
        images, texts = exchange(port, data, timeout_s=600)
        assert not [t for t in texts if t.startswith("ERROR")], texts
        return images

    run()  # builds the dictionary cache
    started = time.perf_counter()
    serial = run()
    serial_s = time.perf_counter() - started
    results: dict[int, list] = {}
    clients = [threading.Thread(target=lambda i=i: results.__setitem__(i, run())) for i in range(n)]
    started = time.perf_counter()
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    concurrent_s = time.perf_counter() - started
    worst = 0.0
    differing: dict[int, int] = {}
    for images in results.values():
        for a, b in zip(serial, images, strict=True):
            if a.data.tobytes() != b.data.tobytes():
                differing[a.image_series_index] = differing.get(a.image_series_index, 0) + 1
                worst = max(worst, float(np.max(np.abs(a.data.astype(np.float64) - b.data))))
    print(f"identity (threads {threads or 'as configured'}): serial {serial_s:.1f} s, {n} at once "
          f"{concurrent_s:.1f} s; {len(serial)} images each; bit-identical: {not differing} (largest difference "
          f"{worst:.3g}; differing images by series: {differing or 'none'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--identity", type=int, default=0, metavar="N",
                        help="also compare N concurrent runs of the default chain with a serial one (slow)")
    parser.add_argument("--threads", default=None, help="the stages' threads property for --identity")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "wire_test_gadget.py").write_text(textwrap.dedent(TEST_GADGET))
        folder = tmp / "configs"
        folder.mkdir()
        (folder / "echo.xml").write_text(config_xml(("images", {"scale": "2"})))
        (folder / "hang.xml").write_text(config_xml(("images", {"mode": "hang"})))
        os.environ.setdefault("XDG_CACHE_HOME", str(tmp / "cache"))
        proc, port = start_server(folder, tmp, "--handshake-timeout", "5",
                                  "--max-connections", str(max(2, args.identity)))
        try:
            print(f"mrf serve pid {proc.pid}: {rss_mib(proc.pid):.0f} MB at start")
            exchange(port, scan(encode_config_name("echo.xml")))
            print(f"after one normal scan: {rss_mib(proc.pid):.0f} MB")
            family("oversized claim (536 MB claimed, 1 MiB sent)", proc.pid, port, oversized, args.repeats)
            family("entity bomb (10 levels)", proc.pid, port, entity_bomb, args.repeats)
            slowloris(port)
            text = config_xml(("images", None)).replace('name="wire_test_gadget" target="images"',
                                                        'name="json" target="dumps"')
            print("allow-list:", exchange(port, scan(encode_string(MessageId.CONFIG, text)), shut_write=True)[1][-1])
            departed(proc.pid, port)
            if args.identity:
                identity(port, args.identity, args.threads)
            print(f"mrf serve at the end: {rss_mib(proc.pid):.0f} MB")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
            proc.stdout.close()


if __name__ == "__main__":
    main()
