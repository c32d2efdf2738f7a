"""Reconstruction benchmark: time and peak memory per method and stage, finufft vs sigpy, map NRMSE.

The standard slice (issue 4): NIST T1 plate at 3 T, 256 x 256, 1000 TRs (Jiang 2015), 1 of 48 interleaves
per TR, 16 coils compressed to 8, rank 5, SNR 40; the library's default (llr at rank 10, 30 iterations,
lambda 1.2) is measured beside it. The simulated scan, its gathered slice and the
dictionary (5 % grid, rank 10) are cached under --out (default out/bench). Every case runs in its own
process so that its peak RSS (ru_maxrss) is its own; "data MiB" is the RSS after imports and loading
the slice, "peak MiB" the RSS high-water mark, so the reconstruction's own memory is at most their
difference. NRMSE: ||map - truth|| / ||truth|| over the phantom's object voxels after dictionary matching
(gridding: in the dictionary's whole rank-10 subspace, i.e. matching in time).

    .venv/bin/python benchmarks/bench_recon.py                      # the standard slice, all cases
    .venv/bin/python benchmarks/bench_recon.py --matrix 64 --coils 8 # a quick small run
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

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---- inputs (cached) --------------------------------------------------------------------------------
def prepare(args) -> tuple[Path, Path]:
    """The gathered slice (npz, with the truth) and the dictionary file, made once."""
    from mrf_core.io.rawio import MrfRawFile
    from mrf_core.physics.sequence import default_schedule
    from mrf_core.pipeline import dictionary_for
    from mrf_core.recon.gather import SliceGatherer
    from mrf_core.recon.trajectory import SpiralParams
    from mrf_core.settings import defaults
    from mrf_core.sim.phantoms import nist_phantom
    from mrf_core.sim.simulate import ScanSettings, simulate_to_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"nist_t1_{args.matrix}_{args.timepoints}tr_{args.coils}c"
    scan, slice_file = out / f"{tag}.h5", out / f"{tag}_slice.npz"
    schedule = default_schedule().truncated(args.timepoints)
    if not scan.exists():
        started = time.perf_counter()
        simulate_to_file(scan, nist_phantom("NiCl2", field_t=3.0, matrix=args.matrix),
                         schedule, SpiralParams(matrix=args.matrix), ScanSettings(n_coils=args.coils, snr=40.0))
        print(f"simulated {scan} in {time.perf_counter() - started:.1f} s")
    if not slice_file.exists():
        started = time.perf_counter()
        with MrfRawFile(scan) as raw:
            gatherer = SliceGatherer(raw.info)
            slices = [s for acq in raw.acquisitions() for s in gatherer.add(acq)] + gatherer.finish()
            truth = raw.truth().phantom
        s = slices[0]
        print(f"read and gathered {scan.name} in {time.perf_counter() - started:.1f} s")
        np.savez(slice_file, kspace=s.kspace, traj=s.traj, interleave=s.interleave, timepoint=s.timepoint,
                 dcf=s.dcf, noise=s.noise, matrix=s.matrix, fov_mm=s.fov_mm, schedule=s.schedule.to_json(),
                 t1_ms=truth.t1_ms[0], t2_ms=truth.t2_ms[0], mask=truth.mask[0])
    dictionary = out / f"dict_percent5_{args.timepoints}tr.h5"
    if not dictionary.exists():
        dictionary_for(schedule, defaults("dictionary")).save(dictionary)  # the default 5 % grid
    return slice_file, dictionary


def load_slice(path: Path):
    from mrf_core.physics.sequence import FispSchedule
    from mrf_core.recon.gather import SliceData

    z = np.load(path)
    data = SliceData(slice_index=0, kspace=z["kspace"], traj=z["traj"], interleave=z["interleave"], dcf=z["dcf"],
                     matrix=int(z["matrix"]), fov_mm=float(z["fov_mm"]), noise=z["noise"],
                     schedule=FispSchedule.from_dict(json.loads(str(z["schedule"]))), timepoint=z["timepoint"])
    return data, z["t1_ms"], z["t2_ms"], z["mask"]


# ---- one case in its own process --------------------------------------------------------------------
def child_recon(case: dict, slice_file: Path, dictionary_file: Path) -> dict:
    from mrf_core.mapping.maps import map_nrmse
    from mrf_core.mapping.matching import match
    from mrf_core.physics.dictionary import Dictionary
    from mrf_core.recon.reconstruct import ReconSettings, reconstruct_slice

    data, t1, t2, mask = load_slice(slice_file)
    dictionary = Dictionary.load(dictionary_file, fingerprints=False)
    base_mib = _rss_mib()
    settings = ReconSettings(**case["settings"])
    started = time.perf_counter()
    result = reconstruct_slice(data, dictionary.basis, settings)
    wall = time.perf_counter() - started
    peak_mib = _rss_mib()
    started = time.perf_counter()
    matched = match(dictionary.in_basis(result.basis), np.moveaxis(result.coefficients, 0, -1), mask=mask)
    return {"name": case["name"], "wall_s": wall, "timings_s": result.timings_s, "data_mib": base_mib,
            "peak_mib": peak_mib, "match_s": time.perf_counter() - started, "rank": result.basis.rank,
            "t1_nrmse": map_nrmse(matched.t1_ms, t1, mask), "t2_nrmse": map_nrmse(matched.t2_ms, t2, mask),
            "iterations": len(result.convergence) - 1 if result.convergence else 0, "notes": result.notes}


def child_nufft(case: dict, slice_file: Path, dictionary_file: Path) -> dict:
    """One backend: the adjoint and forward of K x V transforms over all interleaves' points, and the PSF."""
    from mrf_core.physics.dictionary import Dictionary
    from mrf_core.recon.nufft import Nufft
    from mrf_core.recon.subspace import SubspaceSampling, ToeplitzNormal

    data, *_ = load_slice(slice_file)
    basis = Dictionary.load(dictionary_file, fingerprints=False).basis.truncated(case["rank"])
    sampling, _ = SubspaceSampling.from_readouts(data.traj, data.dcf, data.timepoint, data.interleave, data.matrix)
    n, batch = data.matrix, case["rank"] * case["virtual"]
    rng = np.random.default_rng(0)
    samples = (rng.standard_normal((batch, sampling.traj[..., 0].size)) + 0j).astype(np.complex64)
    out = {"name": case["backend"], "points": int(sampling.traj[..., 0].size), "transforms": batch}
    warm = Nufft(sampling.traj[:1, :64], n, backend=case["backend"])  # sigpy compiles its numba kernels here
    warm.forward(warm.adjoint(np.ones((2, 64), np.complex64)))
    started = time.perf_counter()
    op = Nufft(sampling.traj, n, backend=case["backend"])
    images = op.adjoint(samples)
    out["adjoint_s"] = time.perf_counter() - started
    started = time.perf_counter()
    op.forward(images)
    out["forward_s"] = time.perf_counter() - started
    started = time.perf_counter()
    ToeplitzNormal.compute(sampling, basis.vectors, backend=case["backend"])
    out["psf_s"] = time.perf_counter() - started
    out["peak_mib"] = _rss_mib()
    return out


def run_child(kind: str, case: dict, slice_file: Path, dictionary_file: Path, blas_threads: int | None) -> dict:
    command = [sys.executable, __file__, "--child", kind, json.dumps(case), str(slice_file), str(dictionary_file)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if blas_threads is not None:
        env["OPENBLAS_NUM_THREADS"] = str(blas_threads)
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- tables ----------------------------------------------------------------------------------------
STAGES = ("validate", "prewhiten", "reduce", "compress", "coil_maps", "adjoint", "psf", "iterations", "gridding")


def cases(args) -> list[dict]:
    common = {"rank": args.rank, "n_virtual_coils": args.virtual}
    default = {"rank": None, "n_virtual_coils": args.virtual}  # the library's defaults: llr, the whole rank-10 basis
    out = [
        {"name": "gridding (Ma 2013)", "settings": {**common, "method": "gridding", "rank": None}},
        {"name": "back-projection (McGivney 2014)", "settings": {**common, "method": "backprojection"}},
        {"name": "cg, 5 iterations", "settings": {**common, "method": "cg"}},
        {"name": "cg, 10 iterations", "settings": {**common, "method": "cg", "n_iterations": 10}},
        {"name": "cg, 20 iterations", "settings": {**common, "method": "cg", "n_iterations": 20}},
        {"name": "llr, 10 iterations, lambda 0.4 (the former default)",
         "settings": {**common, "method": "llr", "n_iterations": 10, "llr_lambda": 0.4}},
        {"name": "llr, 30 iterations, lambda 1.2", "settings": {**common, "method": "llr"}},
        {"name": "llr, rank 10 (default)", "settings": {**default}},
        {"name": "llr, rank 10 (default), sigpy NUFFT", "settings": {**default, "nufft_backend": "sigpy"}},
        {"name": "llr, rank 10 (default), ESPIRiT maps", "settings": {**default, "coil_method": "espirit"}},
        {"name": "llr, rank 10 (default), no coil compression", "settings": {**default, "n_virtual_coils": None}},
    ]
    if args.cases is not None:
        out = [c for i, c in enumerate(out) if i in args.cases]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--timepoints", type=int, default=1000)
    parser.add_argument("--coils", type=int, default=16)
    parser.add_argument("--virtual", type=int, default=8)
    parser.add_argument("--rank", type=int, default=5)
    parser.add_argument("--cases", type=int, nargs="*", default=None,
                        help="indices of the cases to run (none given: only the NUFFT table)")
    parser.add_argument("--no-nufft", action="store_true", help="skip the finufft vs sigpy table")
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="OPENBLAS_NUM_THREADS of the case processes (default: unset, OpenBLAS's own choice)")
    parser.add_argument("--out", default=str(ROOT / "out" / "bench"))
    parser.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, case, slice_file, dictionary_file = args.child
        run = child_recon if kind == "recon" else child_nufft
        print(json.dumps(run(json.loads(case), Path(slice_file), Path(dictionary_file))))
        return
    slice_file, dictionary_file = prepare(args)
    print(f"\nslice {args.matrix}x{args.matrix}, {args.timepoints} TRs, {args.coils} coils -> {args.virtual} virtual, "
          f"rank {args.rank}; {os.cpu_count()} CPUs; OPENBLAS_NUM_THREADS {args.blas_threads or 'unset'}; "
          f"load average {os.getloadavg()[0]:.1f} at start\n")
    rows = []
    for case in cases(args):
        r = run_child("recon", case, slice_file, dictionary_file, args.blas_threads)
        rows.append(r)
        print(f"  {r['name']}: {r['wall_s']:.1f} s", flush=True)
    print("\n| method | rank | total s | " + " | ".join(STAGES) + " | data MiB | peak MiB | T1 NRMSE | T2 NRMSE |")
    print("|---" * (len(STAGES) + 7) + "|")
    for r in rows:
        stages = " | ".join(f"{r['timings_s'][s]:.2f}" if s in r["timings_s"] else "-" for s in STAGES)
        print(f"| {r['name']} | {r['rank']} | {r['wall_s']:.1f} | {stages} | {r['data_mib']:.0f} | "
              f"{r['peak_mib']:.0f} | {r['t1_nrmse']:.4f} | {r['t2_nrmse']:.4f} |")
    if not args.no_nufft:
        print("\n| NUFFT backend | points | transforms | adjoint s | forward s | PSF kernels s | peak MiB |")
        print("|---|---|---|---|---|---|---|")
        for backend in ("finufft", "sigpy"):
            r = run_child("nufft", {"backend": backend, "rank": args.rank, "virtual": args.virtual},
                          slice_file, dictionary_file, args.blas_threads)
            print(f"| {r['name']} | {r['points']} | {r['transforms']} | {r['adjoint_s']:.2f} | {r['forward_s']:.2f} | "
                  f"{r['psf_s']:.2f} | {r['peak_mib']:.0f} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
