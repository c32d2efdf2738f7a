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

    python benchmarks/bench_qa.py --sweep [--raw FILE]   # reconstruction settings vs the per-sphere goal

--sweep: `mrf reconstruct` of the same raw file at each (rank, LLR lambda, iterations) of SWEEP, mapped by
the dictionary (the one mapper that takes any rank; 5 % grid, so ~1-2 % of quantisation in every
figure), and per plate the counted spheres within 5 %, the largest |error| and where, the R^2, and the
reconstruction time per slice: how the defaults of mrf_core.recon.reconstruct were chosen.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL = {"t1_ms": 0.999, "t2_ms": 0.995}
PUBLISHED = {"t1_ms": 0.996, "t2_ms": 0.997}  # Kato et al., MRMS 2019, FISP-MRF with B1 correction
PLATES = (("t1", 0), ("t2", 1))
# (rank, LLR lambda, iterations): the former default, then rank and iterations raised in turn
SWEEP = ((5, 0.4, 10), (5, 1.2, 30), (10, 0.4, 10), (10, 1.2, 10), (10, 1.2, 20), (10, 0.8, 30), (10, 1.2, 30),
         (10, 1.2, 40))


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

    from mrf_core.io.rawio import MrfRawFile
    from mrf_core.mapping.maps import QuantitativeMaps
    from mrf_core.qa.synthetic import write_map_file

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


def counted_summary(result, quantity: str) -> dict:
    """Over the counted spheres of one quantity: how many, how many within 5 %, the worst (a NaN error,
    an unmapped ROI, counts as the worst)."""
    errors = {r.sphere: r.error_pct for r in result.evaluation.spheres if r.quantity == quantity and r.counted}
    worst = max(errors, key=lambda n: abs(errors[n]) if errors[n] == errors[n] else math.inf, default=None)
    return {"counted": len(errors), "within_5pct": sum(abs(e) <= 5 for e in errors.values()),
            "worst_sphere": worst, "worst_pct": errors.get(worst, math.nan)}


def qa_table(maps: Path, label: str) -> dict:
    """QA of both plates of a map file: prints the table, returns the figures."""
    figures = {}
    print(f"\n### {label}: {maps}\n")
    print("| plate | sphere | T1 ref (ms) | T1 meas (ms) | T1 err (%) | T2 ref (ms) | T2 meas (ms) | T2 err (%) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, result in plate_results(maps).items():
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
            "summary": {q: counted_summary(result, q) for q in ("t1_ms", "t2_ms")},
        }
    print("\n(nc): not counted, outside what the sequence can measure (mrf_core/qa/references.py)\n")
    print("| plate | quantity | spheres | R^2 | goal | published | max abs error (%) | worst sphere | <= 5 % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, f in figures.items():
        for q in ("t1_ms", "t2_ms"):
            m, c = f["metrics"][q], f["summary"][q]
            print(f"| {name} | {q[:2].upper()} | {m['n_counted']} | {m['r2']:.5f} | {GOAL[q]} | {PUBLISHED[q]} | "
                  f"{m['max_abs_error_pct']:.2f} | {c['worst_sphere']} | {c['within_5pct']}/{c['counted']} |")
    return figures


def plate_results(maps: Path) -> dict:
    """{plate name: run_qa result} of both plates of a map file."""
    from mrf_core.qa.analysis import QASettings, run_qa

    results = {}
    for array, slice_index in PLATES:
        result = run_qa(maps, array, 3.0, settings=QASettings(slice_index=slice_index))
        results[result.reference.array] = result
    return results


def sweep(raw: Path, out: Path) -> list[dict]:
    """Reconstruct `raw` at each SWEEP setting, map by the dictionary, QA both plates; print the table."""
    import re

    rows = []
    print("\n| rank | lambda | iterations | s per slice | plate | T1 <= 5 % | T1 worst | T1 R^2 | T2 <= 5 % | "
          "T2 worst | T2 R^2 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for rank, lam, iterations in SWEEP:
        maps = out / f"sweep_rank{rank}_lambda{lam:g}_it{iterations}.h5"
        command = [sys.executable, "-m", "mrf_core", "reconstruct", str(raw), "-o", str(maps), "--mapper",
                   "dictionary", "--rank", str(rank), "--llr-lambda", str(lam), "--iterations", str(iterations)]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"reconstruct failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}")
        seconds = [float(t) for t in re.findall(r"reconstruction, rank \d+: .*total ([\d.]+) s", done.stderr)]
        per_slice = sum(seconds) / max(len(seconds), 1)
        for name, result in plate_results(maps).items():
            cells, row = [], {"rank": rank, "lambda": lam, "iterations": iterations, "s_per_slice": per_slice,
                              "plate": name}
            for q in ("t1_ms", "t2_ms"):
                c = {**counted_summary(result, q), "r2": result.evaluation.metrics[q].r2}
                cells += [f"{c['within_5pct']}/{c['counted']}", f"{c['worst_pct']:+.1f} % (sphere {c['worst_sphere']})",
                          f"{c['r2']:.5f}"]
                row[q] = c
            rows.append(row)
            print(f"| {rank} | {lam:g} | {iterations} | {per_slice:.1f} | {name} | " + " | ".join(cells) + " |",
                  flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="mrf_default.xml", help="stream configuration for mrf replay")
    parser.add_argument("--out-dir", default="out/bench_qa", help="folder for the raw file, maps and results")
    parser.add_argument("--snr", type=float, default=40.0)
    parser.add_argument("--b1-field", type=float, default=0.0, help="B1 field amplitude of the simulation")
    parser.add_argument("--raw", default=None, help="reuse this simulated raw file instead of simulating")
    parser.add_argument("--maps", default=None, help="QA only: a map file of the two 3 T plates (slices 0, 1)")
    parser.add_argument("--sweep", action="store_true", help="reconstruction settings vs the per-sphere goal")
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
        if args.sweep:
            rows = sweep(raw, out)
            (out / "bench_qa_sweep.json").write_text(json.dumps({"code": source_state(), "rows": rows}, indent=1))
            print(f"\nwritten {out / 'bench_qa_sweep.json'}")
            return
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
