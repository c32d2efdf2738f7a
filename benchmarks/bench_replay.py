"""Replay of the standard scan through a stream configuration: time per stage and in total, peak memory
per process, start-up cost per gadget process.

    python benchmarks/bench_replay.py [--config mrf_default.xml] [--runs 1] [--matrix 256] [--coils 16]

Standard scan: the NIST T1 plate (3 T), 256 x 256 over 300 mm, the 1000-TR Jiang schedule, one of 48
spiral interleaves per TR, 16 coils, SNR 40; simulated once and cached as out/bench/replay_<...>.h5.
Each run replays it (mrf_gadgetron.host.replay: every <external> its own `python -m gadgetron` process behind
a socket, as Gadgetron runs them) into a temporary map file. Figures:
- per stage: start-up (launch -> connected), items in/out, when its input closed, its first output and
  its CLOSE (s since the chain started), peak resident memory (VmHWM from /proc at its CLOSE);
- first byte to last image: from the first acquisition sent to the last image received (the goal: <= 30 s);
  launch to last image adds the stages' start-up;
- start-up cost per gadget process, measured apart: wall time of `python -c "import gadgetron, <module>"`
  (best of 3), since gadgetron-python connects before it imports the gadget's module;
- whether the gadgets' dictionary cache was cold (the first run on a machine builds the dictionary).
"""

from __future__ import annotations

import argparse
import logging
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 30.0


def standard_scan(matrix: int, coils: int, timepoints: int) -> Path:
    """The cached standard scan (simulated on first use)."""
    from mrf_core.physics.sequence import default_schedule
    from mrf_core.recon.trajectory import SpiralParams
    from mrf_core.sim.phantoms import nist_phantom
    from mrf_core.sim.simulate import ScanSettings, simulate_to_file

    path = REPO / "out" / "bench" / f"replay_nist_t1_{matrix}_{timepoints}tr_{coils}coils.h5"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        report = simulate_to_file(path, nist_phantom(matrix=matrix, fov_mm=300.0),
                                  default_schedule().truncated(timepoints),
                                  SpiralParams(fov_mm=300.0, matrix=matrix), ScanSettings(n_coils=coils, snr=40.0))
        print(report.describe())
    return path


def import_seconds(module: str, repeats: int = 3) -> float:
    """Best wall time of a fresh interpreter importing gadgetron and the gadget module."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import gadgetron, {module}"], cwd=REPO, check=True)
        best = min(best, time.perf_counter() - start)
    return best


class _Lines(logging.Handler):
    """Collects the stages' log lines (the wire layer logs them at INFO)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="mrf_default.xml", help="configuration file or name in config_xml/")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--coils", type=int, default=16)
    parser.add_argument("--timepoints", type=int, default=1000)
    args = parser.parse_args()

    from mrf_gadgetron.host.replay import replay
    from mrf_gadgetron.host.stream_config import find_config

    config = find_config(args.config)
    raw = standard_scan(args.matrix, args.coils, args.timepoints)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"Replay of {raw.name} ({raw.stat().st_size / 2**20:.0f} MiB) through {config.source}; "
          f"load average before: {' '.join(load)} (2-core machine shared with other work)")
    lines = _Lines()
    logging.getLogger("mrf_gadgetron.host").addHandler(lines)
    logging.getLogger("mrf_gadgetron.host").setLevel(logging.INFO)
    for run in range(1, args.runs + 1):
        lines.lines.clear()
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            result = replay(raw, config, Path(folder) / "maps.h5")
            wall = time.perf_counter() - started
        chain = result.chain
        built = [m for m in lines.lines if re.search(r"dictionary built in", m)]
        print(f"\nrun {run}: dictionary cache {'COLD: ' + built[0].split('] ', 1)[-1] if built else 'warm'}")
        print(chain.table())
        first_byte_to_last_image = chain.last_output_s - chain.first_input_s
        print(f"first byte to last image: {first_byte_to_last_image:.1f} s (goal <= {GOAL_S:g} s: "
              f"{'met' if first_byte_to_last_image <= GOAL_S else 'NOT met'}); launch to last image "
              f"{chain.last_output_s:.1f} s; whole replay incl. reading the file, process exits and writing "
              f"{wall:.1f} s (file reading {result.read_s:.1f} s, writing {result.write_s:.2f} s)")
        timing = [m for m in lines.lines if re.search(r"slice \d+ .* in [\d.]+ s|done in|matched", m)]
        for m in timing:
            print(f"  {m}")
    print(f"\nreplay process peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print("\nstart-up cost per gadget process (python -c 'import gadgetron, MODULE', best of 3):")
    for module in dict.fromkeys(node.module for node in config.nodes):
        print(f"  {module:<28} {import_seconds(module):.2f} s")


if __name__ == "__main__":
    main()
