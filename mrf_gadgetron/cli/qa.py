"""`mrf qa`: phantom QA of a map file (report, results.json, trend store), and `mrf qa trend`: the plots
of each sphere's T1/T2 over the stored scans."""

from __future__ import annotations

import argparse
import datetime
import math

from mrf_gadgetron.cli import HelpFormatter, add_figure_arguments

TREND = "trend"


TREND_HELP = """usage: mrf qa trend --store FILE [--array {t1,t2}] [--field {1.5,3}] [-o DIR]

Plot each NIST sphere's T1 and T2 over the scans of a trend store (one PNG per array, field and
quantity, with the reference and the tolerance band) and print each sphere's CV over the scans.

options:
  --store FILE       SQLite trend store that `mrf qa MAPS.h5 ... --store FILE` appends to (required)
  --array {t1,t2}    only this plate (default: every plate in the store)
  --field {1.5,3}    only this field strength in T (default: every field in the store)
  -o, --out DIR      folder of the plots (default: qa_report)
"""


class _Help(argparse.Action):
    """-h: the trend help after `mrf qa trend`, else the analysis help."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, "maps", None) == TREND:
            print(TREND_HELP, end="")
        else:
            parser.print_help()
        parser.exit()


def register(sub) -> None:
    p = sub.add_parser(
        "qa",
        help="ISMRM/NIST phantom QA of T1/T2 maps (mrf qa MAPS.h5 ...), or trends over scans (mrf qa trend ...)",
        usage="mrf qa MAPS.h5 --array {t1,t2} --field {1.5,3} [options]\n       mrf qa trend --store FILE [options]",
        description="Find the 14 spheres of a NIST array plate in a map file (ISMRMRD images as `mrf reconstruct`, "
        "`mrf replay` or gadgetron_ismrmrd_client write them), compare ROI statistics with the reference values "
        "and write a self-contained HTML report, results.json and summary.png; optionally append the result to "
        "an SQLite trend store. `mrf qa trend --store FILE` plots each sphere's T1 and T2 over the stored scans. "
        "Exit code 2 on an error, and with --exit-code 1 when the phantom fails.",
        formatter_class=HelpFormatter, add_help=False,
    )
    p.add_argument("-h", "--help", action=_Help, help="show this help (`mrf qa trend --help`: the trend help)")
    p.add_argument("maps", metavar="MAPS.h5|trend", help="map file to analyse, or the word 'trend'")
    p.add_argument("--phantom", choices=("nist",), default="nist", help="phantom")
    p.add_argument("--array", choices=("t1", "t2", "auto"), default=None,
                   help="sphere plate: t1 (NiCl2), t2 (MnCl2) or auto (the one the spheres agree with); required "
                   "for analysis, a filter for trend")
    p.add_argument("--field", type=float, choices=(1.5, 3.0), default=None, metavar="{1.5,3}",
                   help="field strength in T; required for analysis, a filter for trend")
    p.add_argument("--batch", type=int, choices=(1, 2), default=1, help="phantom batch (serial <= 41: 1)")
    p.add_argument("--temperature", type=float, default=None, metavar="C", help="phantom temperature")
    p.add_argument("--temperature-coefficients", default=None, metavar="CSV",
                   help="array,sphere,quantity,pct_per_C: corrects the 20 C reference to --temperature")
    p.add_argument("--group", default=None, help="image group in the map file (default: the newest)")
    p.add_argument("--slice", type=int, default=None, help="slice to analyse (default: the best-fitting one)")
    p.add_argument("--detect-from", choices=("pd", "t1"), default="pd", help="map the spheres are found in")
    p.add_argument("--erosion", type=float, default=2.0, metavar="MM", help="ROI radius = sphere radius - this")
    p.add_argument("--statistic", choices=("mean", "median"), default="mean", help="ROI value compared")
    p.add_argument("--tolerance-t1", type=float, default=5.0, metavar="PCT", help="per-sphere |T1 error| limit")
    p.add_argument("--tolerance-t2", type=float, default=5.0, metavar="PCT", help="per-sphere |T2 error| limit")
    p.add_argument("--min-r2", type=float, default=0.99, help="least R^2 of T1 and of T2 over counted spheres")
    p.add_argument("-o", "--out", default="qa_report", metavar="DIR",
                   help="report folder (analysis) or plot folder (trend)")
    p.add_argument("--store", default=None, metavar="FILE", help="SQLite trend store (analysis: append to it)")
    p.add_argument("--replace", action="store_true", help="replace this map file's earlier entry in the store")
    p.add_argument("--scan-time", default=None, metavar="ISO",
                   help="scan date and time for the store (default: the client's group name, else now)")
    p.add_argument("--exit-code", action="store_true", help="exit 1 when the phantom fails")
    add_figure_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mrf_gadgetron.cli import CliError

    if args.maps == TREND:
        return _trend(args)
    if args.array is None or args.field is None:
        raise CliError("analysis needs --array {t1,t2} and --field {1.5,3}")
    return _analyse(args)


def _analyse(args) -> int:
    from mrf_core.plotting import FigureStyle
    from mrf_core.qa.analysis import QASettings, run_qa
    from mrf_core.qa.metrics import QUANTITY_LABELS, Tolerances, format_r2
    from mrf_core.qa.references import load_temperature_coefficients
    from mrf_core.qa.report import write_report
    from mrf_core.qa.trends import TrendStore

    coefficients = load_temperature_coefficients(args.temperature_coefficients) if args.temperature_coefficients \
        else None
    settings = QASettings(
        detect_from=args.detect_from, erosion_mm=args.erosion, statistic=args.statistic,
        tolerances=Tolerances(args.tolerance_t1, args.tolerance_t2, args.min_r2), slice_index=args.slice,
    )
    scan_time = _parse_time(args.scan_time)
    style = FigureStyle.from_options(args.linear, args.window)
    store = TrendStore(args.store) if args.store else None  # opened first: a bad store fails before the work
    try:
        result = run_qa(args.maps, args.array, args.field, args.batch, args.temperature, coefficients, settings,
                        args.group)
        if store is not None:
            store.check_new(result, args.replace)  # a refused scan writes no report
        paths = write_report(result, args.out, style)
        if store is not None:
            scan_id = store.add(result, scan_time, replace=args.replace)
    finally:
        if store is not None:
            store.close()
    reference, layout = result.reference, result.layout
    print(f"NIST {reference.array} {reference.field_t:g} T batch {reference.batch}: slice {result.source['slice']}, "
          f"{layout.n_found}/14 spheres on blobs, shift ({layout.shift_mm[0]:.1f}, {layout.shift_mm[1]:.1f}) mm, "
          f"rotation {layout.rotation_deg:.1f} deg, scale {layout.scale:.3f}{', mirrored' if layout.mirrored else ''}")
    print(f"{'sphere':>6} {'T1 ref':>8} {'T1 meas':>8} {'err %':>7} {'T2 ref':>8} {'T2 meas':>8} {'err %':>7}")
    for n in sorted(result.stats):
        cells = []
        for q in ("t1_ms", "t2_ms"):
            r = result.evaluation.sphere(n, q)
            mark = "" if r.counted else "*"
            cells.append(f"{r.reference_ms:8.1f} {r.measured_ms:8.1f} {r.error_pct:+6.1f}{mark or ' '}")
        print(f"{n:>6} " + " ".join(cells))
    for q, m in result.evaluation.metrics.items():
        print(f"{QUANTITY_LABELS[q]}: R^2 {format_r2(m.r2)}, CCC {m.lins_ccc:.5f}, bias {m.bias_pct:+.2f} %, "
              f"max |error| {m.max_abs_error_pct:.2f} % over {m.n_counted} spheres (* = not counted)")
    for line in result.warnings:
        print(f"warning: {line}")
    for line in result.evaluation.failures:
        print(f"fail: {line}")
    print(f"{'PASS' if result.passed else 'FAIL'}; report {paths['html']}, results {paths['json']}"
          + (f"; stored as scan {scan_id} in {args.store}" if store is not None else ""))
    return 1 if args.exit_code and not result.passed else 0


def _parse_time(text: str | None) -> datetime.datetime | None:
    from mrf_gadgetron.cli import CliError

    if text is None:
        return None
    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError as exc:
        raise CliError(f"--scan-time {text!r} is not an ISO date/time (e.g. 2025-03-01T09:30)") from exc


def _trend(args) -> int:
    from pathlib import Path

    from mrf_core.qa.metrics import QUANTITY_LABELS
    from mrf_core.qa.references import array_name
    from mrf_core.qa.trends import TrendStore, plot_trend, repeatability_cv_pct
    from mrf_gadgetron.cli import CliError

    if not args.store:
        raise CliError("trend needs --store FILE")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with TrendStore(args.store, create=False) as store:
        combos = sorted({(s["array"], s["field_T"]) for s in store.scans(
            array_name(args.array) if args.array not in (None, "auto") else None, args.field)})
        if not combos:
            raise CliError(f"trend store {args.store} has no scans"
                           + (" matching --array/--field" if args.array or args.field else ""))
        for array, field_t in combos:
            for quantity in ("t1_ms", "t2_ms"):
                label = QUANTITY_LABELS[quantity]
                path = out / f"trend_{array}_{field_t:g}T_{label}.png"
                n_scans = plot_trend(store, array, field_t, quantity, path)
                series = store.series(array, field_t, quantity)
                cvs = {n: repeatability_cv_pct(points) for n, points in series.items()}
                text = ", ".join(f"{n}: {cv:.1f}" for n, cv in cvs.items() if math.isfinite(cv)) or "-"
                print(f"{array} {field_t:g} T {label}: {n_scans} scans -> {path}; CV % per sphere: {text}")
                if any(cv == 0 for cv in cvs.values()):
                    print(f"  CV 0.0: the same {label} in every scan, one point of the mapper's grid (a dictionary's "
                          "step): the scan-to-scan variation is below one grid step, not zero")
    return 0
