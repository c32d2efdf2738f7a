"""Simulation time, peak memory and file size of the standard spiral MRF scan.

    python benchmarks/bench_simulate.py [--matrix 256] [--timepoints 1000] [--coils 16] [--phantoms nist-t1 brain]

Standard scan: 256 x 256 over 300 mm, the 1000-TR Jiang schedule, one of 48 spiral interleaves per TR
(24 at the centre), 16 coils, SNR 40, 3 T, a +-10 % B1 field. Each phantom runs in its own process so
that its peak resident memory (ru_maxrss) is its own; "baseline" is that process after its imports.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def run_one(args) -> None:
    """Simulate one phantom to a temporary file and print a JSON line of figures."""
    from mrf_core.physics.sequence import default_schedule
    from mrf_core.recon.trajectory import SpiralParams
    from mrf_core.sim.phantoms import make_phantom
    from mrf_core.sim.simulate import ScanSettings, simulate_to_file

    baseline = _rss_mib()
    phantom = make_phantom(args.one, field_t=3.0, matrix=args.matrix, fov_mm=300.0, b1_amplitude=0.1)
    schedule = default_schedule().truncated(args.timepoints)
    spiral = SpiralParams(fov_mm=300.0, matrix=args.matrix)
    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        report = simulate_to_file(Path(folder) / "scan.h5", phantom, schedule, spiral,
                                  ScanSettings(n_coils=args.coils, snr=40.0))
    print(json.dumps({
        "phantom": args.one, "voxels": int(phantom.mask.sum()), "acquisitions": report.n_acquisitions,
        "samples": report.n_samples, "rank": report.ranks[0], "residual": report.residuals[0],
        "seconds": report.seconds, "total_s": report.seconds_total, "file_mib": report.file_bytes / 2**20,
        "baseline_mib": baseline, "peak_mib": _rss_mib(),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--timepoints", type=int, default=1000)
    parser.add_argument("--coils", type=int, default=16)
    parser.add_argument("--phantoms", nargs="+", default=["nist-t1", "brain"])
    parser.add_argument("--tmp", default=None, help="folder for the temporary scan files")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args)
        return
    print(f"Standard spiral MRF scan: {args.matrix}^2, {args.timepoints} TRs, 1/48 interleaves per TR, "
          f"{args.coils} coils, SNR 40, 3 T, B1 +-10 %")
    header = (f"{'phantom':>8} {'voxels':>7} {'rank':>4} {'resid':>7} {'EPG+SVD':>8} {'NUFFT':>6} "
              f"{'readouts':>8} {'write':>6} {'total s':>7} {'base MiB':>8} {'peak MiB':>8} {'file MiB':>8}")
    print(header)
    for name in args.phantoms:
        command = [sys.executable, __file__, "--one", name, "--matrix", str(args.matrix),
                   "--timepoints", str(args.timepoints), "--coils", str(args.coils)]
        if args.tmp:
            command += ["--tmp", args.tmp]
        r = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        s = r["seconds"]
        write = r["total_s"] - sum(s.values())
        print(f"{name:>8} {r['voxels']:>7} {r['rank']:>4} {r['residual']:>7.1e} {s['epg_subspace']:>8.1f} "
              f"{s['nufft']:>6.1f} {s['readouts']:>8.1f} {write:>6.1f} {r['total_s']:>7.1f} "
              f"{r['baseline_mib']:>8.0f} {r['peak_mib']:>8.0f} {r['file_mib']:>8.1f}")
    print(f"({r['acquisitions']} acquisitions of {r['samples']} samples x {args.coils} channels each)")


if __name__ == "__main__":
    main()
