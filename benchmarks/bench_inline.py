"""Scanner-paced latency: a scan streamed to `mrf serve` at the schedule's own TR timing, and the time from
its last readout to each image.

    python benchmarks/bench_inline.py [--slices 3] [--raw FILE --qa] [--pace 1.0]
    python benchmarks/bench_inline.py --fast          # smoke run: 64^2, 100 TRs, 4 coils, 10 % dictionary

Scan: the standard scan of bench_replay.py (NIST T1 plate, 256^2 over 300 mm, Jiang 1000 TRs, 1 of 48
spiral interleaves per TR, 16 coils), or --raw (e.g. bench_qa.py's two 3 T plates, out/bench_qa/nist3T.h5).
With --slices N every slice of the file is sent N times as slices acquired one after another (slice index
k, the header's slice limit raised), so slice k is reconstructed while slice k+1 streams. Noise scans go
first; imaging readout k of a slice leaves at the sum of the first k+1 TRs (x --pace; 0: as fast as the
socket allows), the slices back to back. A real `mrf serve` runs the default configuration (one process
per stage, as Gadgetron runs them).

Printed: the last readout's time, every image's arrival (s since the first readout) and its delay after
the last readout of its slice and of the scan, the stage log lines with per-step timings (mrf serve's
INFO log), and the load average. --qa: the NIST per-sphere table of the maps received (bench_qa.py; the
raw file must hold the two 3 T plates as slices 0 and 1).
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

import ismrmrd  # noqa: E402

from mrf_gadgetron.host.messages import (  # noqa: E402
    MessageId,
    MessageReader,
    encode_config_name,
    encode_header,
    encode_id,
    encode_item,
    encode_string,
)


def fast_scan():
    """A small simulated NIST scan (header, acquisitions) for a smoke run, and the config properties."""
    from mrf_core.physics.sequence import default_schedule
    from mrf_core.recon.trajectory import SpiralParams
    from mrf_core.sim.phantoms import nist_phantom
    from mrf_core.sim.simulate import ScanSettings, SimulatedScan

    sim = SimulatedScan(nist_phantom(matrix=64, fov_mm=300.0), default_schedule().truncated(100),
                        SpiralParams(fov_mm=300.0, matrix=64, n_interleaves=8, centre_interleaves=4),
                        ScanSettings(n_coils=4, snr=40.0))
    return sim.header, list(sim.acquisitions()), {"grid_step_pct": "10"}


def file_scan(path: Path):
    from mrf_gadgetron.host.replay import RawSource

    source = RawSource(path)
    try:
        return source.header, list(source.acquisitions()), {}
    finally:
        source.close()


def paced_items(header, acquisitions, n_copies: int, pace: float):
    """(header, [(send time s, acquisition)]): noise first at 0, then the imaging readouts at TR timing."""
    from mrf_core.physics.sequence import FispSchedule

    schedule = FispSchedule.from_ismrmrd(header)
    noise = [a for a in acquisitions if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    imaging = [a for a in acquisitions if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    n_slices = max(a.idx.slice for a in imaging) + 1
    header = copy.deepcopy(header)
    limits = header.encoding[0].encodingLimits
    if limits.slice is not None:
        limits.slice.maximum = n_slices * n_copies - 1
    items, clock, tr_s = [(0.0, a) for a in noise], 0.0, schedule.tr_ms / 1000 * pace
    for copy_index in range(n_copies):
        for source_slice in range(n_slices):
            for k, acq in enumerate(a for a in imaging if a.idx.slice == source_slice):
                clock += tr_s[k % tr_s.size]
                if copy_index:
                    acq = copy.deepcopy(acq)
                    acq.idx.slice = source_slice + copy_index * n_slices
                items.append((clock, acq))
    return header, items


class Receiver(threading.Thread):
    """Reads the server's answer until CLOSE: each image with its arrival time (perf_counter)."""

    def __init__(self, sock: socket.socket):
        super().__init__(daemon=True)
        self.reader = MessageReader(sock, "server")
        self.images: list[tuple[float, ismrmrd.Image]] = []
        self.texts: list[str] = []

    def run(self) -> None:
        while (mid := self.reader.read_id()) != MessageId.CLOSE:
            if mid == MessageId.TEXT:
                self.texts.append(self.reader.read_string(10**6, "text"))
            else:
                self.images.append((time.perf_counter(), self.reader.read_item(mid)))


def start_server(log_path: Path) -> tuple[subprocess.Popen, int]:
    """`mrf serve` on a free port (2 connections: a warm-up scan's may not be released yet when the next comes)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mrf_gadgetron", "serve", "--port", "0", "--max-connections",
                                 "2", "--client-timeout", "600"], stdout=subprocess.PIPE, stderr=log, text=True,
                                cwd=REPO)
    line = proc.stdout.readline()
    return proc, int(re.search(r":(\d+);", line)[1])


def stream(port: int, config: bytes, header, items) -> tuple[float, dict[int, float], Receiver]:
    """Send at the items' times; returns (t0, last readout time per slice, the receiver)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=900)
    receiver = Receiver(sock)
    receiver.start()
    sock.sendall(config + encode_header(header))
    t0 = time.perf_counter()
    last: dict[int, float] = {}
    for at, acq in items:
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sock.sendall(encode_item(acq))
        if not acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            last[acq.idx.slice] = time.perf_counter() - t0
    sock.sendall(encode_id(MessageId.CLOSE))
    receiver.join()
    sock.close()
    return t0, last, receiver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=1, help="send the file's slices this many times")
    parser.add_argument("--raw", type=Path, default=None, help="raw file to stream (default: the standard scan)")
    parser.add_argument("--pace", type=float, default=1.0, help="x the schedule's TRs (0: as fast as possible)")
    parser.add_argument("--qa", action="store_true", help="NIST per-sphere QA of the maps (two 3 T plates)")
    parser.add_argument("--fast", "--small", action="store_true", help="small simulated scan (smoke run)")
    args = parser.parse_args()

    from chain_helpers import default_config_text

    if args.fast:
        header, acquisitions, properties = fast_scan()
    else:
        from bench_replay import standard_scan

        header, acquisitions, properties = file_scan(args.raw or standard_scan(256, 16, 1000))
    header, items = paced_items(header, acquisitions, args.slices, args.pace)
    config = (encode_string(MessageId.CONFIG, default_config_text(**properties)) if properties
              else encode_config_name("mrf_default.xml"))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (2-core machine)")
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "serve.log"
        proc, port = start_server(log_path)
        try:
            if args.fast:  # the dictionary cache is built on the first scan: take it out of the timing
                stream(port, config, header, [(0.0, a) for _, a in items])
            skip = len(log_path.read_text().splitlines())
            t0, last, receiver = stream(port, config, header, items)
        except OSError:
            sys.exit(f"the server dropped the connection; its log:\n{log_path.read_text()[-4000:]}")
        finally:
            proc.terminate()
            proc.wait(30)
            proc.stdout.close()
        log_lines = log_path.read_text().splitlines()[skip:]
        errors = [t for t in receiver.texts if t.startswith("ERROR")]
        scan_end = max(last.values())
        print(f"{len(items)} acquisitions, {len(last)} slice(s), pace x{args.pace:g}: last readout at {scan_end:.2f} s")
        print(f"{'arrival s':>9} {'series':>6} {'slice':>5} {'after its slice s':>17} {'after the scan s':>16}")
        for at, image in receiver.images:
            s = image.slice
            arrival = at - t0
            print(f"{arrival:9.2f} {image.image_series_index:>6} {s:>5} {arrival - last.get(s, scan_end):17.2f} "
                  f"{arrival - scan_end:16.2f}")
        if receiver.images:
            print(f"last image {receiver.images[-1][0] - t0 - scan_end:.2f} s after the last readout")
        for line in log_lines:
            if re.search(r"slice \d+ \(|slice \d+: \w+ mapping|dictionary built|matched|mapped|in [\d.]+ s", line):
                print(f"  {line[:240]}")
        if errors:
            print("ERRORS:", *errors, sep="\n  ")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if args.qa:
            from bench_qa import qa_table

            from mrf_core.io.map_images import write_images

            maps = Path(tmp) / "maps.h5"
            write_images(maps, [image for _, image in receiver.images], None)
            qa_table(maps, "QA of the scanner-paced maps")


if __name__ == "__main__":
    main()
