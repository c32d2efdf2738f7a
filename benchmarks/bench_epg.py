"""EPG throughput (atom*TR/s) on the Jiang 1000-TR schedule, and the truncation error by number of states.

    python benchmarks/bench_epg.py [--atoms 16384] [--device cpu]

Anchor: mrpro's EPG, measured on this 2-core machine, runs ~1.6 M atom*TR/s at 20 states and ~0.36 M at 100.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mrf_core.physics.epg import simulate_fisp
from mrf_core.physics.sequence import default_schedule

MRPRO_ATOM_TR_PER_S = {20: 1.6e6, 100: 0.36e6}


def throughput(n_atoms: int, device: str) -> None:
    schedule = default_schedule()
    rng = np.random.default_rng(0)
    t1 = np.exp(rng.uniform(np.log(20), np.log(4000), n_atoms))
    t2 = t1 * rng.uniform(0.02, 0.9, n_atoms)
    print(f"EPG throughput: {schedule.name}, {schedule.n_timepoints} TRs, {n_atoms} atoms, {device}, "
          f"{torch.get_num_threads()} threads, float32 states, complex64 output")
    print(f"{'states':>6} {'B1':>10} {'seconds':>8} {'M atom*TR/s':>12} {'vs mrpro':>9}")
    for n_states in (20, 50, 100):
        for b1_kind, b1 in (("uniform", 1.0), ("per-atom", rng.uniform(0.8, 1.2, n_atoms))):
            simulate_fisp(schedule, t1[:64], t2[:64], 1.0, n_states=n_states, device=device)  # warm-up
            start = time.perf_counter()
            simulate_fisp(schedule, t1, t2, b1, n_states=n_states, device=device)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            rate = n_atoms * schedule.n_timepoints / seconds
            anchor = MRPRO_ATOM_TR_PER_S.get(n_states)
            ratio = f"{rate / anchor:8.1f}x" if anchor else f"{'-':>9}"
            print(f"{n_states:>6} {b1_kind:>10} {seconds:8.2f} {rate / 1e6:12.2f} {ratio}")


def truncation_error(device: str) -> None:
    schedule = default_schedule()
    tissues = [(1000.0, 100.0), (830.0, 80.0), (300.0, 30.0), (1500.0, 500.0), (4000.0, 2000.0)]
    t1, t2 = map(np.array, zip(*tissues, strict=True))
    reference = simulate_fisp(schedule, t1, t2, n_states=400, device=device).cpu().numpy()
    print("\nTruncation error: max |signal - signal(400 states)| over the 1000 TRs (M0 = 1)")
    print(f"{'states':>6} " + " ".join(f"{f'{a:g}/{b:g} ms':>14}" for a, b in tissues))
    for n_states in (10, 20, 50, 100, 200):
        signal = simulate_fisp(schedule, t1, t2, n_states=n_states, device=device).cpu().numpy()
        errors = np.abs(signal - reference).max(axis=1)
        print(f"{n_states:>6} " + " ".join(f"{e:14.1e}" for e in errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atoms", type=int, default=16384)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    throughput(args.atoms, args.device)
    truncation_error(args.device)


if __name__ == "__main__":
    main()
