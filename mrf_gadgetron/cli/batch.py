"""`mrf batch`: many raw files through a stream configuration on Dask (mrf_gadgetron.batch)."""

from __future__ import annotations

import sys

from mrf_gadgetron.cli import HelpFormatter


def register(sub) -> None:
    p = sub.add_parser(
        "batch",
        help="reconstruct many raw files (a folder, a glob or a manifest CSV) on Dask, with QA and a summary",
        description="Each scan goes through the configuration's stage processes as in `mrf replay`, on a Dask "
        "LocalCluster (default) or an existing cluster (--scheduler). A failed scan is recorded with its error and "
        "the others go on; --resume skips scans whose output was made from the same input and settings. Writes "
        "summary.csv, summary.json, summary.jsonl and index.html in --out. Needs the batch extra: "
        "pip install 'mrf-gadgetron[batch]'.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("source", metavar="FOLDER|GLOB|MANIFEST.csv",
                   help="a folder of raw *.h5 files, a glob pattern (quoted), or a manifest CSV with columns raw, "
                   "config, settings, out, qa_array, qa_field, qa_batch, qa_temperature, qa_store (only raw required)")
    p.add_argument("-c", "--config", default="mrf_default.xml", metavar="XML",
                   help="stream configuration for scans the manifest gives none: a file or a name")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for scans the manifest gives none, repeatable (e.g. --set method=cg): set as the "
                   "property of every stage that accepts it")
    p.add_argument("-o", "--out", required=True, metavar="DIR",
                   help="summary folder, and where maps go (<raw stem>_maps.h5) unless the manifest names them")
    p.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="an existing Dask scheduler (its workers need this package installed); default: a "
                   "LocalCluster on this machine")
    p.add_argument("--workers", type=int, default=None,
                   help="LocalCluster workers, one scan each (default: cores // the configuration's threads)")
    p.add_argument("--memory-limit", default="auto", metavar="BYTES",
                   help="LocalCluster memory per worker, as Dask reads it ('4GiB'; auto: memory / workers)")
    p.add_argument("--scan-memory", type=int, default=None, metavar="MIB",
                   help="address space of each stage process of a scan (a scan beyond it fails with MemoryError, "
                   "the node lives on); Dask's --memory-limit counts the worker process only, not its stages")
    p.add_argument("--dashboard", default=":0", metavar="[HOST]:PORT",
                   help="LocalCluster dashboard address (:0 any free port)")
    p.add_argument("--retries", type=int, default=1,
                   help="Dask retries of a scan that raised something other than a scan error (I/O, a lost worker)")
    p.add_argument("--resume", action="store_true",
                   help="skip scans whose output exists with the same input and settings hash")
    p.add_argument("--no-figures", action="store_true", help="do not draw each scan's maps figure")
    p.add_argument("--qa", default=None, metavar="ARRAY,FIELD",
                   help="phantom QA for scans the manifest gives none, e.g. t1,3 or auto,1.5")
    p.add_argument("--store", default=None, metavar="FILE", help="trend store for --qa results")
    p.add_argument("--io-timeout", type=float, default=600.0, metavar="S",
                   help="longest silence allowed on a stage's socket")
    p.set_defaults(func=run)


def _qa_default(args):
    from mrf_gadgetron.batch import QASpec
    from mrf_gadgetron.cli import CliError

    if args.qa is None:
        if args.store:
            raise CliError("--store needs --qa ARRAY,FIELD")
        return None
    try:
        array, field = args.qa.split(",")
        spec = QASpec(array.strip(), float(field), store=args.store)
    except ValueError as exc:
        raise CliError(f"--qa {args.qa!r}: expected ARRAY,FIELD, e.g. t1,3") from exc
    if spec.array not in ("t1", "t2", "auto") or spec.field_t not in (1.5, 3.0):
        raise CliError(f"--qa {args.qa!r}: ARRAY is t1, t2 or auto and FIELD 1.5 or 3")
    return spec


def make_client(args, jobs):
    """A Client of --scheduler, or of a LocalCluster sized so that scans do not oversubscribe the cores."""
    from mrf_gadgetron.batch import default_workers, require_dask
    from mrf_gadgetron.cli import CliError

    distributed = require_dask()
    if args.scheduler:
        return distributed.Client(args.scheduler, timeout="30s"), None
    workers = args.workers or default_workers(jobs[0].config, jobs[0].settings)
    if workers < 1:
        raise CliError(f"--workers {workers} must be >= 1")
    cluster = distributed.LocalCluster(n_workers=min(workers, len(jobs)), threads_per_worker=1, processes=True,
                                       memory_limit=args.memory_limit, dashboard_address=args.dashboard)
    return distributed.Client(cluster), cluster


def run(args) -> int:
    from pathlib import Path

    from mrf_gadgetron.batch import find_jobs, parse_settings, run_batch

    defaults = {"config": args.config, "out_dir": args.out, "figure": not args.no_figures, "qa": _qa_default(args),
                "io_timeout_s": args.io_timeout, "stage_memory_mib": args.scan_memory,
                "settings": parse_settings(";".join(args.set), "--set")}
    jobs = find_jobs(args.source, defaults)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    client, cluster = make_client(args, jobs)
    try:
        nthreads = sum(w["nthreads"] for w in client.scheduler_info()["workers"].values())
        import importlib.util

        pages = "" if importlib.util.find_spec("bokeh") else " (its pages need bokeh>=3.1 where the scheduler runs)"
        print(f"mrf batch: {len(jobs)} scans on {len(client.scheduler_info()['workers'])} workers ({nthreads} "
              f"scans at once); dashboard {client.dashboard_link}{pages}", flush=True)

        def show(progress, row) -> None:
            if row is not None and not args.quiet:
                tail = f": {row['error']}" if row.get("error") else ""
                print(f"  {row['scan']}: {row['status']}{tail}", flush=True)
            print(progress.line(), flush=True)

        rows = run_batch(jobs, client, args.out, resume=args.resume, retries=args.retries, on_progress=show)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"wrote {Path(args.out) / 'summary.csv'}, summary.json and index.html: {len(rows) - len(failed)} of "
          f"{len(rows)} scans done or skipped, {len(failed)} failed", file=sys.stdout)
    return 1 if failed else 0
