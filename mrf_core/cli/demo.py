"""`mrf demo`: the main job on an embedded default (grows with the project).

Now: the Jiang schedule's fingerprints of five tissues, a 5 % dictionary with its SVD basis, matching of
noisy off-grid fingerprints of those tissues (a table of true and matched values), and a simulated
spiral scan of the NIST T1 plate (ISMRMRD raw data with its truth and a preview). The reconstruction of
that scan through the gadget chain joins when the chain exists.
"""

from __future__ import annotations

from pathlib import Path

TISSUES = {"white matter": (830.0, 80.0), "grey matter": (1330.0, 110.0), "CSF": (3500.0, 1500.0),
           "fat": (380.0, 130.0), "muscle": (1410.0, 50.0)}
DEMO_SNR = 10.0  # per time point: mean |signal| / noise sigma


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the main job on an embedded default and write its outputs")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from mrf_core.dictionary import build_dictionary, percent_grid
    from mrf_core.epg import simulate_fisp
    from mrf_core.matching import match
    from mrf_core.plotting import plot_basis, plot_fingerprints
    from mrf_core.sequence import default_schedule

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    schedule = default_schedule()
    print(schedule.describe())
    t1, t2 = (np.array(v) for v in zip(*TISSUES.values(), strict=True))
    signals = simulate_fisp(schedule, t1, t2, n_states=100, device="cpu").numpy()
    labels = [f"{name} (T1 {a:g} ms, T2 {b:g} ms)" for name, (a, b) in TISSUES.items()]
    plot_fingerprints(schedule, signals, labels, out / "fingerprints.png")

    dictionary = build_dictionary(schedule, percent_grid(5.0), n_states=50, device="cpu")
    dictionary.save(out / "dictionary_5pct.h5")
    plot_basis(dictionary.basis, schedule, out / "basis.png")
    print(dictionary.describe())

    rng = np.random.default_rng(0)
    n_noisy = 200
    noisy = np.repeat(signals, n_noisy, axis=0)
    sigma = np.abs(noisy).mean(axis=1, keepdims=True) / DEMO_SNR / np.sqrt(2)
    noisy = noisy + sigma * (rng.normal(size=noisy.shape) + 1j * rng.normal(size=noisy.shape))
    result = match(dictionary, dictionary.basis.project(noisy).reshape(len(TISSUES), n_noisy, -1), device="cpu")
    print(f"\nMatching {n_noisy} noisy fingerprints per tissue (SNR {DEMO_SNR:g} per time point) in the "
          f"rank-{dictionary.basis.rank} subspace:")
    print(f"{'tissue':>13} {'T1 ms':>7} {'matched T1':>15} {'T2 ms':>7} {'matched T2':>15} {'|PD|':>6}")
    for k, (name, (a, b)) in enumerate(TISSUES.items()):
        m1, m2 = result.t1_ms[k], result.t2_ms[k]
        print(f"{name:>13} {a:7g} {m1.mean():8.0f} +-{m1.std():4.0f} {b:7g} {m2.mean():8.1f} +-{m2.std():4.1f} "
              f"{np.abs(result.pd[k]).mean():6.3f}")

    from mrf_core.cli import main as mrf

    print("\nSimulating a spiral MRF scan of the NIST T1 plate (3 T, 128^2, 8 coils, 1/48 interleaves per TR):")
    status = mrf(["simulate", "--phantom", "nist-t1", "--field", "3", "--matrix", "128", "--coils", "8",
                  "--snr", "40", "--out", str(out / "nist_t1_scan.h5"), "--png", str(out / "nist_t1_scan.png")])
    print(f"\nwritten to {out}/: fingerprints.png, basis.png, dictionary_5pct.h5, nist_t1_scan.h5, nist_t1_scan.png")
    return status
