"""EPG throughput (atom*TR/s) side by side, the 5 % dictionary's build time, and the truncation error.

    python benchmarks/bench_epg.py [--atoms 4096] [--threads 2] [--rounds 2] [--mrpro-python PATH]

Throughput on the Jiang 1000-TR schedule (inversion, FISP), at 20 and 100 states, per-atom T1/T2, B1 = 1:
this package's numba kernel (the CPU default), its torch path (the GPU path, run here on the CPU) and,
with --mrpro-python, mrpro's EPG (FispBlock after an InversionBlock, complex64) run by the python of a
separate virtual environment that has mrpro (torch pinned to the same CPU build):

    python3 -m venv /work/venv-mrpro
    /work/venv-mrpro/bin/pip install torch==2.13.0
    /work/venv-mrpro/bin/pip install mrpro -c <(echo torch==2.13.0)

(measured with mrpro 0.261015; pip also installs torchvision, whose PyPI wheel does not load beside the
CPU torch: the mrpro child puts a placeholder module in its place, which mrpro's EPG never uses).

Every measurement is its own process with OMP_NUM_THREADS = --threads, once with the default OpenMP wait
policy and once with OMP_WAIT_POLICY=PASSIVE, and the rounds alternate the engines, so a load that changes
during the run touches all of them alike: compare ratios within a round. Each process warms up (compiles)
on 64 atoms first. The dictionary rows time build_dictionary for the 5 % grid (12,181 atoms, 50 states):
the EPG and the whole build (EPG, Gram matrix, eigenvectors, compression).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ENGINES = ("numba", "torch", "mrpro")
POLICIES = {"default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


def tissues(n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    t1 = np.exp(rng.uniform(np.log(20), np.log(4000), n_atoms))
    return t1, t1 * rng.uniform(0.02, 0.9, n_atoms)


def child_project(engine: str, n_atoms: int, n_states: int) -> float:
    """Seconds for n_atoms with this package's `engine` (numba or torch) on the CPU."""
    from mrf_core.physics.epg import simulate_fingerprints
    from mrf_core.physics.sequence import default_schedule

    schedule = default_schedule()
    t1, t2 = tissues(n_atoms)
    simulate_fingerprints(schedule, t1[:64], t2[:64], n_states=n_states, device="cpu", backend=engine)
    start = time.perf_counter()
    simulate_fingerprints(schedule, t1, t2, n_states=n_states, device="cpu", backend=engine)
    return time.perf_counter() - start


def child_mrpro(schedule_file: str, n_atoms: int, n_states: int) -> float:
    """Seconds for n_atoms with mrpro's EPG (imports only numpy, torch and mrpro)."""
    import sys as _sys
    import types

    import torch

    # mrpro imports torchvision for its BrainWeb phantom only; PyPI's torchvision wheel is built for the CUDA
    # torch and does not load beside the CPU build, so a placeholder stands in for it (the EPG never uses it)
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        _sys.modules.setdefault(name, types.ModuleType(name))
    from mrpro.operators.models.EPG import EPGSequence, FispBlock, InversionBlock, Parameters, initial_state

    s = np.load(schedule_file)
    t1, t2 = tissues(n_atoms)
    flips = torch.as_tensor(np.deg2rad(s["flip_deg"]), dtype=torch.float32)
    trs = torch.as_tensor(s["tr_ms"] / 1000, dtype=torch.float32)
    sequence = EPGSequence([InversionBlock(float(s["ti_ms"]) / 1000),
                            FispBlock(flips, 0.0, float(s["te_ms"]) / 1000, trs)])

    def run(n: int) -> None:
        params = Parameters(m0=torch.ones(n, dtype=torch.complex64), t1=torch.as_tensor(t1[:n] / 1000).float(),
                            t2=torch.as_tensor(t2[:n] / 1000).float(), relative_b1=torch.ones(n))
        with torch.no_grad():
            torch.stack(sequence(params, initial_state((n,), n_states=n_states))[1], dim=-1)

    run(64)
    start = time.perf_counter()
    run(n_atoms)
    return time.perf_counter() - start


def child_dictionary() -> dict:
    """Seconds for the 5 % dictionary: the EPG alone, then the whole build."""
    from mrf_core.physics.dictionary import build_dictionary, percent_grid
    from mrf_core.physics.epg import simulate_fingerprints
    from mrf_core.physics.sequence import default_schedule

    schedule, grid = default_schedule(), percent_grid(5.0)
    t1, t2, b1, _ = grid.atoms()
    simulate_fingerprints(schedule, t1[:64], t2[:64], b1[:64], n_states=50, device="cpu")
    start = time.perf_counter()
    simulate_fingerprints(schedule, t1, t2, b1, n_states=50, device="cpu")
    epg = time.perf_counter() - start
    start = time.perf_counter()
    d = build_dictionary(schedule, grid, n_states=50, rank=10, device="cpu", progress=False)
    return {"atoms": d.n_atoms, "epg": epg, "build": time.perf_counter() - start}


def spawn(python: str, args: list[str], threads: int, policy: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **POLICIES[policy]}
    if policy == "default":
        env.pop("OMP_WAIT_POLICY", None)
    done = subprocess.run([python, str(Path(__file__).resolve()), *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def throughput(args: argparse.Namespace) -> None:
    from mrf_core.physics.sequence import default_schedule

    schedule = default_schedule()
    engines = [e for e in ENGINES if e != "mrpro" or args.mrpro_python]
    with tempfile.TemporaryDirectory() as tmp:
        schedule_file = str(Path(tmp) / "schedule.npz")
        np.savez(schedule_file, flip_deg=schedule.flip_angle_deg, tr_ms=schedule.tr_ms, te_ms=schedule.te_ms,
                 ti_ms=schedule.ti_ms)
        print(f"EPG: {schedule.name}, {schedule.n_timepoints} TRs, {args.atoms} atoms, {args.threads} threads, "
              f"one process per cell; load before: {os.getloadavg()[0]:.2f}")
        print(f"{'round':>5} {'OpenMP wait':>11} {'states':>6} " + " ".join(f"{e + ' s':>9}" for e in engines)
              + " " + " ".join(f"{'numba/' + e:>12}" for e in engines if e != "numba") + f" {'M atom*TR/s':>12}")
        for rnd in range(args.rounds):
            for policy in POLICIES:
                for n_states in args.states:
                    seconds = {}
                    for engine in engines if rnd % 2 == 0 else engines[::-1]:
                        if engine == "mrpro":
                            cell = ["--child-mrpro", schedule_file]
                            python = args.mrpro_python
                        else:
                            cell, python = ["--child", engine], sys.executable
                        seconds[engine] = spawn(python, [*cell, str(args.atoms), str(n_states)], args.threads,
                                                policy)["seconds"]
                    rate = args.atoms * schedule.n_timepoints / seconds["numba"] / 1e6
                    print(f"{rnd:>5} {policy:>11} {n_states:>6} " + " ".join(f"{seconds[e]:9.2f}" for e in engines)
                          + " " + " ".join(f"{seconds[e] / seconds['numba']:11.1f}x" for e in engines if e != "numba")
                          + f" {rate:12.1f}", flush=True)
        print(f"load after: {os.getloadavg()[0]:.2f}")
    print(f"\n5 % dictionary, 50 states, {args.threads} threads")
    print(f"{'OpenMP wait':>11} {'atoms':>6} {'EPG s':>6} {'build s':>8}")
    for policy in POLICIES:
        r = spawn(sys.executable, ["--child-dictionary"], args.threads, policy)
        print(f"{policy:>11} {r['atoms']:>6} {r['epg']:6.2f} {r['build']:8.2f}", flush=True)


def truncation_error() -> None:
    from mrf_core.physics.epg import simulate_fisp
    from mrf_core.physics.sequence import default_schedule

    schedule = default_schedule()
    tissues_ = [(1000.0, 100.0), (830.0, 80.0), (300.0, 30.0), (1500.0, 500.0), (4000.0, 2000.0)]
    t1, t2 = map(np.array, zip(*tissues_, strict=True))
    reference = simulate_fisp(schedule, t1, t2, n_states=400, device="cpu").numpy()
    print("\nTruncation error: max |signal - signal(400 states)| over the 1000 TRs (M0 = 1)")
    print(f"{'states':>6} " + " ".join(f"{f'{a:g}/{b:g} ms':>14}" for a, b in tissues_))
    for n_states in (10, 20, 50, 100, 200):
        signal = simulate_fisp(schedule, t1, t2, n_states=n_states, device="cpu").numpy()
        errors = np.abs(signal - reference).max(axis=1)
        print(f"{n_states:>6} " + " ".join(f"{e:14.1e}" for e in errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atoms", type=int, default=4096)
    parser.add_argument("--states", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mrpro-python", help="python of a virtual environment with mrpro (optional)")
    parser.add_argument("--no-truncation", action="store_true", help="skip the truncation-error table")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--child-mrpro", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--child-dictionary", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"seconds": child_project(args.child[0], int(args.child[1]), int(args.child[2]))}))
    elif args.child_mrpro:
        print(json.dumps({"seconds": child_mrpro(args.child_mrpro[0], int(args.child_mrpro[1]),
                                                 int(args.child_mrpro[2]))}))
    elif args.child_dictionary:
        print(json.dumps(child_dictionary()))
    else:
        throughput(args)
        if not args.no_truncation:
            truncation_error()


if __name__ == "__main__":
    main()
