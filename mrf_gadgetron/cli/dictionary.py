"""`mrf dictionary build|info`: make a dictionary file, or describe one."""

from __future__ import annotations

from mrf_core.settings import BY_NAME
from mrf_gadgetron.cli import CliError, HelpFormatter


def register(sub) -> None:
    p = sub.add_parser("dictionary", help="build or describe an MRF dictionary (HDF5)")
    dsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = dsub.add_parser(
        "build", help="simulate a dictionary on a grid, with its SVD basis, and save it",
        formatter_class=HelpFormatter,
        description="Simulate every atom of a T1 x T2 (x B1) grid with the EPG, compute the SVD temporal "
        "basis and the compressed atoms, and save all of it to HDF5 (written whole or not at all).",
    )
    b.add_argument("--grid", choices=("song", "oksuz", "percent"), default="percent",
                   help="song: T1 1:10:5000, T2 1:10:2000 ms; oksuz: their piecewise grid; percent: geometric")
    b.add_argument("--step-pct", type=float, default=5.0, help="step of the percent grid, in %%")
    b.add_argument("--t1-range", type=float, nargs=2, default=(10.0, 5000.0), metavar=("LO", "HI"),
                   help="T1 range of the percent grid, ms")
    b.add_argument("--t2-range", type=float, nargs=2, default=(2.0, 2000.0), metavar=("LO", "HI"),
                   help="T2 range of the percent grid, ms")
    b.add_argument("--b1", type=float, nargs=3, default=None, metavar=("LO", "HI", "STEP"),
                   help="add a B1 axis from LO to HI (inclusive) in steps of STEP")
    b.add_argument("--slice-profile", default="none", metavar="SHAPE:TBW[:N]",
                   help="model the 2-D slice profile of this RF pulse, e.g. hann-sinc:4 (N sub-slices, default 20; "
                   "N times the build time); none: an ideal profile")
    b.add_argument("--schedule", default=None, metavar="FILE", help="schedule file (default: Jiang 2015)")
    b.add_argument("--timepoints", type=int, default=None, metavar="N", help="use only the first N TRs")
    b.add_argument("--states", type=int, default=50, metavar="N", help="EPG states")
    size = b.add_mutually_exclusive_group()
    size.add_argument("--rank", type=int, default=None, help="basis rank (default 10)")
    size.add_argument("--energy", type=float, default=None, metavar="FRACTION",
                      help="smallest rank whose residual energy is at most FRACTION, e.g. 1e-4")
    b.add_argument("--compressed-only", action="store_true",
                   help="store only the compressed atoms (no time-domain fingerprints): a much smaller file")
    b.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    b.add_argument("--png", default=None, metavar="FILE", help="also plot the singular values and basis")
    b.add_argument("--cache-dir", default=BY_NAME["dictionary_cache_dir"].default, metavar="DIR",
                   help="also keep the compressed atoms in this dictionary cache, where `mrf reconstruct`, `mrf "
                   "replay` and the gadgets look (same setting dictionary_cache_dir; empty: do not)")
    b.add_argument("-o", "--out", required=True, metavar="FILE", help="output HDF5 file")
    b.set_defaults(func=run_build)
    i = dsub.add_parser("info", help="describe a dictionary file")
    i.add_argument("path", metavar="FILE")
    i.set_defaults(func=run_info)


def run_build(args) -> int:
    import numpy as np

    from mrf_core.io.atomic import check_writable
    from mrf_core.physics.dictionary import GRIDS, build_dictionary, store_in_cache
    from mrf_core.physics.sequence import load_schedule
    from mrf_core.physics.slice_profile import SliceProfile
    from mrf_core.physics.temporal_basis import DEFAULT_RANK

    check_writable(args.out)
    schedule = load_schedule(args.schedule)
    if args.timepoints is not None:
        schedule = schedule.truncated(args.timepoints)
    b1_axis = (1.0,)
    if args.b1 is not None:
        lo, hi, step = args.b1
        if step <= 0 or hi < lo:
            raise CliError(f"--b1 {lo} {hi} {step}: needs LO <= HI and STEP > 0")
        b1_axis = np.round(np.arange(lo, hi + step / 2, step), 6)
    grid_args = {"b1_axis": b1_axis}
    if args.grid == "percent":
        grid_args.update(step_pct=args.step_pct, t1_range_ms=tuple(args.t1_range), t2_range_ms=tuple(args.t2_range))
    grid = GRIDS[args.grid](**grid_args)
    print(f"{schedule.describe()}\ngrid {grid.name}: {grid.n_atoms} atoms")
    d = build_dictionary(schedule, grid, n_states=args.states, rank=args.rank, residual_energy=args.energy,
                         keep_fingerprints=not args.compressed_only, device=args.device,
                         slice_profile=SliceProfile.parse(args.slice_profile))
    d.save(args.out)
    print(d.describe())
    rate = d.n_atoms * schedule.n_timepoints / max(d.build_seconds, 1e-9) / 1e6
    print(f"built in {d.build_seconds:.1f} s ({rate:.1f} M atom*TR/s), written to {args.out}")
    cache_dir = BY_NAME["dictionary_cache_dir"].parse(args.cache_dir)
    if cache_dir is not None and args.energy is None:
        cached = store_in_cache(d, args.rank or DEFAULT_RANK, cache_dir)
        print(f"also cached as {cached}: `mrf reconstruct`, `mrf replay` and the gadgets with the same grid, "
              f"states and rank reuse it for schedule {schedule.hash}; other settings: --dictionary-file {args.out}")
    if args.png:
        from mrf_core.plotting import plot_basis

        plot_basis(d.basis, schedule, args.png)
        print(f"basis plot written to {args.png}")
    return 0


def run_info(args) -> int:
    import h5py

    from mrf_core.physics.dictionary import Dictionary

    d = Dictionary.load(args.path, fingerprints=False)  # the checks, without reading the fingerprints
    with h5py.File(args.path, "r") as f:
        print(d.describe(has_fingerprints="fingerprints" in f))
    print("residual energy by rank: " + ", ".join(
        f"{k}: {d.basis.residual_energy(k):.1e}" for k in (1, 2, 3, 5, 8, 10, 15, 20) if k <= d.schedule.n_timepoints
    ))
    print(f"built in {d.build_seconds:.1f} s")
    return 0
