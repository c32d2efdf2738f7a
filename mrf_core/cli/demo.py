"""`mrf demo`: the main job on an embedded default (grows with the project)."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the main job on an embedded default and write its outputs")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.set_defaults(func=run)


def run(args) -> int:
    from mrf_core.epg import simulate_fisp
    from mrf_core.plotting import plot_fingerprints
    from mrf_core.sequence import default_schedule

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    schedule = default_schedule()
    print(schedule.describe())
    tissues = {"white matter": (830, 80), "grey matter": (1330, 110), "CSF": (4000, 2000), "fat": (380, 130)}
    t1, t2 = zip(*tissues.values(), strict=True)
    signals = simulate_fisp(schedule, t1, t2, n_states=100, device="cpu").numpy()
    labels = [f"{name} (T1 {a} ms, T2 {b} ms)" for name, (a, b) in tissues.items()]
    plot_fingerprints(schedule, signals, labels, out / "fingerprints.png")
    print(f"fingerprints of {len(tissues)} tissues plotted to {out / 'fingerprints.png'}")
    return 0
