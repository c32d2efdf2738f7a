"""The default network against dictionary matching: accuracy on noisy signals and speed, in one run.

    python benchmarks/bench_mapping.py [--voxels 65536] [--snr 5 20] [--threads 1] [--cache out/seed_tables]

Voxels: off-grid tissues (log-uniform T1 20-3500 ms, T2/T1 0.02-0.7, T2 in 2-480 ms: the tissues of
bench_matching.py, T2 kept inside both the model's and the grid's range) on the 1000-TR Jiang schedule,
a random complex PD and complex Gaussian noise at each SNR per time point (mean |signal| / sigma).
Dictionary: the Oksuz et al. grid (114,400 atoms, 50 states)
compressed to its own SVD basis at the default network's rank (10), matched exhaustively and with
the exact pruned search; the time-domain exhaustive search is timed on --time-voxels and scaled. The
network time (median of 3 runs) includes the table refinement, PD and match quality. Also measured: the table's
interpolation error against exact EPG at random parameters of the model's range.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch
from seed_tables import cached_dictionary, noisy, timed

from mrf_core.mapping import default_model_path, load_model
from mrf_core.mapping.matching import match
from mrf_core.mapping.module import table_of
from mrf_core.mapping.parameters import ParameterSpace
from mrf_core.physics.dictionary import oksuz_grid
from mrf_core.physics.epg import signal_phase, simulate_fingerprints
from mrf_core.physics.sequence import default_schedule


def tissues(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    t1 = np.exp(rng.uniform(np.log(20), np.log(3500), n))
    t2 = np.clip(t1 * np.exp(rng.uniform(np.log(0.02), np.log(0.7), n)), 2.0, 480.0)
    return t1, t2


def summary(result, t1: np.ndarray, t2: np.ndarray) -> str:
    parts = []
    for est, truth in ((result.t1_ms, t1), (result.t2_ms, t2)):
        rel = np.abs(est / truth - 1)
        parts.append(f"{100 * np.nanmedian(rel):.2f} | {100 * np.nanpercentile(rel, 90):.1f} | "
                     f"{np.sqrt(np.nanmean((est - truth) ** 2)):.1f}")
    return " | ".join(parts)


def table_error(model, n: int = 4000) -> str:
    space = ParameterSpace.from_dict(model.metadata["parameter_space"])
    params = space.sample(n, np.random.default_rng(7))
    fps = simulate_fingerprints(model.schedule, params[:, 0], params[:, 1], n_states=50).numpy()
    exact = model.basis.project_real(fps)
    interpolated, _ = table_of(model.module).lookup(torch.as_tensor(params))
    interpolated = interpolated.numpy()
    rel = np.linalg.norm(interpolated - exact, axis=1) / np.linalg.norm(exact, axis=1)
    pd = (interpolated * exact).sum(1) / (interpolated**2).sum(1)
    return (f"table vs exact EPG at {n} random tissues: coefficient error median {np.median(rel):.1e}, 99 % "
            f"{np.percentile(rel, 99):.1e}, max {rel.max():.1e}; PD error max {np.abs(pd - 1).max():.1e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voxels", type=int, default=65536)
    p.add_argument("--time-voxels", type=int, default=1024)
    p.add_argument("--snr", type=float, nargs="+", default=[5.0, 20.0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", type=Path, default=default_model_path())
    p.add_argument("--cache", type=Path, default=Path("out/seed_tables"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}")
    model = load_model(args.model)
    print(model.describe())
    print(table_error(model))
    schedule = default_schedule()
    model.check(schedule)
    full = cached_dictionary(args.cache / "oksuz_dictionary.h5", schedule, oksuz_grid(), rank=10)
    rank = model.basis.rank
    d = dataclasses.replace(full, basis=full.basis.truncated(rank), compressed=full.compressed[:, :rank])
    rng = np.random.default_rng(2026)
    t1, t2 = tissues(args.voxels, rng)
    start = time.perf_counter()
    fps = simulate_fingerprints(schedule, t1, t2, n_states=50).numpy()
    print(f"{args.voxels} voxels simulated in {time.perf_counter() - start:.0f} s; dictionary {d.n_atoms} atoms, "
          f"rank {rank}")
    print(f"\n| SNR | method | s for {args.voxels} voxels | T1 median % | T1 p90 % | T1 RMSE ms | T2 median % "
          "| T2 p90 % | T2 RMSE ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for snr in args.snr:
        signals, pd = noisy(fps, snr, rng)
        signals *= np.complex64(signal_phase(schedule))  # as measured: pd * signal_phase * fingerprint
        net_coefficients = model.basis.project(signals)
        dict_coefficients = d.basis.project(signals)
        model.map_coefficients(net_coefficients[:256], model.basis)  # warm-up
        runs = [timed(model.map_coefficients, net_coefficients, model.basis) for _ in range(3)]
        net, net_s = runs[0][0], float(np.median([seconds for _, seconds in runs]))  # median of 3 (0.5 s runs)
        exhaustive, ex_s = timed(match, d, dict_coefficients, domain="subspace", search="exhaustive")
        pruned, pr_s = timed(match, d, dict_coefficients, domain="subspace", search="pruned")
        _, td_s = timed(match, d, signals[: args.time_voxels], domain="time", search="exhaustive")
        td_s *= args.voxels / args.time_voxels
        print(f"| {snr:g} | default network | {net_s:.2f} | {summary(net, t1, t2)} |")
        for name, result, seconds in (("subspace exhaustive", exhaustive, ex_s), ("subspace pruned", pruned, pr_s)):
            print(f"| {snr:g} | matching, {name} | {seconds:.1f} ({seconds / net_s:.0f}x slower) "
                  f"| {summary(result, t1, t2)} |")
        print(f"| {snr:g} | matching, time exhaustive | {td_s:.0f} ({td_s / net_s:.0f}x, from {args.time_voxels}) "
              f"| same atoms as subspace up to the rank-{rank} residual | | | | | |")
        print(f"|  | PD median error: network {100 * np.median(np.abs(net.pd / pd - 1)):.2f} %, matching "
              f"{100 * np.median(np.abs(exhaustive.pd / pd - 1)):.2f} %; median score {np.median(net.score):.4f} / "
              f"{np.median(exhaustive.score):.4f} | | | | | | | |")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
