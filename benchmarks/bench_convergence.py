"""Iterations against accuracy: the LLR reconstruction's settings swept on the NIST plates and a brain slice,
each setting run once with the maps of several iteration counts taken from the same run.

    python benchmarks/bench_convergence.py [--cases default,coils6,coils4] [--snapshots 10,15,20,30]

Scans (simulated once and cached under out/bench_convergence/): both 3 T NIST plates (NiCl2 slice 0,
MnCl2 slice 1; `mrf simulate --phantom nist --field 3`) and one brain slice (`--phantom brain`), the
standard acquisition (256^2 over 300 mm, Jiang 1000 TRs, 1 of 48 interleaves per TR, 16 coils, SNR 40).
Each case is the default chain's reconstruction (mrf_core.pipeline: the model's basis, rank 10) with the
ReconSettings changes of CASES; every snapshot's coefficients go through the default mapping (network with
dictionary fallback) and the object mask, then:
- NIST: phantom QA of each plate (mrf_core.qa.run_qa: spheres found, ROI means, counted spheres): counted
  spheres within 5 %, the worst error, R^2 (the issue's goal: every counted sphere within 5 %);
- brain: NRMSE of T1 and T2 over the phantom's object against its truth.
"s/slice" is the reconstruction's wall time up to that snapshot, averaged over the three slices (all
stages before the iterations included), in this process, 2 threads, on whatever load the machine has:
compare rows of one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

# name -> ReconSettings changes (the default chain's otherwise)
CASES = {
    "default": {},
    "before": {"coil_energy": 1.0, "step_margin": 1.25},  # the defaults before the sweep: 8 virtual coils
    "coils8": {"coil_energy": 1.0},
    "margin1.0": {"step_margin": 1.0},
    "margin0.8": {"step_margin": 0.8},
    "margin0.7": {"step_margin": 0.7},
    "lambda1.0": {"llr_lambda": 1.0},
    "lambda1.4": {"llr_lambda": 1.4},
}


def scan(kind: str, out: Path, snr: float) -> Path:
    """The cached raw file of `kind` ("nist": both 3 T plates, "brain": one slice)."""
    path = out / f"{kind}_snr{snr:g}.h5"
    if not path.is_file():
        phantom = ["--phantom", "nist", "--field", "3"] if kind == "nist" else ["--phantom", "brain"]
        subprocess.run([sys.executable, "-m", "mrf_core", "simulate", *phantom, "--snr", str(snr), "--out", str(path),
                        "--quiet"], cwd=REPO, check=True)
    return path


def gathered_slices(path: Path, settings):
    """(header, reconstruction, slices, truth phantom) of a raw file, gathered once."""
    from mrf_core.io.rawio import MrfRawFile
    from mrf_core.pipeline import Reconstruction, gathered

    with MrfRawFile(path) as raw:
        header = raw.header
        reconstruction = Reconstruction(header, settings)
        slices = list(gathered(raw.acquisitions(), reconstruction.info, settings))
        truth = raw.truth().phantom
    return reconstruction, slices, truth


def snapshots_of(reconstruction, data, changes: dict, counts: list[int]) -> list[tuple[int, float, np.ndarray, object]]:
    """Reconstruct one slice with `changes`; (iterations, seconds so far, masked coefficients, result) per count."""
    from mrf_core.mapping.maps import object_mask
    from mrf_core.recon.reconstruct import reconstruct_slice

    basis, options = reconstruction.basis_for(data.schedule)
    options = dataclasses.replace(options, n_iterations=max(counts), **changes)
    taken, started = {}, time.perf_counter()

    def observe(i, x):
        if i + 1 in counts:
            taken[i + 1] = (time.perf_counter() - started, x.copy())

    result = reconstruct_slice(data, basis, options, observer=observe)
    mask = object_mask(result.time_average, reconstruction.settings.mask_fraction)
    return [(n, seconds, np.where(mask[None], x, 0).astype(np.complex64), result)
            for n, (seconds, x) in sorted(taken.items())]


def mapped(mapping, coefficients, result, data, schedule):
    from mrf_core.io.map_images import ImageGeometry
    from mrf_core.pipeline import SliceCoefficients

    slice_ = SliceCoefficients(data.slice_index, coefficients, result.basis, ImageGeometry((300.0, 300.0, 5.0)),
                               result, data.schedule)
    return mapping(slice_, schedule).maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--snapshots", default="10,15,20,25,30", help="iteration counts to map")
    parser.add_argument("--snr", type=float, default=40.0)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench_convergence")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mrf_core.recon.subspace").setLevel(logging.INFO)
    from bench_qa import counted_summary, plate_results

    from mrf_core.mapping.maps import map_nrmse
    from mrf_core.pipeline import Mapping, set_threads
    from mrf_core.qa.synthetic import write_map_file
    from mrf_core.settings import defaults

    settings = defaults()
    set_threads(settings.threads)
    counts = sorted(int(c) for c in args.snapshots.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    nist_rec, nist_slices, _ = gathered_slices(scan("nist", args.out, args.snr), settings)
    brain_file = scan("brain", args.out, args.snr)
    brain_rec, brain_slices, brain_truth = gathered_slices(brain_file, settings)
    mapping = Mapping(settings)
    print("\n| case | iterations | s/slice | NiCl2 T1 / T2 within 5 % | NiCl2 worst T1 / T2 % | MnCl2 T1 / T2 within "
          "5 % | MnCl2 worst T1 / T2 % | T1 / T2 R^2 (NiCl2) | brain NRMSE T1 / T2 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.cases.split(","):
        changes = CASES[name]
        runs = [(nist_rec, d) for d in nist_slices] + [(brain_rec, d) for d in brain_slices]
        snaps = [snapshots_of(rec, d, changes, counts) for rec, d in runs]
        for position, n in enumerate(counts):
            seconds = np.mean([s[position][1] for s in snaps])
            maps = [mapped(mapping, s[position][2], s[position][3], d, rec.schedule)
                    for s, (rec, d) in zip(snaps, runs, strict=True)]
            path = args.out / f"maps_{name}_{n}.h5"
            path.unlink(missing_ok=True)
            write_map_file(path, [m for m, (rec, _) in zip(maps, runs, strict=True) if rec is nist_rec])
            plates = plate_results(path)
            cells = []
            for plate in plates.values():
                c1, c2 = (counted_summary(plate, q) for q in ("t1_ms", "t2_ms"))
                cells += [f"{c1['within_5pct']}/{c1['counted']}, {c2['within_5pct']}/{c2['counted']}",
                          f"{c1['worst_pct']:+.1f} / {c2['worst_pct']:+.1f}"]
            first = next(iter(plates.values())).evaluation.metrics
            brain = maps[-1]
            mask = brain_truth.mask[0]
            nrmse = [map_nrmse(getattr(brain, q), getattr(brain_truth, q)[0], mask) for q in ("t1_ms", "t2_ms")]
            print(f"| {name} | {n} | {seconds:.1f} | " + " | ".join(cells)
                  + f" | {first['t1_ms'].r2:.4f} / {first['t2_ms'].r2:.4f} | {nrmse[0]:.4f} / {nrmse[1]:.4f} |",
                  flush=True)


if __name__ == "__main__":
    main()
