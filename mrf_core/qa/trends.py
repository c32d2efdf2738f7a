"""The trend store: QA results of successive phantom scans in a local SQLite file, and their plots.

Schema (PRAGMA application_id marks the file as ours, user_version is the schema version):
  scans(id, scan_key UNIQUE, scan_time, added_time, array, field_T, batch, temperature_C, passed,
        results_json)            one row per analysed slice; results_json is the whole results.json
  spheres(scan_id, sphere, quantity, reference_ms, measured_ms, error_pct, roi_std_ms, counted,
          tolerance_pct)         one row per sphere and quantity
temperature_C is NULL when no phantom temperature was given (schema 2; a schema-1 store, whose column
was NOT NULL, is converted when opened). A scan is added in one transaction (its row and its 28 sphere
rows, or nothing), so an interrupted or failed add never leaves a half scan. A file that is not SQLite,
fails SQLite's quick_check, or is another application's database is refused with a message, never
modified.

Repeatability: the coefficient of variation of each sphere's measured value over the scans (the
figure Kato et al. report over 100 days: < 1 % for T1 > 300 ms, < 3 % for T2).
"""

from __future__ import annotations

import datetime
import json
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrf_core.qa import QAError
from mrf_core.qa.analysis import QAResult
from mrf_core.qa.metrics import QUANTITY_LABELS

APPLICATION_ID = 0x4D524651  # "MRFQ"
SCHEMA_VERSION = 2
_SCANS_TABLE = """
CREATE TABLE scans (
    id INTEGER PRIMARY KEY,
    scan_key TEXT NOT NULL UNIQUE,
    scan_time TEXT NOT NULL,
    added_time TEXT NOT NULL,
    array TEXT NOT NULL,
    field_T REAL NOT NULL,
    batch INTEGER NOT NULL,
    temperature_C REAL,
    passed INTEGER NOT NULL,
    results_json TEXT NOT NULL
);
"""
_SCHEMA = _SCANS_TABLE + """
CREATE TABLE spheres (
    scan_id INTEGER NOT NULL REFERENCES scans(id) ON DELETE CASCADE,
    sphere INTEGER NOT NULL,
    quantity TEXT NOT NULL,
    reference_ms REAL NOT NULL,
    measured_ms REAL,
    error_pct REAL,
    roi_std_ms REAL,
    counted INTEGER NOT NULL,
    tolerance_pct REAL NOT NULL,
    PRIMARY KEY (scan_id, sphere, quantity)
);
CREATE INDEX scans_by_array ON scans(array, field_T, scan_time);
"""


@dataclass(frozen=True)
class TrendPoint:
    """One sphere's quantity in one scan."""

    scan_time: datetime.datetime
    measured_ms: float
    reference_ms: float
    tolerance_pct: float
    counted: bool


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


# Group names of the ISMRMRD clients: Python clients write str(datetime.now()), "2025-03-01 21:30:31.764543";
# gadgetron_ismrmrd_client (boost's to_simple_string) "2025-Mar-01 21:30:31.764543".
_GROUP_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%b-%d %H:%M:%S.%f", "%Y-%b-%d %H:%M:%S")


def scan_time_of(result: QAResult) -> datetime.datetime:
    """When the scan was made: the map file's group name when it is a client's date and time, else now."""
    group = str(result.source.get("group")).strip()
    for form in _GROUP_TIME_FORMATS:
        try:
            return datetime.datetime.strptime(group, form)
        except ValueError:
            continue
    return datetime.datetime.now().replace(microsecond=0)


def _scan_key(result: QAResult) -> str:
    source = result.source
    return f"{Path(source['path']).resolve()}|{source['group']}|{source['slice']}"


class TrendStore:
    """A QA trend store at `path` (created when missing). Use as a context manager or call close()."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise QAError(f"trend store {self.path} does not exist")
        is_new = not self.path.exists() or self.path.stat().st_size == 0
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise QAError(f"cannot open trend store {self.path}: {exc}") from exc
        self.conn.execute("PRAGMA foreign_keys = ON")
        try:
            if is_new:
                self._initialise()
            else:
                self._check()
        except Exception:
            self.conn.close()
            raise

    def __enter__(self) -> TrendStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def _initialise(self) -> None:
        try:
            self.conn.executescript(
                f"BEGIN IMMEDIATE;\n{_SCHEMA}\nPRAGMA application_id = {APPLICATION_ID};\n"
                f"PRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
        except sqlite3.Error as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise QAError(f"cannot create trend store {self.path}: {exc}") from exc

    def _check(self) -> None:
        try:
            status = self.conn.execute("PRAGMA quick_check").fetchone()[0]
            application = self.conn.execute("PRAGMA application_id").fetchone()[0]
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise QAError(f"trend store {self.path} is corrupt or not an SQLite file ({exc}); move it aside "
                          "and start a new store") from exc
        if status != "ok":
            raise QAError(f"trend store {self.path} is corrupt (SQLite quick_check: {status}); move it aside "
                          "and start a new store")
        if application != APPLICATION_ID:
            raise QAError(f"{self.path} is an SQLite file of another application, not a QA trend store")
        if version == 1:
            self._upgrade_from_1()
        elif version != SCHEMA_VERSION:
            raise QAError(f"trend store {self.path} has schema version {version}; this mrf reads {SCHEMA_VERSION}")

    def _upgrade_from_1(self) -> None:
        """Schema 1 -> 2 (temperature_C may be NULL), in one transaction: SQLite's way of changing a
        column, a new table filled from the old one (foreign keys off meanwhile, as SQLite prescribes)."""
        self.conn.execute("PRAGMA foreign_keys = OFF")
        try:
            self.conn.executescript(
                "BEGIN IMMEDIATE;\n" + _SCANS_TABLE.replace("CREATE TABLE scans", "CREATE TABLE scans_2")
                + "INSERT INTO scans_2 SELECT * FROM scans;\nDROP TABLE scans;\n"
                "ALTER TABLE scans_2 RENAME TO scans;\n"
                "CREATE INDEX scans_by_array ON scans(array, field_T, scan_time);\n"
                f"PRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
        except sqlite3.Error as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise QAError(f"cannot upgrade trend store {self.path} to schema {SCHEMA_VERSION}: {exc}") from exc
        finally:
            self.conn.execute("PRAGMA foreign_keys = ON")

    def check_new(self, result: QAResult, replace: bool = False) -> None:
        """An error when the store holds this map file, group and slice already (unless replace): asked
        before any report is written, so a refused scan leaves nothing behind."""
        old = self.conn.execute("SELECT id FROM scans WHERE scan_key = ?", (_scan_key(result),)).fetchone()
        if old and not replace:
            source = result.source
            raise QAError(f"trend store {self.path} already holds {source['path']} group {source['group']!r} "
                          f"slice {source['slice']} (scan {old[0]}); --replace to swap it")

    def add(self, result: QAResult, scan_time: datetime.datetime | None = None, replace: bool = False) -> int:
        """Append a QA result (one transaction); returns its scan id. The same map file, group and slice
        again is an error unless replace, which swaps the old entry for the new one."""
        scan_time = scan_time or scan_time_of(result)
        key = _scan_key(result)
        reference = result.reference
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.check_new(result, replace)
            old = self.conn.execute("SELECT id FROM scans WHERE scan_key = ?", (key,)).fetchone()
            if old:
                self.conn.execute("DELETE FROM scans WHERE id = ?", (old[0],))
            cursor = self.conn.execute(
                "INSERT INTO scans (scan_key, scan_time, added_time, array, field_T, batch, temperature_C, passed, "
                "results_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, scan_time.isoformat(timespec="seconds"),
                 datetime.datetime.now().isoformat(timespec="seconds"), reference.array, reference.field_t,
                 reference.batch, reference.temperature_C, int(result.passed),
                 json.dumps(result.to_json(), allow_nan=False)),
            )
            scan_id = int(cursor.lastrowid)
            self.conn.executemany(
                "INSERT INTO spheres VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", self._sphere_rows(scan_id, result))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return scan_id

    @staticmethod
    def _sphere_rows(scan_id: int, result: QAResult):
        for r in result.evaluation.spheres:
            yield (scan_id, r.sphere, r.quantity, r.reference_ms, _finite_or_none(r.measured_ms),
                   _finite_or_none(r.error_pct), _finite_or_none(r.stats.std), int(r.counted),
                   result.evaluation.metrics[r.quantity].tolerance_pct)

    def scans(self, array: str | None = None, field_t: float | None = None) -> list[dict]:
        """Stored scans (id, scan_time, array, field_T, batch, passed), oldest first, optionally filtered."""
        query, args = self._where(array, field_t)
        rows = self.conn.execute(
            f"SELECT id, scan_time, array, field_T, batch, passed FROM scans {query} ORDER BY scan_time, id", args)
        return [dict(zip(("id", "scan_time", "array", "field_T", "batch", "passed"), row, strict=True))
                for row in rows]

    def results_json(self, scan_id: int) -> dict:
        row = self.conn.execute("SELECT results_json FROM scans WHERE id = ?", (scan_id,)).fetchone()
        if row is None:
            raise QAError(f"trend store {self.path} has no scan {scan_id}")
        return json.loads(row[0])

    @staticmethod
    def _where(array: str | None, field_t: float | None) -> tuple[str, list]:
        clauses, args = [], []
        if array is not None:
            clauses.append("array = ?")
            args.append(array)
        if field_t is not None:
            clauses.append("field_T = ?")
            args.append(float(field_t))
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", args

    def series(self, array: str, field_t: float, quantity: str) -> dict[int, list[TrendPoint]]:
        """{sphere: points oldest first} of one quantity for one array and field."""
        rows = self.conn.execute(
            "SELECT s.sphere, c.scan_time, s.measured_ms, s.reference_ms, s.tolerance_pct, s.counted "
            "FROM spheres s JOIN scans c ON c.id = s.scan_id WHERE c.array = ? AND c.field_T = ? "
            "AND s.quantity = ? ORDER BY c.scan_time, c.id", (array, float(field_t), quantity))
        out: dict[int, list[TrendPoint]] = {}
        for sphere, when, measured, reference, tolerance, counted in rows:
            out.setdefault(sphere, []).append(TrendPoint(
                datetime.datetime.fromisoformat(when), math.nan if measured is None else measured, reference,
                tolerance, bool(counted)))
        return out


def repeatability_cv_pct(points: list[TrendPoint]) -> float:
    """CV (%) of a sphere's measured values over scans (NaN for fewer than 2)."""
    values = np.array([p.measured_ms for p in points if math.isfinite(p.measured_ms)])
    if values.size < 2:
        return math.nan
    return float(100 * values.std(ddof=1) / values.mean())


def plot_trend(store: TrendStore, array: str, field_t: float, quantity: str, path: str | Path) -> int:
    """One panel per sphere: measured value over scans, reference line and tolerance band; returns the
    number of scans plotted (an error when there are none)."""
    from mrf_core.io.atomic import atomic_path
    from mrf_core.plotting import new_subplots
    from mrf_core.qa.report import EXCLUDED_COLOUR, FAIL_COLOUR, PASS_COLOUR

    series = store.series(array, field_t, quantity)
    if not series:
        have = ", ".join(sorted({f"{s['array']} {s['field_T']:g} T" for s in store.scans()})) or "nothing"
        raise QAError(f"trend store {store.path} has no {array} scans at {field_t:g} T (has: {have})")
    fig, axes = new_subplots(2, 7, figsize=(21, 6.4), sharex=True)
    label = QUANTITY_LABELS[quantity]
    for ax, sphere in zip(axes.ravel(), range(1, 15), strict=True):
        points = series.get(sphere, [])
        if not points:
            ax.set_axis_off()
            continue
        times = [p.scan_time for p in points]
        reference = np.array([p.reference_ms for p in points])
        tolerance = np.array([p.tolerance_pct for p in points]) / 100
        ax.fill_between(times, reference * (1 - tolerance), reference * (1 + tolerance), color=PASS_COLOUR,
                        alpha=0.15, step="mid")
        ax.plot(times, reference, color="0.3", lw=1)
        measured = np.array([p.measured_ms for p in points])
        inside = np.abs(measured - reference) <= tolerance * reference
        counted = points[-1].counted
        colours = [EXCLUDED_COLOUR if not counted else PASS_COLOUR if ok else FAIL_COLOUR for ok in inside]
        ax.plot(times, measured, color="0.5", lw=0.8)
        ax.scatter(times, measured, c=colours, s=18, zorder=3)
        cv = repeatability_cv_pct(points)
        cv_text = f"CV {cv:.1f} %" if math.isfinite(cv) else "1 scan"
        ax.set_title(f"sphere {sphere}{'' if counted else ' (not counted)'}: {cv_text}", fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.tick_params(axis="y", labelsize=7)
    n_scans = max(len(p) for p in series.values())
    fig.suptitle(f"NIST {array} {label} at {field_t:g} T over {n_scans} scans (band: tolerance)")
    fig.supylabel(f"{label} (ms)")
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.88, hspace=0.55, wspace=0.35)
    with atomic_path(path) as tmp:  # the layout is fixed above: no tight-bbox second draw
        fig.savefig(tmp, format="png", dpi=90)
    return n_scans

