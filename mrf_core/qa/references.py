"""Reference T1/T2 of the NIST spheres for a scan, and which spheres a FISP-MRF sequence can measure.

Values: the shipped 20 C table (mrf_core.sim.phantoms.nist_reference): batch 1 at 1.5 and 3 T, batch 2 at
3 T. Temperature: the table holds no temperature dependence, so a scan at another temperature is compared
with the 20 C values and flagged, unless the user gives coefficients (CSV `array,sphere,quantity,
pct_per_C`, e.g. from the phantom's certificate), which correct linearly:
value(T) = value(20 C) * (1 + pct_per_C / 100 * (T - 20)).

Measurable spheres (`MeasurableRange`): a sphere's quantity counts towards pass/fail and the aggregate
metrics only if
  - its reference T1 and T2 lie inside the mapper's range (the default dictionary grid and network
    training range, T1 10-5000 ms, T2 2-2000 ms): outside, the mapper can only clip;
  - T2 >= the schedule's mean TR (13.1 ms for Jiang 2015): a shorter T2 dephases before the next
    pulse, so no echo pathway survives a TR and T2 enters the fingerprint only as the constant
    exp(-TE/T2), which is indistinguishable from PD;
  - T1 >= 3 mean TRs (39 ms): a shorter T1 has recovered from the inversion within three samples, so
    the inversion-recovery part of the fingerprint, which carries T1, is all but absent.
These exclude, at 3 T, NiCl2 spheres 13-14 (T1 31 and 22 ms) and MnCl2 spheres 12-14 (T2 11, 8, 6 ms).
Excluded spheres are still measured and reported, marked as not counted, with the reason.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from mrf_core.qa import QAError
from mrf_core.sim.phantoms import NIST_ARRAYS, PhantomError, nist_reference

REFERENCE_TEMPERATURE_C = 20.0
ARRAY_ALIASES = {"t1": "NiCl2", "t2": "MnCl2", "nicl2": "NiCl2", "mncl2": "MnCl2"}
QUANTITIES = ("t1_ms", "t2_ms")
JIANG_MEAN_TR_MS = 13.13  # mean TR of the default (Jiang 2015) schedule


def array_name(array: str) -> str:
    """'t1' / 't2' / 'NiCl2' / 'MnCl2' (any case) -> 'NiCl2' or 'MnCl2'."""
    name = ARRAY_ALIASES.get(str(array).lower())
    if name is None:
        raise QAError(f"NIST array {array!r}: expected t1 (NiCl2) or t2 (MnCl2)")
    return name


def other_array(array: str) -> str:
    return next(a for a in NIST_ARRAYS if a != array_name(array))


@dataclass(frozen=True)
class MeasurableRange:
    """Which reference values a sequence and mapper can measure (module docstring: why)."""

    t1_range_ms: tuple[float, float] = (10.0, 5000.0)
    t2_range_ms: tuple[float, float] = (2.0, 2000.0)
    mean_tr_ms: float = JIANG_MEAN_TR_MS
    min_t2_over_tr: float = 1.0
    min_t1_over_tr: float = 3.0

    def why_not(self, t1_ms: float, t2_ms: float) -> str | None:
        """None if a sphere with these reference values is measurable, else the reason (one phrase)."""
        (t1_lo, t1_hi), (t2_lo, t2_hi) = self.t1_range_ms, self.t2_range_ms
        if not (t1_lo <= t1_ms <= t1_hi and t2_lo <= t2_ms <= t2_hi):
            return f"outside the mapper range (T1 {t1_lo:g}-{t1_hi:g}, T2 {t2_lo:g}-{t2_hi:g} ms)"
        if t2_ms < self.min_t2_over_tr * self.mean_tr_ms:
            return f"T2 {t2_ms:g} ms < {self.min_t2_over_tr:g} x mean TR ({self.mean_tr_ms:g} ms): no T2 encoding"
        if t1_ms < self.min_t1_over_tr * self.mean_tr_ms:
            return f"T1 {t1_ms:g} ms < {self.min_t1_over_tr:g} x mean TR ({self.mean_tr_ms:g} ms): no T1 encoding"
        return None


@dataclass(frozen=True)
class Reference:
    """Reference values for one array plate: {sphere: {quantity: ms}}; the phantom's temperature as given
    (None: not given, and the 20 C values are used as they are), whether the values were corrected to it,
    and notes for the report."""

    array: str
    field_t: float
    batch: int
    temperature_C: float | None
    values_ms: dict[int, dict[str, float]]
    temperature_corrected: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def value(self, sphere: int, quantity: str) -> float:
        return self.values_ms[sphere][quantity]

    def temperature_text(self) -> str:
        """What the comparison assumed about temperature, in one sentence."""
        table = f"{REFERENCE_TEMPERATURE_C:g} C"
        if self.temperature_C is None:
            return f"Phantom temperature not given: assumed {table}, the reference values' temperature."
        if self.temperature_corrected:
            return f"Phantom at {self.temperature_C:g} C: reference values corrected from {table}."
        if self.temperature_C == REFERENCE_TEMPERATURE_C:
            return f"Phantom at {self.temperature_C:g} C, the reference values' temperature."
        return f"Phantom at {self.temperature_C:g} C: reference values for {table}, not corrected."

    def to_json(self) -> dict:
        return {
            "array": self.array, "field_T": self.field_t, "batch": self.batch,
            "temperature_C": self.temperature_C, "reference_temperature_C": REFERENCE_TEMPERATURE_C,
            "temperature_corrected": self.temperature_corrected, "temperature_assumption": self.temperature_text(),
            "notes": list(self.notes),
        }


def load_temperature_coefficients(path: str | Path) -> dict[tuple[str, int, str], float]:
    """{(array, sphere, quantity): %/C} from a CSV with columns array, sphere, quantity (T1/T2), pct_per_C."""
    path = Path(path)
    if not path.is_file():
        raise QAError(f"temperature coefficient file {path} does not exist")
    coefficients = {}
    with path.open(newline="") as f:
        rows = csv.DictReader(line for line in f if line.strip() and not line.startswith("#"))
        for number, row in enumerate(rows, start=2):
            try:
                key = (array_name(row["array"]), int(row["sphere"]), {"T1": "t1_ms", "T2": "t2_ms"}[row["quantity"]])
                value = float(row["pct_per_C"])
            except (KeyError, TypeError, ValueError) as exc:
                raise QAError(f"{path} line {number}: expected columns array, sphere, quantity (T1/T2), "
                              f"pct_per_C; got {dict(row)}") from exc
            if not math.isfinite(value):
                raise QAError(f"{path} line {number}: pct_per_C = {value} is not finite")
            coefficients[key] = value
    return coefficients


def nist_qa_reference(
    array: str,
    field_t: float,
    batch: int = 1,
    temperature_C: float | None = None,
    coefficients: dict[tuple[str, int, str], float] | None = None,
) -> Reference:
    """The reference for a scan of `array` at `field_t` and `batch`, at the scan's temperature when the
    coefficients allow (module docstring)."""
    array = array_name(array)
    try:
        table = nist_reference(field_t, batch, array)
    except PhantomError as exc:
        raise QAError(str(exc)) from exc
    values = {n: {"t1_ms": t1, "t2_ms": t2} for n, (t1, t2) in table.items()}
    if temperature_C is None or temperature_C == REFERENCE_TEMPERATURE_C:
        return Reference(array, field_t, batch, temperature_C, values)
    if not (math.isfinite(temperature_C) and 0.0 <= temperature_C <= 40.0):
        raise QAError(f"temperature {temperature_C} C is outside 0-40 C")
    delta_C = temperature_C - REFERENCE_TEMPERATURE_C
    if not coefficients:
        note = (f"scan at {temperature_C:g} C but the reference values are for 20 C and no temperature "
                "coefficients were given: errors include the temperature effect")
        return Reference(array, field_t, batch, temperature_C, values, False, (note,))
    missing = [(n, q) for n in values for q in QUANTITIES if (array, n, q) not in coefficients]
    if missing:
        n, q = missing[0]
        raise QAError(f"temperature coefficients lack {array} sphere {n} {q[:2].upper()} "
                      f"({len(missing)} values missing)")
    corrected = {n: {q: v * (1.0 + coefficients[(array, n, q)] / 100.0 * delta_C) for q, v in qv.items()}
                 for n, qv in values.items()}
    note = f"reference values corrected from 20 C to {temperature_C:g} C with the given coefficients"
    return Reference(array, field_t, batch, temperature_C, corrected, True, (note,))
