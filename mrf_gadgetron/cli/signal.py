"""`mrf signal`: simulate and print (or plot) one fingerprint, the physicist's quick look."""

from __future__ import annotations

import json

from mrf_gadgetron.cli import HelpFormatter


def register(sub) -> None:
    p = sub.add_parser(
        "signal",
        help="simulate one fingerprint (EPG) and print or plot it",
        description="Simulate one FISP-MRF fingerprint with the EPG simulator and print it (a summary "
        "table, or JSON) or plot it. The signal is F+0 at TE relative to M0 = 1.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--t1", type=float, required=True, metavar="MS", help="T1 in ms")
    p.add_argument("--t2", type=float, required=True, metavar="MS", help="T2 in ms")
    p.add_argument("--b1", type=float, default=1.0, metavar="X", help="relative B1 (flip angle scale)")
    p.add_argument("--te", type=float, default=None, metavar="MS", help="TE in ms (default: the schedule's)")
    p.add_argument(
        "--ti", type=float, default=None, metavar="MS",
        help="inversion-to-first-pulse time in ms; 0 or more turns the inversion on (default: the schedule's)",
    )
    p.add_argument("--no-inversion", action="store_true", help="simulate without the inversion pulse")
    p.add_argument("--states", type=int, default=None, metavar="N", help="EPG states (default 50)")
    p.add_argument(
        "--schedule", default=None, metavar="FILE",
        help="schedule file (.json or .csv); default: the Jiang 2015 1000-TR FISP schedule",
    )
    p.add_argument("--timepoints", type=int, default=None, metavar="N", help="use only the first N TRs")
    p.add_argument("--json", action="store_true", help="print one JSON object; signal as [real, imag] pairs")
    p.add_argument("--png", default=None, metavar="FILE", help="also plot magnitude and phase to FILE")
    p.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import replace

    import numpy as np

    from mrf_core.physics.epg import DEFAULT_N_STATES, simulate_fisp
    from mrf_core.physics.sequence import load_schedule

    schedule = load_schedule(args.schedule)
    if args.timepoints is not None:
        schedule = schedule.truncated(args.timepoints)
    changes = {}
    if args.te is not None:
        changes["te_ms"] = args.te
    if args.ti is not None:
        changes.update(ti_ms=args.ti, inversion=True)
    if args.no_inversion:
        changes["inversion"] = False
    if changes:
        schedule = replace(schedule, **changes)
    n_states = args.states if args.states is not None else DEFAULT_N_STATES
    signal = simulate_fisp(schedule, [args.t1], [args.t2], [args.b1], n_states=n_states, device="cpu")
    signal = signal[0].numpy()
    if args.png:
        from mrf_core.plotting import plot_fingerprints

        plot_fingerprints(
            schedule, signal[None], [f"T1 {args.t1:g} ms, T2 {args.t2:g} ms, B1 {args.b1:g}"], args.png
        )
    if args.json:
        print(json.dumps({
            "t1_ms": args.t1, "t2_ms": args.t2, "b1": args.b1, "te_ms": schedule.te_ms,
            "inversion": schedule.inversion, "ti_ms": schedule.ti_ms, "n_states": n_states,
            "schedule": schedule.name, "schedule_hash": schedule.hash,
            "n_timepoints": schedule.n_timepoints,
            "signal": [[float(v.real), float(v.imag)] for v in signal],
        }))
        return 0
    mag = np.abs(signal)
    print(schedule.describe())
    print(f"T1 {args.t1:g} ms, T2 {args.t2:g} ms, B1 {args.b1:g}, {n_states} EPG states")
    print(f"|signal|: max {mag.max():.5f} at TR {int(mag.argmax())}, mean {mag.mean():.5f}, "
          f"norm {np.linalg.norm(signal):.5f}")
    step = max(1, schedule.n_timepoints // 20)
    print(f"{'TR':>5} {'flip_deg':>9} {'real':>10} {'imag':>10} {'abs':>9}")
    for i in range(0, schedule.n_timepoints, step):
        v = signal[i]
        print(f"{i:5d} {schedule.flip_angle_deg[i]:9.2f} {v.real:10.5f} {v.imag:10.5f} {abs(v):9.5f}")
    if args.png:
        print(f"plot written to {args.png}")
    return 0
