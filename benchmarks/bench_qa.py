"""Accuracy of the default chain on the NIST phantom, as phantom QA measures it: the per-sphere error table.

    python benchmarks/bench_qa.py [--config mrf_default.xml] [--out-dir out/bench_qa] [--snr 40]
    python benchmarks/bench_qa.py --maps maps.h5        # only the QA of maps made elsewhere

1. `mrf simulate --phantom nist --field 3`: both 3 T array plates (NiCl2 slice 0, MnCl2 slice 1), batch 1,
   the standard scan (256^2 over 300 mm, Jiang 1000 TRs, 1 of 48 spiral interleaves per TR, 16 coils,
   SNR 40, uniform B1, every voxel its own EPG fingerprint).
2. `mrf replay` of the raw file through the stream configuration (default config_xml/mrf_default.xml:
   reconstruct -> map_network -> map_dictionary -> emit), i.e. the gadget chain as Gadgetron runs it.
3. `mrf qa` of each plate (run_qa): spheres found automatically, ROI means, errors against the reference.
Printed: the per-sphere table of both plates, R^2 per plate and quantity over the measurable spheres
(mrf_core.qa.references), the largest |error|, beside the goal (R^2 >= 0.999 T1, >= 0.995 T2, |error|
<= 5 % per sphere) and the published FISP-MRF phantom result (Kato 2019: R^2 0.996 T1, 0.997 T2).
The QA of the simulation's own truth maps is printed first as a check of the measurement (errors 0).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL = {"t1_ms": 0.999, "t2_ms": 0.995}
PUBLISHED = {"t1_ms": 0.996, "t2_ms": 0.997}  # Kato et al., MRMS 2019, FISP-MRF with B1 correction
PLATES = (("t1", 0), ("t2", 1))


def _run(command: list[str], what: str) -> float:
    print(f"$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{what} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")
    elapsed = time.perf_counter() - start
    print(f"  {what}: {elapsed:.0f} s", flush=True)
    return elapsed


def source_state() -> str:
    """The commit measured, and the tracked files that differ from it (other work in the tree)."""
    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], cwd=REPO, capture_output=True, text=True)
        return done.stdout.rstrip("\n") if done.returncode == 0 else "?"

    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    commit = git("rev-parse", "--short", "HEAD").strip()
    return f"commit {commit}" + (f", modified: {', '.join(changed)}" if changed else "")


def truth_map_file(raw: Path, out: Path) -> Path:
    """The simulation's truth as a map file (QA of it must report zero errors)."""
    import numpy as np

    from mrf_core.maps import QuantitativeMaps
    from mrf_core.qa.synthetic import write_map_file
    from mrf_core.rawio import MrfRawFile

    with MrfRawFile(raw) as f:
        phantom = f.truth().phantom
    slices = []
    for s in range(phantom.n_slices):
        inside = phantom.pd[s] > 0
        values = {k: np.where(inside, getattr(phantom, k)[s], np.nan).astype(np.float32)
                  for k in ("t1_ms", "t2_ms", "pd")}
        slices.append(QuantitativeMaps(s, quality=np.where(inside, 1.0, np.nan).astype(np.float32),
                                       mapper="truth", **values))
    write_map_file(out, slices, fov_mm=phantom.fov_mm)
    return out


def qa_table(maps: Path, label: str) -> dict:
    """QA of both plates of a map file: prints the table, returns the figures."""
    from mrf_core.qa.analysis import QASettings, run_qa

    figures = {}
    print(f"\n### {label}: {maps}\n")
    print("| plate | sphere | T1 ref (ms) | T1 meas (ms) | T1 err (%) | T2 ref (ms) | T2 meas (ms) | T2 err (%) |")
    print("|---|---|---|---|---|---|---|---|")
    for array, slice_index in PLATES:
        result = run_qa(maps, array, 3.0, settings=QASettings(slice_index=slice_index))
        name = result.reference.array
        for n in range(1, 15):
            cells = []
            for q in ("t1_ms", "t2_ms"):
                r = result.evaluation.sphere(n, q)
                mark = "" if r.counted else " (nc)"
                cells += [f"{r.reference_ms:.1f}", f"{r.measured_ms:.1f}", f"{r.error_pct:+.2f}{mark}"]
            print(f"| {name} | {n} | " + " | ".join(cells) + " |")
        figures[name] = {
            "layout": result.layout.to_json(), "passed": result.passed, "failures": result.evaluation.failures,
            "metrics": {q: m.to_json() for q, m in result.evaluation.metrics.items()},
            "errors_pct": {q: {r.sphere: r.error_pct for r in result.evaluation.spheres if r.quantity == q}
                           for q in ("t1_ms", "t2_ms")},
            "counted": {q: [r.sphere for r in result.evaluation.spheres if r.quantity == q and r.counted]
                        for q in ("t1_ms", "t2_ms")},
        }
    print("\n(nc): not counted, outside what the sequence can measure (mrf_core/qa/references.py)\n")
    print("| plate | quantity | spheres | R^2 | goal | published | max abs error (%) | worst sphere | <= 5 % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, f in figures.items():
        for q in ("t1_ms", "t2_ms"):
            m = f["metrics"][q]
            counted = {n: f["errors_pct"][q][n] for n in f["counted"][q]}
            worst = max(counted, key=lambda n: abs(counted[n]) if counted[n] == counted[n] else 1e9, default=None)
            within = sum(abs(e) <= 5 for e in counted.values())
            print(f"| {name} | {q[:2].upper()} | {m['n_counted']} | {m['r2']:.5f} | {GOAL[q]} | {PUBLISHED[q]} | "
                  f"{m['max_abs_error_pct']:.2f} | {worst} | {within}/{len(counted)} |")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="mrf_default.xml", help="stream configuration for mrf replay")
    parser.add_argument("--out-dir", default="out/bench_qa", help="folder for the raw file, maps and results")
    parser.add_argument("--snr", type=float, default=40.0)
    parser.add_argument("--b1-field", type=float, default=0.0, help="B1 field amplitude of the simulation")
    parser.add_argument("--raw", default=None, help="reuse this simulated raw file instead of simulating")
    parser.add_argument("--maps", default=None, help="QA only: a map file of the two 3 T plates (slices 0, 1)")
    args = parser.parse_args()
    out = REPO / args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    print(f"code: {source_state()}")
    mrf = [sys.executable, "-m", "mrf_core"]
    timings = {}
    if args.maps:
        maps = Path(args.maps).resolve()
    else:
        raw, maps = (Path(args.raw).resolve() if args.raw else out / "nist3T.h5"), out / "maps.h5"
        if not args.raw:
            timings["simulate_s"] = _run(mrf + ["simulate", "--phantom", "nist", "--field", "3", "--snr",
                                               str(args.snr), "--b1-field", str(args.b1_field), "--out", str(raw)],
                                         "simulate")
        qa_table(truth_map_file(raw, out / "truth_maps.h5"), "QA of the truth maps (must be 0 errors)")
        timings["replay_s"] = _run(mrf + ["replay", str(raw), "-c", args.config, "-o", str(maps), "--quiet"],
                                   f"replay through {args.config}")
    figures = qa_table(maps, f"QA of the maps from {args.config if not args.maps else args.maps}")
    summary = {"code": source_state(), "config": args.config, "snr": args.snr, "b1_field": args.b1_field,
               "timings": timings, "plates": figures}
    (out / "bench_qa.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(f"\nwritten {out / 'bench_qa.json'}")


if __name__ == "__main__":
    main()
