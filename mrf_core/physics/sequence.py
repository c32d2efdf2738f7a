"""FISP-MRF acquisition schedule: per-TR flip angles and TRs, TE, inversion and RF phase.

The schedule is what makes a fingerprint: the simulator, the dictionary, the temporal basis and every
trained network are only valid for the schedule they were made with, so it carries a stable content
hash that is stored beside each of them and checked when they meet a scan.

Units: angles in degrees, times in ms (radians only inside the simulator).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np

from mrf_core.errors import MrfError
from mrf_core.io.atomic import atomic_write_text

DEFAULT_SCHEDULE_NAME = "fisp_jiang2015"
# Jiang et al. 2015: adiabatic inversion, then ~18 ms to the first RF pulse; TE ~2 ms.
JIANG_TE_MS = 2.0
JIANG_TI_MS = 18.0
# Precision the content hash sees: 1e-4 deg and 1e-4 ms, far below anything a scanner can play out,
# so a schedule survives a round trip through CSV, JSON or an ISMRMRD header with the same hash.
_HASH_DECIMALS = 4
MAX_FLIP_ANGLE_DEG = 180.0


class ScheduleError(MrfError):
    """A schedule that cannot be simulated: the message names the field and the value."""


@dataclass(frozen=True)
class FispSchedule:
    """A FISP-MRF schedule.

    flip_angle_deg, tr_ms: one entry per time point (TR). te_ms: echo time, the same in every TR.
    inversion: whether an inversion pulse precedes the train; ti_ms: inversion to first pulse.
    rf_phase_deg: the (constant) phase of every RF pulse; it only rotates the complex signal.
    """

    flip_angle_deg: np.ndarray
    tr_ms: np.ndarray
    te_ms: float = JIANG_TE_MS
    inversion: bool = True
    ti_ms: float = JIANG_TI_MS
    rf_phase_deg: float = 0.0
    name: str = "custom"
    _hash: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fa = np.asarray(self.flip_angle_deg, dtype=np.float64).reshape(-1)
        tr = np.asarray(self.tr_ms, dtype=np.float64).reshape(-1)
        object.__setattr__(self, "flip_angle_deg", fa)
        object.__setattr__(self, "tr_ms", tr)
        fa.setflags(write=False)
        tr.setflags(write=False)
        self._validate()
        object.__setattr__(self, "_hash", self._content_hash())

    def _validate(self) -> None:
        fa, tr = self.flip_angle_deg, self.tr_ms
        if fa.size == 0:
            raise ScheduleError("schedule has no time points (flip_angle_deg is empty)")
        if fa.size != tr.size:
            raise ScheduleError(
                f"flip_angle_deg has {fa.size} entries but tr_ms has {tr.size}: one of each per time point"
            )
        for name, arr in (("flip_angle_deg", fa), ("tr_ms", tr)):
            bad = np.flatnonzero(~np.isfinite(arr))
            if bad.size:
                raise ScheduleError(f"{name}[{bad[0]}] = {arr[bad[0]]} is not finite")
        bad = np.flatnonzero(tr <= 0)
        if bad.size:
            raise ScheduleError(f"tr_ms[{bad[0]}] = {tr[bad[0]]} must be > 0")
        bad = np.flatnonzero((fa < 0) | (fa > MAX_FLIP_ANGLE_DEG))
        if bad.size:
            raise ScheduleError(
                f"flip_angle_deg[{bad[0]}] = {fa[bad[0]]} is outside [0, {MAX_FLIP_ANGLE_DEG}] deg"
            )
        for name in ("te_ms", "ti_ms", "rf_phase_deg"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ScheduleError(f"{name} = {value} is not finite")
        if self.te_ms < 0:
            raise ScheduleError(f"te_ms = {self.te_ms} must be >= 0")
        bad = np.flatnonzero(tr < self.te_ms)
        if bad.size:
            raise ScheduleError(f"te_ms = {self.te_ms} is longer than tr_ms[{bad[0]}] = {tr[bad[0]]}")
        if self.inversion and self.ti_ms < 0:
            raise ScheduleError(f"ti_ms = {self.ti_ms} must be >= 0")

    # ---- identity -------------------------------------------------------------------------------
    @property
    def n_timepoints(self) -> int:
        return int(self.flip_angle_deg.size)

    @property
    def hash(self) -> str:
        """Stable content hash (16 hex digits) of everything that shapes the signal; not the name."""
        return self._hash

    def _content_hash(self) -> str:
        def fmt(values) -> list[str]:
            return [f"{v:.{_HASH_DECIMALS}f}" for v in np.atleast_1d(values)]

        content = {
            "flip_angle_deg": fmt(self.flip_angle_deg),
            "tr_ms": fmt(self.tr_ms),
            "te_ms": fmt(self.te_ms),
            "inversion": bool(self.inversion),
            "ti_ms": fmt(self.ti_ms if self.inversion else 0.0),
            "rf_phase_deg": fmt(self.rf_phase_deg),
        }
        blob = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FispSchedule) and self.hash == other.hash

    def __hash__(self) -> int:
        return hash(self._hash)

    def truncated(self, n_timepoints: int) -> FispSchedule:
        """The first n_timepoints TRs (Song et al. use the first 200 of the Jiang schedule)."""
        if not 1 <= n_timepoints <= self.n_timepoints:
            raise ScheduleError(
                f"n_timepoints = {n_timepoints} must be in [1, {self.n_timepoints}] for schedule {self.name!r}"
            )
        return replace(
            self,
            flip_angle_deg=self.flip_angle_deg[:n_timepoints],
            tr_ms=self.tr_ms[:n_timepoints],
            name=self.name if n_timepoints == self.n_timepoints else f"{self.name}[:{n_timepoints}]",
        )

    def describe(self) -> str:
        fa, tr = self.flip_angle_deg, self.tr_ms
        inv = f"inversion, TI {self.ti_ms:g} ms" if self.inversion else "no inversion"
        return (
            f"{self.name}: {self.n_timepoints} TRs, flip {fa.min():g}-{fa.max():g} deg, "
            f"TR {tr.min():.2f}-{tr.max():.2f} ms, TE {self.te_ms:g} ms, {inv}, "
            f"RF phase {self.rf_phase_deg:g} deg, duration {tr.sum() / 1000:.2f} s, hash {self.hash}"
        )

    # ---- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "flip_angle_deg": self.flip_angle_deg.tolist(),
            "tr_ms": self.tr_ms.tolist(),
            "te_ms": self.te_ms,
            "inversion": self.inversion,
            "ti_ms": self.ti_ms,
            "rf_phase_deg": self.rf_phase_deg,
            "hash": self.hash,
        }

    @classmethod
    def from_dict(cls, d: dict) -> FispSchedule:
        for key in ("flip_angle_deg", "tr_ms"):
            if key not in d:
                raise ScheduleError(f"schedule is missing the field {key!r}")
        try:
            schedule = cls(
                flip_angle_deg=np.asarray(d["flip_angle_deg"], dtype=np.float64),
                tr_ms=np.asarray(d["tr_ms"], dtype=np.float64),
                te_ms=float(d.get("te_ms", JIANG_TE_MS)),
                inversion=bool(d.get("inversion", True)),
                ti_ms=float(d.get("ti_ms", JIANG_TI_MS)),
                rf_phase_deg=float(d.get("rf_phase_deg", 0.0)),
                name=str(d.get("name", "custom")),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ScheduleError):
                raise
            raise ScheduleError(f"schedule field has a value that is not a number: {exc}") from exc
        stated = d.get("hash")
        if stated and stated != schedule.hash:
            raise ScheduleError(
                f"schedule states hash {stated} but its content hashes to {schedule.hash}: it was edited"
            )
        return schedule

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    # ---- CSV: columns index, flip_angle_deg, tr_ms; scalars in '# key = value' comment lines -------
    def to_csv(self) -> str:
        out = io.StringIO()
        out.write(f"# name = {self.name}\n# te_ms = {float(self.te_ms)!r}\n# inversion = {self.inversion}\n")
        out.write(f"# ti_ms = {float(self.ti_ms)!r}\n# rf_phase_deg = {float(self.rf_phase_deg)!r}\n")
        out.write("index,flip_angle_deg,tr_ms\n")
        for i, (fa, tr) in enumerate(zip(self.flip_angle_deg, self.tr_ms, strict=True)):
            out.write(f"{i},{float(fa)!r},{float(tr)!r}\n")
        return out.getvalue()

    @classmethod
    def from_csv_text(cls, text: str, name: str = "custom", **scalars) -> FispSchedule:
        meta: dict[str, str] = {}
        body = []
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                key, sep, value = stripped[1:].partition("=")
                if sep:
                    meta[key.strip()] = value.strip()
            elif stripped:
                body.append(stripped)
        rows = list(csv.DictReader(body))
        if not rows:
            raise ScheduleError("schedule CSV has no rows")
        for column in ("flip_angle_deg", "tr_ms"):
            if column not in rows[0]:
                raise ScheduleError(f"schedule CSV has no column {column!r} (columns: {list(rows[0])})")
        values: dict[str, list[float]] = {"flip_angle_deg": [], "tr_ms": []}
        for line_no, row in enumerate(rows, start=2):
            for column, column_values in values.items():
                try:
                    column_values.append(float(row[column]))
                except (TypeError, ValueError):
                    raise ScheduleError(
                        f"schedule CSV row {line_no}: {column} = {row[column]!r} is not a number"
                    ) from None
        d = {"name": meta.get("name", name), **values}
        for key in ("te_ms", "ti_ms", "rf_phase_deg"):
            if key in meta:
                d[key] = meta[key]
        if "inversion" in meta:
            d["inversion"] = meta["inversion"].lower() in ("true", "1", "yes")
        d.update(scalars)
        return cls.from_dict(d)

    # ---- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write JSON (.json) or CSV (anything else), atomically."""
        path = Path(path)
        atomic_write_text(path, self.to_json() if path.suffix.lower() == ".json" else self.to_csv())

    @classmethod
    def load(cls, path: str | Path) -> FispSchedule:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ScheduleError(f"cannot read schedule file {path}: {exc.strerror}") from exc
        if path.suffix.lower() == ".json":
            try:
                d = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ScheduleError(f"schedule file {path} is not valid JSON: {exc}") from exc
            return cls.from_dict(d)
        return cls.from_csv_text(text, name=path.stem)

    # ---- ISMRMRD header -------------------------------------------------------------------------
    def to_ismrmrd(self, header) -> None:
        """Write into an ismrmrd.xsd.ismrmrdHeader: sequenceParameters lists, RF phase as a user value.

        flipAngle_deg and TR carry one entry per TR; TE one value; TI one value when an inversion is
        played and none otherwise (that is how the header says 'no inversion').
        """
        import ismrmrd

        params = ismrmrd.xsd.sequenceParametersType()
        params.flipAngle_deg = [float(v) for v in self.flip_angle_deg]
        params.TR = [float(v) for v in self.tr_ms]
        params.TE = [float(self.te_ms)]
        params.TI = [float(self.ti_ms)] if self.inversion else []
        params.sequence_type = "FISP-MRF"
        header.sequenceParameters = params
        if header.userParameters is None:
            header.userParameters = ismrmrd.xsd.userParametersType()
        user = header.userParameters
        user.userParameterDouble = [p for p in user.userParameterDouble if p.name != "MRF_rf_phase_deg"]
        user.userParameterDouble.append(
            ismrmrd.xsd.userParameterDoubleType(name="MRF_rf_phase_deg", value=float(self.rf_phase_deg))
        )
        user.userParameterString = [p for p in user.userParameterString if p.name != "MRF_schedule_name"]
        user.userParameterString.append(
            ismrmrd.xsd.userParameterStringType(name="MRF_schedule_name", value=self.name)
        )

    @classmethod
    def from_ismrmrd(cls, header) -> FispSchedule:
        """Read from an ismrmrd.xsd.ismrmrdHeader; the error names what is missing."""
        params = header.sequenceParameters
        if params is None:
            raise ScheduleError("ISMRMRD header has no sequenceParameters: no MRF schedule in this scan")
        fa, tr = list(params.flipAngle_deg or []), list(params.TR or [])
        if not fa:
            raise ScheduleError("ISMRMRD header sequenceParameters has no flipAngle_deg list")
        if not tr:
            raise ScheduleError("ISMRMRD header sequenceParameters has no TR list")
        if len(tr) == 1 and len(fa) > 1:
            tr = tr * len(fa)  # a constant TR written once
        te = list(params.TE or [])
        if not te:
            raise ScheduleError("ISMRMRD header sequenceParameters has no TE")
        ti = list(params.TI or [])
        phase, name = 0.0, "from-header"
        if header.userParameters is not None:
            for p in header.userParameters.userParameterDouble:
                if p.name == "MRF_rf_phase_deg":
                    phase = float(p.value)
            for p in header.userParameters.userParameterString:
                if p.name == "MRF_schedule_name":
                    name = str(p.value)
        return cls(
            flip_angle_deg=np.asarray(fa, dtype=np.float64),
            tr_ms=np.asarray(tr, dtype=np.float64),
            te_ms=float(te[0]),
            inversion=bool(ti),
            ti_ms=float(ti[0]) if ti else 0.0,
            rf_phase_deg=phase,
            name=name,
        )


def default_schedule() -> FispSchedule:
    """The 1000-TR FISP-MRF schedule of Jiang et al. (MRM 74:1621, 2015), shipped with the package."""
    text = resources.files("mrf_core").joinpath("data", f"{DEFAULT_SCHEDULE_NAME}.csv").read_text()
    return FispSchedule.from_csv_text(
        text, name=DEFAULT_SCHEDULE_NAME, te_ms=JIANG_TE_MS, inversion=True, ti_ms=JIANG_TI_MS
    )


def load_schedule(spec: str | Path | None) -> FispSchedule:
    """A schedule from a file path, or the default for None / 'default' / the default's name; 'NAME[:N]'
    is its first N time points (the name `FispSchedule.truncated` gives them)."""
    if spec is None or str(spec) in ("default", DEFAULT_SCHEDULE_NAME):
        return default_schedule()
    match = re.fullmatch(rf"(?:default|{DEFAULT_SCHEDULE_NAME})\[:(\d+)\]", str(spec))
    if match:
        return default_schedule().truncated(int(match.group(1)))
    return FispSchedule.load(spec)
