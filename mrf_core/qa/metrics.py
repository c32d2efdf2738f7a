"""Agreement of measured sphere values with the reference, and pass/fail.

Per sphere and quantity: error = measured - reference (ms) and error_pct = 100 error / reference, with the
measured value the ROI mean (or median); the within-ROI CV. Over the counted spheres (measurable, see
mrf_core.qa.references): R^2 (squared Pearson correlation, i.e. the coefficient of determination of the
least-squares line, as the published MRF phantom studies report it) with that line's slope and
intercept; Lin's concordance correlation (which, unlike R^2, also drops for a bias or a slope != 1);
bias (mean error, ms and %); Bland-Altman limits of agreement on the relative difference
100 (m - r) / ((m + r) / 2), because the spheres span two decades and absolute differences would be
ruled by the longest ones; the mean within-ROI CV.

Pass: every counted sphere has |error_pct| <= its quantity's tolerance and at least `min_mapped_fraction`
of its ROI mapped, and R^2 >= min_r2 for each quantity. Spheres not counted never fail a scan.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from mrf_core.qa import QAError
from mrf_core.qa.references import QUANTITIES, MeasurableRange, Reference
from mrf_core.qa.roi import RoiStats

QUANTITY_LABELS = {"t1_ms": "T1", "t2_ms": "T2"}


def format_r2(r2: float) -> str:
    """R^2 with the digits that tell it from 1 (0.99998, never a rounded '1.0000'); closer to 1 than five
    decimals show, as '1 - 3e-07'."""
    if r2 is None or not math.isfinite(r2):
        return "-"
    text = f"{r2:.5f}"
    return f"1 - {1 - r2:.0e}" if r2 < 1 and text == "1.00000" else text


@dataclass(frozen=True)
class Tolerances:
    """Pass/fail limits: per-sphere |error| in %, the least R^2, the least mapped fraction of an ROI."""

    t1_pct: float = 5.0
    t2_pct: float = 5.0
    min_r2: float = 0.99
    min_mapped_fraction: float = 0.8

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (math.isfinite(value) and value >= 0):
                raise QAError(f"tolerance {name} = {value} must be a finite number >= 0")

    def error_pct(self, quantity: str) -> float:
        return {"t1_ms": self.t1_pct, "t2_ms": self.t2_pct}[quantity]


def r_squared(reference: np.ndarray, measured: np.ndarray) -> float:
    """Squared Pearson correlation; NaN for fewer than 3 points or no spread."""
    x, y = np.asarray(reference, float), np.asarray(measured, float)
    if x.size < 3 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1] ** 2)


def linear_fit(reference: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of the least-squares line measured = slope * reference + intercept."""
    if np.size(reference) < 2:
        return math.nan, math.nan
    slope, intercept = np.polyfit(np.asarray(reference, float), np.asarray(measured, float), 1)
    return float(slope), float(intercept)


def lins_ccc(reference: np.ndarray, measured: np.ndarray) -> float:
    """Lin's concordance correlation coefficient 2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2)."""
    x, y = np.asarray(reference, float), np.asarray(measured, float)
    if x.size < 2:
        return math.nan
    covariance = np.mean((x - x.mean()) * (y - y.mean()))
    denominator = x.var() + y.var() + (x.mean() - y.mean()) ** 2
    return float(2 * covariance / denominator) if denominator > 0 else math.nan


def bland_altman_pct(reference: np.ndarray, measured: np.ndarray) -> tuple[float, float, float]:
    """Mean relative difference 100 (m - r) / ((m + r) / 2) and its 95 % limits (mean -/+ 1.96 sd)."""
    x, y = np.asarray(reference, float), np.asarray(measured, float)
    if x.size < 2:
        return math.nan, math.nan, math.nan
    difference = 100.0 * (y - x) / ((y + x) / 2.0)
    mean, sd = float(difference.mean()), float(difference.std(ddof=1))
    return mean, mean - 1.96 * sd, mean + 1.96 * sd


@dataclass(frozen=True)
class SphereResult:
    """One sphere's quantity: reference, ROI statistics, error, whether it counts (and why not), pass."""

    sphere: int
    quantity: str
    reference_ms: float
    stats: RoiStats
    measured_ms: float
    error_ms: float
    error_pct: float
    counted: bool
    why_not_counted: str | None
    passed: bool | None  # None when not counted
    failure: str | None

    def to_json(self) -> dict:
        return {
            "sphere": self.sphere, "quantity": self.quantity, "reference_ms": self.reference_ms,
            "measured_ms": self.measured_ms, "error_ms": self.error_ms, "error_pct": self.error_pct,
            **{f"roi_{k}": v for k, v in self.stats.to_json().items()},
            "counted": self.counted, "why_not_counted": self.why_not_counted, "passed": self.passed,
            "failure": self.failure,
        }


@dataclass(frozen=True)
class QuantityMetrics:
    """Aggregate agreement of one quantity over the counted spheres."""

    quantity: str
    n_counted: int
    r2: float
    slope: float
    intercept_ms: float
    lins_ccc: float
    bias_ms: float
    bias_pct: float
    ba_mean_pct: float
    ba_lower_pct: float
    ba_upper_pct: float
    max_abs_error_pct: float
    mean_cv_pct: float
    tolerance_pct: float
    passed: bool

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Evaluation:
    """Per-sphere results (both quantities), aggregate metrics per quantity, the verdict and its reasons."""

    spheres: list[SphereResult]
    metrics: dict[str, QuantityMetrics]
    passed: bool
    failures: list[str] = field(default_factory=list)

    def sphere(self, sphere: int, quantity: str) -> SphereResult:
        return next(r for r in self.spheres if r.sphere == sphere and r.quantity == quantity)


def _sphere_result(sphere: int, quantity: str, reference: Reference, stats: RoiStats, statistic: str,
                   measurable: MeasurableRange, tolerances: Tolerances) -> SphereResult:
    ref = reference.value(sphere, quantity)
    measured = stats.mean if statistic == "mean" else stats.median
    error = measured - ref
    error_pct = 100.0 * error / ref
    why_not = measurable.why_not(reference.value(sphere, "t1_ms"), reference.value(sphere, "t2_ms"))
    label = f"sphere {sphere} {QUANTITY_LABELS[quantity]}"
    failure = None
    if why_not is None:
        limit = tolerances.error_pct(quantity)
        if stats.mapped_fraction < tolerances.min_mapped_fraction:
            failure = (f"{label}: {100 * stats.mapped_fraction:.0f} % of the ROI mapped "
                       f"(< {100 * tolerances.min_mapped_fraction:.0f} %)")
        elif not abs(error_pct) <= limit:
            failure = f"{label}: error {error_pct:+.1f} % (|error| > {limit:g} %)"
    return SphereResult(sphere, quantity, ref, stats, measured, error, error_pct, why_not is None, why_not,
                        None if why_not else failure is None, failure)


def _quantity_metrics(quantity: str, results: list[SphereResult], tolerances: Tolerances) -> QuantityMetrics:
    counted = [r for r in results if r.counted and math.isfinite(r.measured_ms)]
    ref = np.array([r.reference_ms for r in counted])
    meas = np.array([r.measured_ms for r in counted])
    slope, intercept = linear_fit(ref, meas)
    ba = bland_altman_pct(ref, meas)
    errors = np.array([r.error_pct for r in counted])
    cvs = np.array([r.stats.cv_pct for r in counted])
    r2 = r_squared(ref, meas)
    n_expected = sum(r.counted for r in results)
    passed = (all(r.passed for r in results if r.counted) and len(counted) == n_expected
              and math.isfinite(r2) and r2 >= tolerances.min_r2)
    return QuantityMetrics(
        quantity=quantity, n_counted=len(counted), r2=r2, slope=slope, intercept_ms=intercept,
        lins_ccc=lins_ccc(ref, meas),
        bias_ms=float(np.mean(meas - ref)) if counted else math.nan,
        bias_pct=float(errors.mean()) if counted else math.nan,
        ba_mean_pct=ba[0], ba_lower_pct=ba[1], ba_upper_pct=ba[2],
        max_abs_error_pct=float(np.abs(errors).max()) if counted else math.nan,
        mean_cv_pct=float(np.nanmean(cvs)) if counted and np.isfinite(cvs).any() else math.nan,
        tolerance_pct=tolerances.error_pct(quantity), passed=bool(passed),
    )


def evaluate(
    stats: dict[int, dict[str, RoiStats]],
    reference: Reference,
    measurable: MeasurableRange | None = None,
    tolerances: Tolerances | None = None,
    statistic: str = "mean",
) -> Evaluation:
    """Compare ROI statistics {sphere: {quantity: RoiStats}} with the reference (module docstring)."""
    measurable, tolerances = measurable or MeasurableRange(), tolerances or Tolerances()
    if statistic not in ("mean", "median"):
        raise QAError(f"ROI statistic {statistic!r}: expected 'mean' or 'median'")
    spheres = [
        _sphere_result(n, q, reference, stats[n][q], statistic, measurable, tolerances)
        for q in QUANTITIES for n in sorted(stats)
    ]
    metrics = {q: _quantity_metrics(q, [r for r in spheres if r.quantity == q], tolerances) for q in QUANTITIES}
    failures = [r.failure for r in spheres if r.failure]
    for q, m in metrics.items():
        if not (math.isfinite(m.r2) and m.r2 >= tolerances.min_r2):
            failures.append(f"{QUANTITY_LABELS[q]}: R^2 {format_r2(m.r2)} over {m.n_counted} spheres "
                            f"(< {tolerances.min_r2:g})")
    return Evaluation(spheres, metrics, all(m.passed for m in metrics.values()), failures)
