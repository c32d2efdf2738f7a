"""Dictionary matching speed (voxels/s), peak memory and agreement with the exact best match.

    python benchmarks/bench_matching.py [--voxels 65536] [--snr 20] [--cache out/bench]
    python benchmarks/bench_matching.py --auto [--rounds 2] [--time-voxels 512] [--grids percent5]

Dictionaries: (a) the Oksuz et al. grid (114,400 atoms), (b) a 5 % grid (~12k atoms), both on the Jiang
1000-TR schedule, 50 EPG states, rank-10 basis; built once into --cache. Voxels: off-grid T1/T2 with a
random complex PD and complex Gaussian noise at the stated SNR per time point (mean |signal| / sigma).
Each configuration runs in its own process, so 'peak MB' is that process's peak RSS (VmHWM) (dictionary, data
and matching together). Time-domain exhaustive matching is timed on the first --time-voxels voxels.
Agreement: the fraction of voxels whose match is the exact best atom (float64 argmax over the matcher's
unit atoms); near-duplicate short-T2 atoms differ below float32 precision, which the float32 GEMM of the
exhaustive search cannot resolve and the pruned search's float64 refinement can.

--auto: exhaustive, pruned and auto side by side in both domains, the order alternating between rounds
(so a changing load touches them alike): whether auto took the faster exact search.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mrf_core.mapping.matching import match
from mrf_core.physics.dictionary import Dictionary, build_dictionary, oksuz_grid, percent_grid
from mrf_core.physics.epg import simulate_fisp
from mrf_core.physics.sequence import default_schedule

GRIDS = {"oksuz": oksuz_grid, "percent5": lambda: percent_grid(5.0)}
CONFIGS = [("time", "exhaustive"), ("subspace", "exhaustive"), ("subspace", "pruned")]


def prepare(cache: Path, n_voxels: int, n_time_voxels: int, snr: float, grids=tuple(GRIDS)) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    schedule = default_schedule()
    for name, grid in ((name, GRIDS[name]) for name in grids):
        path = cache / f"{name}.h5"
        if not path.exists():
            d = build_dictionary(schedule, grid(), n_states=50, rank=10, progress=False)
            d.save(path)
            print(f"built {name}: {d.n_atoms} atoms in {d.build_seconds:.1f} s")
    voxels = cache / f"voxels_{n_voxels}_snr{snr:g}_{'_'.join(grids)}.npz"
    if voxels.exists():
        return
    rng = np.random.default_rng(2026)
    t1 = np.exp(rng.uniform(np.log(20), np.log(3500), n_voxels))
    t2 = np.minimum(t1 * np.exp(rng.uniform(np.log(0.02), np.log(0.7), n_voxels)), 480)
    pd = rng.uniform(0.5, 1.5, n_voxels) * np.exp(1j * rng.uniform(-np.pi, np.pi, n_voxels))
    coefficients, time_courses = {}, None
    bases = {name: Dictionary.load(cache / f"{name}.h5", fingerprints=False).basis for name in grids}
    for lo in range(0, n_voxels, 8192):
        s = simulate_fisp(schedule, t1[lo : lo + 8192], t2[lo : lo + 8192], n_states=50).numpy()
        s = s * pd[lo : lo + 8192, None].astype(np.complex64)
        sigma = np.abs(s).mean(axis=1, keepdims=True) / snr / np.sqrt(2)
        s = s + sigma * (rng.normal(size=s.shape) + 1j * rng.normal(size=s.shape)).astype(np.complex64)
        for name, basis in bases.items():
            coefficients.setdefault(name, []).append(basis.project(s))
        if time_courses is None:
            time_courses = s[:n_time_voxels]
    stacked = {f"coef_{name}": np.concatenate(parts) for name, parts in coefficients.items()}
    np.savez(voxels, t1=t1, t2=t2, time=time_courses, **stacked)


def run_one(cache: Path, voxels_file: str, name: str, domain: str, search: str) -> None:
    """Child process: load, match once, print a JSON line; the match indices go to the cache."""
    data = np.load(cache / voxels_file)
    d = Dictionary.load(cache / f"{name}.h5", fingerprints=domain == "time")
    x = data["time"] if domain == "time" else data[f"coef_{name}"]
    match(d, x[:64], domain=domain, search=search)  # warm-up
    start = time.perf_counter()
    result = match(d, x, domain=domain, search=search)
    seconds = time.perf_counter() - start
    np.save(cache / f"result_{name}_{domain}_{search}.npy", result.atom_index)
    t1_err = np.median(np.abs(result.t1_ms / data["t1"][: x.shape[0]] - 1)) * 100
    t2_err = np.median(np.abs(result.t2_ms / data["t2"][: x.shape[0]] - 1)) * 100
    peak_mb = peak_rss_mb()
    print(json.dumps({"voxels": x.shape[0], "seconds": seconds, "peak_mb": peak_mb, "atoms": d.n_atoms,
                      "t1_err": t1_err, "t2_err": t2_err}))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's peak before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def exact_best(d: Dictionary, coefficients: np.ndarray) -> np.ndarray:
    compressed = torch.as_tensor(d.compressed)
    unit = (compressed / torch.linalg.vector_norm(compressed, dim=1, keepdim=True)).double()
    x = torch.as_tensor(coefficients).to(torch.complex128)
    best = [((x[i : i + 1024].real @ unit.T) ** 2 + (x[i : i + 1024].imag @ unit.T) ** 2).argmax(1)
            for i in range(0, x.shape[0], 1024)]
    return torch.cat(best).numpy()


def side_by_side(args: argparse.Namespace, voxels_file: str) -> None:
    """--auto: seconds of each search per grid and domain, alternating order by round; load printed."""
    print(f"\nexhaustive / pruned / auto side by side; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'round':>5} {'dictionary':>10} {'domain':>8} {'voxels':>7} {'exhaustive s':>12} {'pruned s':>9} "
          f"{'auto s':>7} {'auto took':>10}")
    for rnd in range(args.rounds):
        for name in args.grids:
            for domain in ("time", "subspace"):
                searches = ("exhaustive", "pruned", "auto")
                seconds, voxels = {}, 0
                for search in searches if rnd % 2 == 0 else searches[::-1]:
                    out = subprocess.run([sys.executable, __file__, "--cache", str(args.cache), "--run", voxels_file,
                                          name, domain, search], capture_output=True, text=True, check=True)
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    seconds[search], voxels = r["seconds"], r["voxels"]
                took = np.load(args.cache / f"result_{name}_{domain}_auto.npy")
                same = [s for s in ("exhaustive", "pruned")
                        if np.array_equal(took, np.load(args.cache / f"result_{name}_{domain}_{s}.npy"))]
                print(f"{rnd:>5} {name:>10} {domain:>8} {voxels:>7} {seconds['exhaustive']:12.2f} "
                      f"{seconds['pruned']:9.2f} {seconds['auto']:7.2f} {'/'.join(same) or '?':>10}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxels", type=int, default=65536)
    parser.add_argument("--time-voxels", type=int, default=4096)
    parser.add_argument("--snr", type=float, default=20.0)
    parser.add_argument("--cache", type=Path, default=Path("out/bench"))
    parser.add_argument("--grids", nargs="+", choices=tuple(GRIDS), default=list(GRIDS))
    parser.add_argument("--auto", action="store_true", help="exhaustive, pruned and auto side by side")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --auto")
    parser.add_argument("--run", nargs=4, metavar=("VOXELS", "GRID", "DOMAIN", "SEARCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_one(args.cache, *args.run)
        return
    prepare(args.cache, args.voxels, args.time_voxels, args.snr, tuple(args.grids))
    voxels_file = f"voxels_{args.voxels}_snr{args.snr:g}_{'_'.join(args.grids)}.npz"
    if args.auto:
        side_by_side(args, voxels_file)
        return
    coefficients = np.load(args.cache / voxels_file)
    print(f"\nMatching {args.voxels} voxels (time domain: {args.time_voxels}), SNR {args.snr:g} per time point, "
          f"{torch.get_num_threads()} threads, rank-10 subspace")
    print(f"{'dictionary':>10} {'atoms':>7} {'domain':>8} {'search':>10} {'voxels':>7} {'seconds':>8} "
          f"{'voxels/s':>9} {'256^2 s':>8} {'peak MB':>8} {'exact %':>8} {'T1 err%':>7} {'T2 err%':>7}")
    for name in args.grids:
        d = Dictionary.load(args.cache / f"{name}.h5", fingerprints=False)
        reference = exact_best(d, coefficients[f"coef_{name}"])
        for domain, search in CONFIGS:
            out = subprocess.run([sys.executable, __file__, "--cache", str(args.cache), "--run", voxels_file, name,
                                  domain, search], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            found = np.load(args.cache / f"result_{name}_{domain}_{search}.npy")
            exact = "-" if domain == "time" else f"{100 * np.mean(found == reference[: found.size]):8.3f}"
            rate = r["voxels"] / r["seconds"]
            print(f"{name:>10} {r['atoms']:>7} {domain:>8} {search:>10} {r['voxels']:>7} {r['seconds']:8.2f} "
                  f"{rate:9.0f} {65536 / rate:8.2f} {r['peak_mb']:8.0f} {exact:>8} {r['t1_err']:7.2f} "
                  f"{r['t2_err']:7.2f}", flush=True)


if __name__ == "__main__":
    main()
