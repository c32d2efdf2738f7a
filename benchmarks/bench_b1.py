"""B1 and slice profile on simulated 3 T NIST plates: QA errors with and without a B1 map, with and without a
profile-aware dictionary, and the mapping time a B1 map costs.

    python benchmarks/bench_b1.py [--matrix 256] [--timepoints 1000] [--coils 16] [--snr 40] [--threads 2]

Scans (both plates, NiCl2 slice 0 and MnCl2 slice 1, 3 T batch 1, 1 of 48 interleaves per TR), simulated
once into out/bench/ and reused:
- "b1": a centre-bright transmit field B1 = 1 + 0.2 (1 - 2 r^2 / (100 mm)^2), 1.2 at the centre to 0.8 at
  the phantom's edge (quantised to 0.005 by the phantom code), ideal slice profile;
- "profile": B1 = 1, the 2-D slice profile of a Hann-windowed sinc of time-bandwidth 4 (20 sub-slices),
  mapped by the default chain and by the dictionary (grid --grid-step-pct) without and with the profile.
Each scan goes through mrf_core.pipeline.run_scan (what `mrf reconstruct` and the default chain run: LLR rank
10, network mapper with dictionary fallback) with the settings of each row, then QA (mrf_core.qa) per plate.
The B1 map of the "with B1 map" row is the true field over the object at 1/4 resolution (4 x 4 block means)
times (1 + 2 % Gaussian noise), written as a NIfTI volume of both slices with its affine (RAS), so the map
goes through the geometry code like a scanner's.
Joint B1 estimation without a map: simulated fingerprints with noise, matched over the whole B1-axis dictionary
(B1 estimated with T1/T2) and in the known B1's slice (the table below the QA table).
With the B1 map the default chain reconstructs each slice twice, the second time in a basis fitted to its
tissues (mrf_core.mapping.fitted_basis), and maps with the package's B1-input network (default_b1_model.pt,
B1 from the map; it maps the fitted basis's coefficients converted into its own basis); the row "dictionary"
maps with the dictionary in each voxel's B1 slice instead, the row "one pass in the dictionary's basis" is
`basis dictionary` (no second pass). --b1-model FILE adds a run with another network trained with a B1 input;
--profile-model FILE adds a profile-scan run with a network trained with the profile (`mrf train --preset
default --slice-profile hann-sinc:4`); --b1-recon RANK:ITERATIONS adds a one-pass dictionary run with a
larger dictionary basis and more LLR iterations.
Mapping time: the mapper alone on the reconstructed coefficients of the T1 plate (best of 5, same process,
alternating): the default network without a B1 map, the B1-free dictionary mapper, the default network with
the B1 map (the B1-input model) and the dictionary mapper with it (on the coefficients of the runs without and
with the map), and with --b1-model that network with the map.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
B1_AMPLITUDE = 0.2
PHANTOM_RADIUS_MM = 100.0


def b1_field(matrix: int, fov_mm: float) -> np.ndarray:
    from mrf_core.sim.phantoms import pixel_coords_mm, quantise_b1

    x, y = pixel_coords_mm(matrix, fov_mm)
    return quantise_b1(1.0 + B1_AMPLITUDE * (1.0 - 2.0 * (x**2 + y**2) / PHANTOM_RADIUS_MM**2))


def simulated(kind: str, args) -> Path:
    """The cached scan of `kind` ("b1" or "profile")."""
    from dataclasses import replace

    from mrf_core.physics.sequence import default_schedule
    from mrf_core.physics.slice_profile import SliceProfile
    from mrf_core.recon.trajectory import SpiralParams
    from mrf_core.sim.phantoms import nist_phantom
    from mrf_core.sim.simulate import ScanSettings, simulate_to_file

    path = REPO / "out" / "bench" / f"b1_{kind}_{args.matrix}_{args.timepoints}tr_{args.coils}coils_snr{args.snr:g}.h5"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    phantom = nist_phantom(("NiCl2", "MnCl2"), 3.0, 1, args.matrix, args.fov)
    profile = None
    if kind == "b1":
        field = b1_field(args.matrix, args.fov)
        phantom = replace(phantom, b1=np.where(phantom.mask, field[None], 0.0))
    else:
        profile = SliceProfile(4.0)
    settings = ScanSettings(n_coils=args.coils, snr=args.snr, slice_profile=profile)
    report = simulate_to_file(path, phantom, default_schedule().truncated(args.timepoints),
                              SpiralParams(fov_mm=args.fov, matrix=args.matrix), settings)
    print(report.describe())
    return path


def write_b1_map(raw_path: Path, out: Path, seed: int = 0) -> Path:
    """The true B1 of the scan's object at 1/4 resolution with 2 % noise, as NIfTI (RAS affine)."""
    import nibabel

    from mrf_core.io.rawio import MrfRawFile

    with MrfRawFile(raw_path) as raw:
        truth = raw.truth()
        positions = truth.simulation["slice_positions_mm"]
    phantom = truth.phantom
    n, fov = phantom.matrix, phantom.fov_mm
    dx = fov / n
    inside = phantom.mask.reshape(phantom.n_slices, n // 4, 4, n // 4, 4)
    b1 = phantom.b1.reshape(inside.shape).astype(np.float64)
    counts = inside.sum(axis=(2, 4))
    coarse = np.where(counts > 0, (b1 * inside).sum(axis=(2, 4)) / np.maximum(counts, 1), np.nan)
    coarse *= 1 + 0.02 * np.random.default_rng(seed).standard_normal(coarse.shape)
    # voxel (i = column, j = row, k = slice): centre at fine index 4 i + 1.5, LPS x = (4 i + 1.5 - n/2) dx
    spacing = positions[1] - positions[0] if len(positions) > 1 else 5.0
    lps = np.array([[4 * dx, 0, 0, (1.5 - n // 2) * dx], [0, 4 * dx, 0, (1.5 - n // 2) * dx],
                    [0, 0, spacing, positions[0]], [0, 0, 0, 1.0]])
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    nibabel.save(nibabel.Nifti1Image(np.nan_to_num(coarse.transpose(2, 1, 0), nan=0.0), affine), out)
    return out


def run(raw_path: Path, settings, out: Path):
    """The pipeline on a scan, its map file, the coefficients of slice 0 and the wall time."""
    from mrf_core.io.map_images import write_images
    from mrf_core.io.rawio import MrfRawFile
    from mrf_core.pipeline import output_images, run_scan

    started = time.perf_counter()
    images, outputs = [], []
    with MrfRawFile(raw_path) as raw:
        for output in run_scan(raw.header, raw.acquisitions(), settings):
            outputs.append(output)
            images.extend(output_images(output, settings))
    write_images(out, images, group="bench", force=True)
    return outputs, time.perf_counter() - started


def qa_rows(map_path: Path, label: str) -> list[str]:
    from mrf_core.qa.analysis import QASettings, run_qa

    rows = []
    for array, slice_index in (("t1", 0), ("t2", 1)):
        result = run_qa(map_path, array, 3.0, settings=QASettings(slice_index=slice_index))
        metrics = result.evaluation.metrics
        for q in ("t1_ms", "t2_ms"):
            errors = [r.error_pct for r in result.evaluation.spheres if r.quantity == q and r.counted]
            rows.append(f"| {label} | {result.reference.array} | {q[:2].upper()} | {len(errors)} | "
                        f"{min(errors):+.1f} / {max(errors):+.1f} | {metrics[q].max_abs_error_pct:.1f} | "
                        f"{metrics[q].r2:.4f} | {'PASS' if metrics[q].passed else 'FAIL'} |")
        warned = [w for w in result.warnings if w.startswith(("B1 not corrected", "hint:"))]
        shown = "; ".join(w[:70] for w in warned) or "none"
        rows.append(f"| {label} | {result.reference.array} | QA warnings | | {shown} | | | |")
    return rows


def mapping_times(cases: dict, schedule, repeats: int = 5) -> dict[str, float]:
    """Best-of-`repeats` time of each mapper on its own run's slice 0, alternating (after a warm-up round
    that builds or reads the dictionaries and loads the model). cases: name -> (mapper, SliceCoefficients)."""
    best = dict.fromkeys(cases, float("inf"))
    for round_ in range(repeats + 1):
        for name, (mapper, slice_) in cases.items():
            started = time.perf_counter()
            mapper(slice_.coefficients, slice_.basis, schedule, slice_.slice_index, geometry=slice_.geometry)
            if round_:
                best[name] = min(best[name], time.perf_counter() - started)
    return best


def joint_precision(schedule, settings, n: int = 2000, seed: int = 0) -> list[str]:
    """Joint B1 estimation (no map) against matching at the known B1: tissues log-uniform in T1 100-2000 ms,
    T2 10-300 ms (T2 < T1 / 2), B1 uniform 0.8-1.2, complex noise at an SNR per time point (mean |signal|
    over sigma); errors as medians over the tissues of |relative error| and the RMS of the B1 error."""
    from mrf_core.mapping.b1_matching import match_at_b1
    from mrf_core.mapping.matching import match
    from mrf_core.physics.epg import simulate_fingerprints
    from mrf_core.pipeline import dictionary_for

    d = dictionary_for(schedule, settings)
    rng = np.random.default_rng(seed)
    t1 = np.exp(rng.uniform(np.log(100), np.log(2000), n))
    t2 = np.minimum(np.exp(rng.uniform(np.log(10), np.log(300), n)), t1 / 2)
    b1 = rng.uniform(0.8, 1.2, n)
    f = simulate_fingerprints(schedule, t1, t2, b1, device="cpu").numpy().astype(np.float64)
    rows = ["| SNR per time point | B1 RMS error (joint) | T1 median error joint / known B1 (%) | "
            "T2 median error joint / known B1 (%) |", "|---|---|---|---|"]
    for snr in (2.0, 10.0, 50.0):
        sigma = np.abs(f).mean(axis=1, keepdims=True) / snr / np.sqrt(2)
        noisy = f + sigma * (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape))
        x = d.basis.project((noisy * d.signal_phase).astype(np.complex64))
        joint = match(d, x, device="cpu")
        known, _ = match_at_b1(d, x, b1)
        pct = lambda est, true: 100 * np.median(np.abs(est / true - 1))  # noqa: E731
        rows.append(f"| {snr:g} | {np.sqrt(np.mean((joint.b1 - b1) ** 2)):.3f} | {pct(joint.t1_ms, t1):.1f} / "
                    f"{pct(known.t1_ms, t1):.1f} | {pct(joint.t2_ms, t2):.1f} / {pct(known.t2_ms, t2):.1f} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--matrix", type=int, default=256)
    p.add_argument("--fov", type=float, default=300.0)
    p.add_argument("--timepoints", type=int, default=1000)
    p.add_argument("--coils", type=int, default=16)
    p.add_argument("--snr", type=float, default=40.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--grid-step-pct", type=float, default=5.0,
                   help="grid of the dictionaries of the profile rows (the 20-sub-slice dictionary costs 20x)")
    p.add_argument("--cases", default="b1,profile,speed,joint", help="comma-separated: b1, profile, speed, joint")
    p.add_argument("--b1-model", type=Path, default=None,
                   help="also map the B1-map scan with this network trained with a B1 input (mrf train --b1-input)")
    p.add_argument("--profile-model", type=Path, default=None,
                   help="also map the profile scan with this network trained with the profile "
                   "(mrf train --preset default --slice-profile hann-sinc:4)")
    p.add_argument("--b1-recon", action="append", default=[], metavar="RANK:ITERATIONS",
                   help="also run the B1-map scan through the dictionary at this dictionary rank and LLR iterations "
                   "(repeatable; e.g. 14:90)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from mrf_core.physics.sequence import default_schedule
    from mrf_core.pipeline import set_threads
    from mrf_core.settings import defaults

    set_threads(args.threads)
    cases = set(args.cases.split(","))
    out = REPO / "out" / "bench"
    schedule = default_schedule().truncated(args.timepoints)
    rows = ["| run | plate | quantity | spheres | error min / max (%) | max abs (%) | R^2 | pass (5 %) |",
            "|---|---|---|---|---|---|---|---|"]

    def settings_of(**changes):
        settings = defaults()
        settings.threads = args.threads
        for key, value in changes.items():
            setattr(settings, key, value)
        return settings

    if cases & {"b1", "speed"}:
        raw = simulated("b1", args)
        b1_map = write_b1_map(raw, out / f"b1map_{args.matrix}.nii.gz")
        runs = {"B1 0.8-1.2, no B1 map (default chain)": settings_of(),
                "B1 0.8-1.2, B1 map (1/4 res., 2 % noise), default chain (network with B1 input)":
                    settings_of(b1_map=b1_map),
                "B1 0.8-1.2, B1 map, dictionary": settings_of(b1_map=b1_map, mapper="dictionary"),
                "B1 0.8-1.2, B1 map, one pass in the dictionary's basis": settings_of(b1_map=b1_map,
                                                                                   basis="dictionary")}
        if args.b1_model:
            runs[f"B1 0.8-1.2, B1 map, network {args.b1_model.name}"] = settings_of(b1_map=b1_map, model=args.b1_model)
        for spec in args.b1_recon:
            rank, iterations = (int(v) for v in spec.split(":"))
            runs[f"B1 0.8-1.2, B1 map, dictionary rank {rank}, {iterations} iterations"] = settings_of(
                b1_map=b1_map, mapper="dictionary", basis="dictionary", dictionary_rank=rank, iterations=iterations)
        first_slice = {}
        for label, settings in runs.items():
            outputs, seconds = run(raw, settings, out / "b1_maps.h5")
            first_slice.setdefault(settings.b1_map is not None, outputs[0].coefficients)
            mappers = sorted({o.maps.mapper for o in outputs if o.maps is not None})
            print(f"{label}: {seconds:.1f} s through the pipeline (mapper {', '.join(mappers)})", flush=True)
            if "b1" in cases:
                rows += qa_rows(out / "b1_maps.h5", label)
                print("\n".join(rows[-6:]), flush=True)
        if "speed" in cases:
            from mrf_core.pipeline import DictionaryMapper, NetworkMapper

            mappers = {
                "network (default, no B1 map)": (NetworkMapper(settings_of()), first_slice[False]),
                "dictionary, no B1 map": (DictionaryMapper(settings_of()), first_slice[False]),
                "network (default) with B1 map": (NetworkMapper(settings_of(b1_map=b1_map)), first_slice[True]),
                "dictionary with B1 map": (DictionaryMapper(settings_of(b1_map=b1_map)), first_slice[True]),
            }
            if args.b1_model:
                mappers[f"network {args.b1_model.name} with B1 map"] = (
                    NetworkMapper(settings_of(b1_map=b1_map, model=args.b1_model)), first_slice[True])
            times = mapping_times(mappers, schedule)
    if "profile" in cases:
        raw = simulated("profile", args)
        step = args.grid_step_pct
        profile_runs = [("profile in the scan; default chain (network), no profile", {}),
                        (f"profile in the scan; dictionary ({step:g} % grid), no profile",
                         {"mapper": "dictionary", "grid_step_pct": step}),
                        (f"profile in the scan; dictionary ({step:g} % grid) with the profile",
                         {"mapper": "dictionary", "grid_step_pct": step, "slice_profile": "hann-sinc:4"})]
        if args.profile_model:
            profile_runs.append((f"profile in the scan; network {args.profile_model.name} trained with the profile",
                                 {"model": args.profile_model, "slice_profile": "hann-sinc:4"}))
        for label, changes in profile_runs:
            outputs, seconds = run(raw, settings_of(**changes), out / "profile_maps.h5")
            mappers = sorted({o.maps.mapper for o in outputs if o.maps is not None})
            print(f"{label}: {seconds:.1f} s through the pipeline (mapper {', '.join(mappers)})", flush=True)
            rows += qa_rows(out / "profile_maps.h5", label)
            print("\n".join(rows[-6:]), flush=True)
    if "joint" in cases:
        print("\nJoint B1 estimation without a map (5 % grid, B1 axis 0.6-1.4 step 0.05, rank 10; 2000 tissues):\n")
        from mrf_core.pipeline import B1_MAP_AXIS

        print("\n".join(joint_precision(schedule, settings_of(b1_values=B1_MAP_AXIS))))
    print(f"\nNIST plates, {args.matrix}^2, {args.timepoints} TRs, 1/48 interleaves, {args.coils} coils, SNR "
          f"{args.snr:g}, {args.threads} threads:\n")
    print("\n".join(rows))
    if "speed" in cases:
        print("\n| mapper (slice 0, best of 5) | s | vs the default |\n|---|---|---|")
        base = times["network (default, no B1 map)"]
        for name, seconds in times.items():
            print(f"| {name} | {seconds:.3f} | {seconds / base:.1f}x |")


if __name__ == "__main__":
    main()
