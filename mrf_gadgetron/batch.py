"""Many scans through `mrf replay`'s chain on Dask (`mrf batch`): one machine or a cluster.

Each scan is one Dask task (`run_job`, on a worker): the raw file goes through the stream configuration's
stage processes exactly as `mrf replay` sends it (mrf_gadgetron.host.replay), the maps are written to the
scan's output (a temporary file renamed when complete, so an output that exists is whole), then the maps
figure and, where the job asks, phantom QA (report folder next to the output). The output's HDF5 root
attribute `mrf_batch` records the input's and the settings' SHA-256, so `resume` skips a scan whose output
was made from the same bytes with the same settings.

The client (`run_batch`) only submits jobs and takes back one small row per scan as each finishes (maps
stay on the workers' disks): it appends the row to summary.jsonl, stores QA results in the trend store
(the client is the store's only writer, so no SQLite file is shared between machines, and the write
replaces the scan's earlier entry by its key: a retried or re-run scan never adds a duplicate), and
prints progress. Failures of a scan (bad input, a stage's error: MrfError) are rows with status
"failed"; other exceptions (I/O, a lost worker) are retried by Dask (`retries`; a worker that dies is
rescheduled by the scheduler up to its `allowed-failures`) and become a failed row only after that.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import glob
import hashlib
import html
import json
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mrf_core.errors import MrfError

META_KEY = "mrf_batch"  # HDF5 root attribute of an output: JSON {input_sha256, settings_sha256, raw, config}
EXTRA = "mrf-gadgetron[batch]"  # the optional dependencies (dask[distributed])
MANIFEST_COLUMNS = ("raw", "config", "settings", "out", "qa_array", "qa_field", "qa_batch", "qa_temperature",
                    "qa_store")
SUMMARY_COLUMNS = ("scan", "status", "error", "notes", "worker", "raw", "out", "figure", "qa_report", "qa_passed",
                   "qa_stored", "read_s", "chain_s", "write_s", "figure_s", "qa_s", "total_s", "stages",
                   "input_sha256", "settings_sha256")


class BatchError(MrfError):
    """A batch that cannot start: a bad manifest, folder or glob, outputs that collide, no Dask."""


def require_dask():
    """The distributed module, or a BatchError naming the extra to install."""
    try:
        import distributed
    except ImportError as exc:
        raise BatchError(f"mrf batch needs Dask: pip install '{EXTRA}' (dask[distributed]); {exc}") from exc
    return distributed


@dataclass(frozen=True)
class QASpec:
    """Phantom QA of a scan's maps (as `mrf qa`): array (t1, t2, auto), field in T, phantom batch, temperature,
    and the trend store to add the result to (None: report only)."""

    array: str
    field_t: float
    batch: int = 1
    temperature_C: float | None = None
    store: str | None = None


@dataclass(frozen=True)
class ScanJob:
    """One scan: its name in the summary, raw file, configuration (file or name), map file, figure and QA."""

    name: str
    raw: str
    config: str
    out: str
    qa: QASpec | None = None
    figure: bool = True
    io_timeout_s: float = 600.0
    stage_memory_mib: int | None = None  # each stage process's address space (ChainOptions.stage_memory_mib)
    settings: tuple[tuple[str, str], ...] = ()  # properties set on every stage that accepts them

    @property
    def figure_path(self) -> Path:
        return Path(self.out).with_suffix(".png")

    @property
    def qa_dir(self) -> Path:
        return Path(self.out).with_name(Path(self.out).stem + "_qa")


# ---- the jobs ----------------------------------------------------------------------------------------
def _qa_from(row: dict, where: str) -> QASpec | None:
    array = (row.get("qa_array") or "").strip()
    if not array:
        return None
    if array not in ("t1", "t2", "auto"):
        raise BatchError(f"{where}: qa_array {array!r} must be t1, t2 or auto (or empty: no QA)")
    try:
        field_t = float(row.get("qa_field") or "nan")
        batch = int(row.get("qa_batch") or 1)
        temperature = float(row["qa_temperature"]) if (row.get("qa_temperature") or "").strip() else None
    except ValueError as exc:
        raise BatchError(f"{where}: qa_field, qa_batch and qa_temperature must be numbers: {exc}") from exc
    if field_t not in (1.5, 3.0) or batch not in (1, 2):
        raise BatchError(f"{where}: QA needs qa_field 1.5 or 3 and qa_batch 1 or 2 (got {field_t:g}, {batch})")
    return QASpec(array, field_t, batch, temperature, (row.get("qa_store") or "").strip() or None)


def parse_settings(text: str, where: str) -> tuple[tuple[str, str], ...]:
    """`name=value;name=value` (a manifest's settings cell, or --set) as pairs."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, equals, value = item.partition("=")
        if not equals or not name.strip():
            raise BatchError(f"{where}: settings {text!r}: expected name=value;name=value (e.g. method=cg;rank=8)")
        pairs.append((name.strip(), value.strip()))
    return tuple(pairs)


def with_settings(config, settings: tuple[tuple[str, str], ...]):
    """The configuration with each setting set as a `<property>` of every stage whose gadget accepts it (its
    PROPERTIES); a setting no stage accepts is a BatchError. Values are checked by the gadgets."""
    import importlib
    import xml.etree.ElementTree as ET

    from mrf_gadgetron.host.stream_config import XML_DECLARATION, ExternalNode

    if not settings:
        return config
    used: set[str] = set()
    nodes = []
    for node in config.nodes:
        accepted = {s.name for s in getattr(importlib.import_module(node.module), "PROPERTIES", ())}
        mine = [(k, v) for k, v in settings if k in accepted]
        if not mine:
            nodes.append(node)
            continue
        body = node.configuration_xml[len(XML_DECLARATION):].strip()
        element = ET.fromstring(body) if body else ET.Element("configuration")
        for name, value in mine:
            found = element.find(f"property[@name='{name}']")
            (found if found is not None else ET.SubElement(element, "property", name=name)).set("value", value)
            used.add(name)
        nodes.append(ExternalNode(node.module, node.target, XML_DECLARATION + ET.tostring(element, "unicode") + "\n"))
    unused = [k for k, _ in settings if k not in used]
    if unused:
        raise BatchError(f"settings {', '.join(unused)}: no stage of {config.source} accepts them (README, "
                         f"\"Gadget properties\")")
    return dataclasses.replace(config, nodes=tuple(nodes))


def read_manifest(path: str | Path, defaults: dict) -> list[ScanJob]:
    """Jobs from a CSV manifest (header row; columns MANIFEST_COLUMNS, raw required, the others optional:
    empty cells take `defaults` (config, out_dir, qa, settings; figure, io_timeout_s, stage_memory_mib); relative
    paths are relative to the manifest's folder."""
    path = Path(path)
    base = path.parent
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            unknown = set(reader.fieldnames or ()) - set(MANIFEST_COLUMNS)
            if "raw" not in (reader.fieldnames or ()) or unknown:
                raise BatchError(f"manifest {path}: columns must include 'raw' and be among "
                                 f"{', '.join(MANIFEST_COLUMNS)} (unknown: {', '.join(sorted(unknown)) or 'none'})")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BatchError(f"cannot read manifest {path}: {exc}") from exc
    jobs = []
    for line, row in enumerate(rows, start=2):
        where = f"manifest {path} line {line}"
        raw = (row.get("raw") or "").strip()
        if not raw:
            raise BatchError(f"{where}: the raw cell is empty")
        raw_path = base / raw
        out = (row.get("out") or "").strip()
        qa = _qa_from(row, where) if (row.get("qa_array") or "").strip() else defaults.get("qa")
        if qa is not None and qa.store is not None and not Path(qa.store).is_absolute():
            qa = dataclasses.replace(qa, store=str(base / qa.store))
        config = (row.get("config") or "").strip() or defaults["config"]
        config_path = base / config
        common = _common(defaults)
        if (row.get("settings") or "").strip():
            common["settings"] = parse_settings(row["settings"], where)
        jobs.append(ScanJob(Path(raw).stem, str(raw_path), str(config_path) if config_path.exists() else config,
                            str(base / out) if out else str(Path(defaults["out_dir"]) / f"{Path(raw).stem}_maps.h5"),
                            qa, **common))
    return _checked(jobs, str(path))


def find_jobs(source: str, defaults: dict) -> list[ScanJob]:
    """Jobs from a manifest (*.csv), a folder (its *.h5 files) or a glob pattern; each output is
    `<out_dir>/<raw stem>_maps.h5` unless the manifest names it."""
    if source.endswith(".csv"):
        return read_manifest(source, defaults)
    if Path(source).is_dir():
        raws = sorted(str(p) for p in Path(source).glob("*.h5"))
    else:
        raws = sorted(glob.glob(source, recursive=True))
    raws = [r for r in raws if not Path(r).stem.endswith("_maps")]  # a batch's own outputs in the same folder
    if not raws:
        raise BatchError(f"no raw files in {source!r} (a folder of *.h5 files, a glob pattern or a manifest .csv)")
    out_dir = Path(defaults["out_dir"])
    jobs = [ScanJob(Path(r).stem, r, defaults["config"], str(out_dir / f"{Path(r).stem}_maps.h5"),
                    defaults.get("qa"), **_common(defaults)) for r in raws]
    return _checked(jobs, source)


def _common(defaults: dict) -> dict:
    """The job fields every scan of a batch shares."""
    return {k: defaults[k] for k in ("figure", "io_timeout_s", "stage_memory_mib", "settings") if k in defaults}


def _checked(jobs: list[ScanJob], source: str) -> list[ScanJob]:
    """Jobs with distinct names (a suffix where raw files share a stem) and distinct outputs."""
    seen: dict[str, int] = {}
    named = []
    for job in jobs:
        count = seen.get(job.name, 0)
        seen[job.name] = count + 1
        named.append(job if count == 0 else dataclasses.replace(job, name=f"{job.name}-{count + 1}"))
    outputs: dict[str, str] = {}
    for job in named:
        out = os.path.abspath(job.out)
        if out in outputs:
            raise BatchError(f"{source}: scans {outputs[out]} and {job.name} would both write {job.out}; give each "
                             "its own output (manifest column out)")
        outputs[out] = job.name
    return named


# ---- one scan, on a worker ----------------------------------------------------------------------------
def file_sha256(path: str | Path, chunk: int = 2**20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def settings_sha256(job: ScanJob, config) -> str:
    """What the output depends on besides the raw file: the configuration as it runs (readers, writers,
    stages and their `<configuration>` text, the settings applied), this mrf's version (its gadgets,
    default model and dictionaries), the figure and QA asked for."""
    import mrf_core

    digest = hashlib.sha256(json.dumps([config.readers, config.writers, [dataclasses.astuple(n) for n in config.nodes]])
                            .encode())
    qa = dataclasses.asdict(job.qa) if job.qa is not None else None
    if qa is not None:
        qa.pop("store")  # where the result is stored does not change the output
    digest.update(json.dumps({"version": mrf_core.__version__, "figure": job.figure, "qa": qa},
                             sort_keys=True).encode())
    return digest.hexdigest()


def output_meta(path: str | Path) -> dict | None:
    """The `mrf_batch` meta of an output (None when missing or unreadable)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs[META_KEY])
    except (OSError, KeyError, ValueError):
        return None


def _group_name(raw: str) -> str:
    """The image group: the scan's date and time from its header as the client names groups (so that QA's
    trend store dates the scan), else "maps"; the same for every attempt, so the store key is stable."""
    from mrf_gadgetron.host.replay import RawSource

    source = RawSource(raw)
    source.close()
    for info, day, clock in (("studyInformation", "studyDate", "studyTime"),
                             ("measurementInformation", "seriesDate", "seriesTime")):
        section = getattr(source.header, info, None)
        day_value, clock_value = getattr(section, day, None), getattr(section, clock, None)
        if day_value and clock_value:
            return f"{day_value} {str(clock_value)[:8]}"
    return "maps"


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def run_job(job: ScanJob, resume: bool = False):
    """One scan on this worker: (row, QA result without its maps or None). A scan's own failure (MrfError)
    is a row with status "failed"; anything else propagates, for Dask to retry."""
    from mrf_core.pipeline import one_line

    started = time.perf_counter()
    row = {"scan": job.name, "raw": job.raw, "out": job.out, "worker": _worker_name(), "status": "failed", "error": ""}
    qa_result = None
    try:
        row, qa_result = _run(job, resume, row)
    except MrfError as exc:
        row["error"] = one_line(exc)
    row["total_s"] = round(time.perf_counter() - started, 3)
    return row, qa_result


def _run(job: ScanJob, resume: bool, row: dict):
    import h5py

    from mrf_gadgetron.host.chain import ChainOptions
    from mrf_gadgetron.host.replay import ReplayError, replay
    from mrf_gadgetron.host.stream_config import find_config

    config = with_settings(find_config(job.config), job.settings)
    try:
        row["input_sha256"] = file_sha256(job.raw)
    except OSError as exc:
        raise ReplayError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    row["settings_sha256"] = settings_sha256(job, config)
    meta = {"input_sha256": row["input_sha256"], "settings_sha256": row["settings_sha256"], "raw": job.raw,
            "config": config.source}
    out = Path(job.out)
    if resume and out.exists():
        old = output_meta(out)
        if old and old.get("input_sha256") == meta["input_sha256"] and old.get("settings_sha256") == \
                meta["settings_sha256"]:
            row.update(status="skipped", figure=str(job.figure_path) if job.figure_path.exists() else "",
                       qa_report=str(job.qa_dir / "report.html") if (job.qa_dir / "report.html").exists() else "")
            return row, None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        options = ChainOptions(io_s=job.io_timeout_s, stage_memory_mib=job.stage_memory_mib)
        result = replay(job.raw, config, tmp, _group_name(job.raw), options=options)
        with h5py.File(tmp, "r+") as f:
            f.attrs[META_KEY] = json.dumps(meta)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    chain = result.chain
    row.update(read_s=round(result.read_s, 3), chain_s=round(chain.total_s, 3), write_s=round(result.write_s, 3),
               stages=";".join(f"{s.label}={s.closed_s or 0:.2f}" for s in chain.stages))  # CLOSE, s since start
    if job.figure:
        t0 = time.perf_counter()
        from mrf_core.plotting import plot_map_file

        try:
            plot_map_file(out, job.figure_path, title=f"{Path(job.raw).name} through {Path(config.source).name}")
            row["figure"] = str(job.figure_path)
        except MrfError as exc:  # e.g. a configuration that writes coefficients, not maps
            row["notes"] = f"no maps figure: {exc}"
        row["figure_s"] = round(time.perf_counter() - t0, 3)
    qa_result = None
    row["status"] = "done"
    if job.qa is not None:
        qa_result = _qa(job, row)
    return row, qa_result


def _qa(job: ScanJob, row: dict):
    """QA of the written maps; a QA that cannot run is the scan's error (its maps stay written, without the
    hashes, so that --resume makes the scan again)."""
    import h5py

    from mrf_core.qa.analysis import run_qa
    from mrf_core.qa.report import write_report

    t0 = time.perf_counter()
    try:
        result = run_qa(job.out, job.qa.array, job.qa.field_t, job.qa.batch, job.qa.temperature_C)
    except MrfError:
        row["status"] = "failed"
        with h5py.File(job.out, "r+") as f:
            del f.attrs[META_KEY]
        raise
    paths = write_report(result, job.qa_dir)
    row.update(qa_report=str(paths["html"]), qa_passed="PASS" if result.passed else "FAIL",
               qa_s=round(time.perf_counter() - t0, 3))
    return dataclasses.replace(result, maps={})  # the client stores it; the maps stay on disk


# ---- the client ----------------------------------------------------------------------------------------
def store_qa(result, store: str) -> int:
    """Add a QA result to a trend store, replacing the entry of the same key (map file, group, slice): the
    write is idempotent, so a retried or re-run scan is stored once."""
    from mrf_core.qa.trends import TrendStore

    with TrendStore(store) as trends:
        return trends.add(result, replace=True)


@dataclass
class Progress:
    """Counts while a batch runs; `line()` is the terminal's progress line."""

    total: int
    started: float = dataclasses.field(default_factory=time.perf_counter)
    done: int = 0
    skipped: int = 0
    failed: int = 0
    running: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.skipped + self.failed

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        left = self.total - self.finished
        eta = f"{elapsed / self.finished * left:.0f} s" if self.finished and left else "-"
        return (f"[{self.finished}/{self.total}] done {self.done}, skipped {self.skipped}, failed {self.failed}, "
                f"running {self.running}; {elapsed:.0f} s elapsed, ETA {eta}")


def default_workers(config_spec: str, settings: tuple[tuple[str, str], ...] = (), cores: int | None = None) -> int:
    """LocalCluster workers (one scan each) that do not oversubscribe the cores: cores // the largest
    `threads` property of the configuration's stages, settings applied (a scan's stages mostly work one
    after another: reconstruction, then mapping), at least 1."""
    import importlib
    import xml.etree.ElementTree as ET

    from mrf_core.settings import SETTINGS
    from mrf_gadgetron.host.stream_config import find_config

    cores = cores or len(os.sched_getaffinity(0))
    default = int(next(s.default for s in SETTINGS if s.name == "threads")) or cores
    threads = []
    for node in with_settings(find_config(config_spec), settings).nodes:
        if "threads" not in {s.name for s in getattr(importlib.import_module(node.module), "PROPERTIES", ())}:
            continue  # a stage without the setting (emit) does no threaded work
        value = ET.fromstring(node.configuration_xml).find("property[@name='threads']") \
            if "<configuration" in node.configuration_xml else None
        text = value.get("value", "") if value is not None else ""
        threads.append((int(text) if text.isdigit() else default) or cores)  # 0: torch's default, all cores
    per_scan = max(threads, default=default)
    return max(1, cores // per_scan)


def run_batch(jobs: list[ScanJob], client, summary_dir: str | Path, resume: bool = False, retries: int = 1,
              on_progress: Callable[[Progress, dict | None], None] | None = None) -> list[dict]:
    """Submit every job, collect each row as it finishes (stream it to summary.jsonl, store QA), then write
    summary.csv, summary.json and index.html in `summary_dir`; returns the rows in job order."""
    from distributed import as_completed

    from mrf_core.pipeline import one_line

    summary_dir = Path(summary_dir)
    summary_dir.mkdir(parents=True, exist_ok=True)
    lines = summary_dir / "summary.jsonl"
    lines.write_text("")
    progress = Progress(len(jobs))
    futures = {client.submit(run_job, job, resume, key=f"mrf-batch-{i}-{job.name}-{time.time_ns()}",
                             retries=retries, pure=False): (i, job) for i, job in enumerate(jobs)}
    rows: dict[int, dict] = {}
    progress.running = min(len(jobs), _slots(client))
    if on_progress:
        on_progress(progress, None)
    for future in as_completed(futures):
        i, job = futures[future]
        qa_result = None
        try:
            row, qa_result = future.result()
        except Exception as exc:  # retries spent, a worker lost too often: the scan failed, the batch goes on
            row = {"scan": job.name, "raw": job.raw, "out": job.out, "status": "failed", "error": one_line(exc)}
        if qa_result is not None and job.qa.store:
            try:
                row["qa_stored"] = f"{job.qa.store}#{store_qa(qa_result, job.qa.store)}"
            except (MrfError, OSError) as exc:
                row.update(status="failed", error=f"trend store: {one_line(exc)}")
        future.release()
        rows[i] = row
        with open(lines, "a") as f:
            f.write(json.dumps(row) + "\n")
        setattr(progress, row["status"], getattr(progress, row["status"]) + 1)
        progress.running = min(len(jobs) - progress.finished, _slots(client))
        if on_progress:
            on_progress(progress, row)
    ordered = [rows[i] for i in range(len(jobs))]
    write_summary(ordered, summary_dir)
    return ordered


def _slots(client) -> int:
    """Scans the cluster runs at once (its worker threads)."""
    try:
        return max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))
    except Exception:  # noqa: BLE001 (a count for the progress line only)
        return 1


def write_summary(rows: list[dict], folder: str | Path) -> dict[str, Path]:
    """summary.csv and summary.json (one row per scan) and index.html (a table linking each scan's maps
    figure and QA report)."""
    from mrf_core.io.atomic import atomic_write_text

    folder = Path(folder)
    paths = {"csv": folder / "summary.csv", "json": folder / "summary.json", "html": folder / "index.html"}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(paths["json"], json.dumps(rows, indent=1) + "\n")
    atomic_write_text(paths["html"], render_index(rows, folder))
    return paths


def _link(path: str | None, folder: Path, text: str) -> str:
    if not path:
        return ""
    target = os.path.relpath(os.path.abspath(path), os.path.abspath(folder))
    return f'<a href="{html.escape(target)}">{html.escape(text)}</a>'


def render_index(rows: Iterable[dict], folder: Path) -> str:
    rows = list(rows)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
    body = []
    for r in rows:
        colour = {"done": "#e6f4ea", "skipped": "#eef", "failed": "#fde8e8"}.get(r["status"], "#fff")
        body.append(
            f'<tr style="background:{colour}"><td>{html.escape(r["scan"])}</td><td>{r["status"]}</td>'
            f'<td>{_link(r.get("figure"), folder, "maps")}</td><td>{_link(r.get("qa_report"), folder, "QA")} '
            f'{html.escape(str(r.get("qa_passed", "")))}</td><td>{r.get("total_s", "")}</td>'
            f'<td>{html.escape(str(r.get("worker", "")))}</td><td>{html.escape(r.get("error", ""))}</td></tr>')
    when = datetime.datetime.now().isoformat(timespec="seconds")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>mrf batch</title><style>"
            f"body{{font-family:sans-serif}} td,th{{padding:2px 8px;text-align:left}}</style></head><body>"
            f"<h1>mrf batch: {len(rows)} scans</h1><p>{counts['done']} done, {counts['skipped']} skipped (resume), "
            f"{counts['failed']} failed; {when}</p><table><tr><th>scan</th><th>status</th><th>maps</th><th>QA</th>"
            f"<th>seconds</th><th>worker</th><th>error</th></tr>{''.join(body)}</table></body></html>\n")
