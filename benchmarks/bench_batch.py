"""`mrf batch` against a serial `mrf replay` loop, and on two "nodes" with one of them killed mid-run.

    python benchmarks/bench_batch.py [--scans 16] [--matrix 128] [--timepoints 1000] [--coils 8]
    python benchmarks/bench_batch.py --scans 4 --matrix 64        # a quick check

Scans: NIST T1 plates (3 T) and one-slice brains alternately, the Jiang schedule, 8 coils, SNR 40, seed =
scan number (cached in out/bench/batch_<...>/raw). Configuration: mrf_default.xml with basis = model (a
site re-reconstructing an archive with its model), so a scan of another schedule fails with the reason.
1. wall time of `mrf replay` per scan in a loop (each its own command), of `mrf batch --workers 1` and of
   `mrf batch` with its default LocalCluster, all over the same folder (no figures, no QA: the same work as
   the replay); every batch output compared with the replay's, map by map, for equality.
2. two "nodes": `dask scheduler` and two `dask worker` processes started apart, `mrf batch MANIFEST
   --scheduler ...` with figures, QA of the NIST scans into a trend store, a corrupt file and a file of
   another schedule; the worker that runs a scan first is killed (SIGKILL to its process group) once a scan
   is done. Checked: every good scan done and equal to its replay, the killed worker's scans finished on the
   other, the two bad files failed with their errors, the trend store holding each NIST scan once.
Measured on a shared machine: the ratios of one run are what carries over, not the seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def simulate(folder: Path, n: int, matrix: int, timepoints: int, coils: int) -> tuple[list[Path], list[Path]]:
    """The good scans (cached) and the two bad ones: a corrupt file, and a NIST scan of 200 fewer TRs."""
    from mrf_core.physics.sequence import default_schedule
    from mrf_core.recon.trajectory import SpiralParams
    from mrf_core.sim.phantoms import brain_phantom, nist_phantom
    from mrf_core.sim.simulate import ScanSettings, simulate_to_file

    folder.mkdir(parents=True, exist_ok=True)
    fov_nist = min(300.0, 2.9 * matrix)  # QA needs pixels of 3 mm or less
    good = []
    for i in range(n + 1):
        nist = i % 2 == 0
        name = f"foreign_{i:02d}" if i == n else f"{'nist' if nist else 'brain'}_{i:02d}"
        path = folder / f"{name}.h5"
        fov = fov_nist if nist else 240.0
        if not path.is_file():
            phantom = nist_phantom(matrix=matrix, fov_mm=fov) if nist else brain_phantom(matrix=matrix, fov_mm=fov,
                                                                                      seed=i)
            schedule = default_schedule().truncated(timepoints - (200 if i == n else 0))
            simulate_to_file(path, phantom, schedule, SpiralParams(fov_mm=fov, matrix=matrix),
                             ScanSettings(n_coils=coils, snr=40.0, seed=i))
        good.append(path)
    foreign = good.pop()
    corrupt = folder.parent / "bad" / "corrupt.h5"
    corrupt.parent.mkdir(exist_ok=True)
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + np.random.default_rng(0).bytes(4096))
    foreign_path = corrupt.parent / foreign.name
    foreign.replace(foreign_path)
    return good, [corrupt, foreign_path]


def model_config(path: Path) -> Path:
    """mrf_default.xml with basis = model."""
    from mrf_gadgetron.host.stream_config import default_config_dir

    tree = ET.parse(default_config_dir() / "mrf_default.xml")
    tree.getroot().find(".//property[@name='basis']").set("value", "model")
    tree.write(path)
    return path


def mrf(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mrf_gadgetron", *args], cwd=REPO, check=False, text=True,
                          capture_output=True, **kwargs)


def maps_of(path: Path) -> dict[str, np.ndarray]:
    """Every image series' data in a map file (one group)."""
    with h5py.File(path, "r") as f:
        (group,) = list(f)
        return {name: f[group][name]["data"][()] for name in f[group]}


def same(a: Path, b: Path) -> bool:
    x, y = maps_of(a), maps_of(b)
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k], equal_nan=True) for k in x)


def timed(label: str, fn) -> float:
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    print(f"  {label}: {wall:.1f} s", flush=True)
    return wall


def rows_of(folder: Path) -> dict[str, dict]:
    with open(folder / "summary.csv", newline="") as f:
        return {r["scan"]: r for r in csv.DictReader(f)}


def compare_modes(raws: list[Path], config: Path, work: Path) -> dict[str, Path]:
    """Table 1: serial replay, batch on 1 worker, batch on the default LocalCluster."""
    from mrf_gadgetron.batch import default_workers

    serial = work / "serial"
    serial.mkdir()

    def replay_loop() -> None:
        for raw in raws:
            run = mrf("replay", str(raw), "-c", str(config), "-o", str(serial / f"{raw.stem}_maps.h5"), "--quiet")
            if run.returncode:
                raise SystemExit(f"replay of {raw.name} failed: {run.stderr}")

    def batch(folder: Path, *extra: str):
        def go() -> None:
            run = mrf("batch", str(raws[0].parent), "-c", str(config), "-o", str(folder), "--no-figures", "--quiet",
                      *extra)
            if run.returncode:
                raise SystemExit(f"batch failed: {run.stdout}{run.stderr}")
        return go

    cores = len(os.sched_getaffinity(0))
    n_default = default_workers(str(config))
    print(f"{len(raws)} scans; {cores} cores; default LocalCluster: {n_default} workers x 1 thread (stage threads 2)")
    walls = {"serial mrf replay loop": (timed("serial replay", replay_loop), "-", serial),
             "mrf batch --workers 1": (timed("batch, 1 worker", batch(work / "one", "--workers", "1")), "1 x 1",
                                       work / "one"),
             "mrf batch (default)": (timed("batch, default", batch(work / "default")), f"{n_default} x 1",
                                     work / "default")}
    serial_s = walls["serial mrf replay loop"][0]
    print("\n| mode | workers x threads | wall s | s per scan | vs serial | outputs = serial replay |")
    print("|---|---|---|---|---|---|")
    for mode, (wall, shape, folder) in walls.items():
        equal = "-" if folder == serial else \
            f"{sum(same(serial / f'{r.stem}_maps.h5', folder / f'{r.stem}_maps.h5') for r in raws)}/{len(raws)}"
        print(f"| {mode} | {shape} | {wall:.1f} | {wall / len(raws):.1f} | {serial_s / wall:.2f}x | {equal} |")
    return {r.stem: serial / f"{r.stem}_maps.h5" for r in raws}


def start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:  # the child holds its own copy of the descriptor
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)


def two_nodes(raws: list[Path], bad: list[Path], config: Path, work: Path, serial: dict[str, Path]) -> None:
    """Table 2: a scheduler and two workers started apart; one killed mid-run."""
    from distributed import Client

    from mrf_core.qa.trends import TrendStore

    dask = str(Path(sys.executable).with_name("dask"))
    scheduler_file = work / "scheduler.json"
    procs = [start([dask, "scheduler", "--scheduler-file", str(scheduler_file), "--port", "0",
                    "--dashboard-address", ":0"], work / "scheduler.log")]
    try:
        while not scheduler_file.is_file():
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        workers = [start([dask, "worker", address, "--nthreads", "1", "--nworkers", "1", "--memory-limit", "4GiB",
                          "--name", f"node{k}"], work / f"node{k}.log") for k in (1, 2)]
        procs += workers
        manifest = work / "scans.csv"
        with open(manifest, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["raw", "config", "out", "qa_array", "qa_field", "qa_store"])
            for raw in [*raws, *bad]:
                nist = raw.stem.startswith("nist")
                writer.writerow([raw, config, work / "two" / f"{raw.stem}_maps.h5", "t1" if nist else "",
                                 3 if nist else "", work / "trend.db" if nist else ""])
        with Client(address) as watcher:
            while len(watcher.scheduler_info()["workers"]) < 2:
                time.sleep(0.2)
            names = {a: w["name"] for a, w in watcher.scheduler_info()["workers"].items()}
            batch = start([sys.executable, "-m", "mrf_gadgetron", "batch", str(manifest), "-o", str(work / "two"),
                           "--scheduler", address], work / "batch.log")
            started = time.perf_counter()
            lines = work / "two" / "summary.jsonl"
            while not (lines.is_file() and any(json.loads(x)["status"] == "done" for x in lines.read_text().split(
                    "\n") if x)):
                time.sleep(0.5)
            processing = watcher.processing()
            victim_address = next(a for a, keys in processing.items() if keys)
            victim_scans = [k.split("-", 3)[3].rsplit("-", 1)[0] for k in processing[victim_address]]
            victim = workers[int(names[victim_address][-1]) - 1]
            os.killpg(victim.pid, signal.SIGKILL)
            killed_at = time.perf_counter() - started
            batch.wait()
            wall = time.perf_counter() - started
        rows = rows_of(work / "two")
        with TrendStore(work / "trend.db") as store:
            stored = [json.loads(store.conn.execute("SELECT results_json FROM scans WHERE id = ?", (s["id"],))
                                 .fetchone()[0])["source"]["path"] for s in store.scans()]
        done = [r for r in rows.values() if r["status"] == "done"]
        nist = [r.stem for r in raws if r.stem.startswith("nist")]
        print(f"\ntwo nodes ({address}): wall {wall:.1f} s; {names[victim_address]} killed at {killed_at:.1f} s "
              f"while it held (running or queued) {', '.join(victim_scans) or 'nothing'}")
        print("| check | result |\n|---|---|")
        print(f"| good scans done | {len(done)}/{len(raws)} |")
        equal = sum(same(serial[n], Path(rows[n]["out"])) for n in serial)
        print(f"| outputs = serial replay | {equal}/{len(serial)} |")
        moved = ", ".join(f"{s}: {rows[s]['status']} on {rows[s]['worker']}" for s in victim_scans)
        print(f"| killed worker's scans finished elsewhere | {moved or '-'} |")
        print(f"| workers used | {sorted({r['worker'] for r in done})} |")
        print(f"| trend store rows | {len(stored)} ({len(set(stored))} distinct; {len(nist)} NIST scans) |")
        print(f"| QA verdicts | {sorted(r['qa_passed'] for r in done if r['qa_passed'])} |")
        for path in bad:
            print(f"| {path.name} | {rows[path.stem]['status']}: {rows[path.stem]['error'][:160]} |")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=16)
    parser.add_argument("--matrix", type=int, default=128)
    parser.add_argument("--timepoints", type=int, default=1000)
    parser.add_argument("--coils", type=int, default=8)
    parser.add_argument("--skip-nodes", action="store_true", help="table 1 only")
    args = parser.parse_args()
    cache = REPO / "out" / "bench" / f"batch_{args.scans}x{args.matrix}_{args.timepoints}tr_{args.coils}coils"
    raws, bad = simulate(cache / "raw", args.scans, args.matrix, args.timepoints, args.coils)
    with tempfile.TemporaryDirectory(prefix="bench_batch.") as tmp:
        work = Path(tmp)
        config = model_config(work / "mrf_model.xml")
        serial = compare_modes(raws, config, work)
        if not args.skip_nodes:
            two_nodes(raws, bad, config, work, serial)


if __name__ == "__main__":
    main()
