"""The QA report: one self-contained HTML file (figures embedded as base64 PNG), results.json, and the
summary figure that the scanner shows (also as an RGB array for the QA gadget).

Figures: the T1/T2/PD maps with the ROI outlines and sphere numbers (mrf_core.plotting.draw_map: the
project's fixed windows and colour maps, mm axes, orientation); measured vs reference on log-log axes
with the identity line and the tolerance band; Bland-Altman plots of the relative difference; the summary: the verdict
and each sphere's error against its tolerance. Spheres not counted (not measurable) are hollow/grey.
Figures are mrf_core.plotting.new_figure figures: no pyplot, matplotlib's backend untouched.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from mrf_core.io.atomic import atomic_write_text, check_writable
from mrf_core.plotting import DEFAULT_STYLE, FigureStyle, bbox_inches, draw_map, new_figure, new_subplots
from mrf_core.qa.analysis import QAResult
from mrf_core.qa.metrics import QUANTITY_LABELS, format_r2
from mrf_core.qa.references import QUANTITIES

PASS_COLOUR, FAIL_COLOUR, EXCLUDED_COLOUR = "#1a9850", "#d73027", "#999999"


def _png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches=bbox_inches(fig))
    return buffer.getvalue()


def _verdict(result: QAResult) -> str:
    return "PASS" if result.passed else "FAIL"


def maps_figure(result: QAResult, style: FigureStyle = DEFAULT_STYLE):
    """T1, T2 and PD of the analysed slice (mrf_core.plotting.draw_map) with ROI outlines and sphere numbers."""
    from matplotlib.patches import Circle

    from mrf_core.io.map_images import ImageGeometry

    keys = [k for k in ("t1_ms", "t2_ms", "pd") if k in result.maps]
    fig = new_figure(figsize=(5.0 * len(keys), 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    grid = result.grid
    geometry = result.geometry or ImageGeometry((grid.nx * grid.dx_mm, grid.ny * grid.dy_mm, 0.0))
    where = f"slice {result.source['slice']} (of {result.source.get('n_slices', 1)}), with ROIs"
    for ax, key in zip(axes, keys, strict=True):
        draw_map(fig, ax, result.maps[key], key, geometry, style, where)
        for sphere, (x_mm, y_mm) in result.layout.centres_mm.items():
            counted = result.evaluation.sphere(sphere, "t1_ms").counted or result.evaluation.sphere(
                sphere, "t2_ms").counted
            colour = "#ff3b3b" if counted else "#dddddd"
            ax.add_patch(Circle((x_mm, y_mm), result.roi_radius_mm, fill=False, lw=1.0, ec=colour))
            offset = 1.6 * result.layout.sphere_radius_mm * 0.7
            ax.text(x_mm + offset, y_mm - offset, str(sphere), color=colour, fontsize=8, ha="center", va="center")
    return fig


def agreement_figure(result: QAResult):
    """Measured vs reference (log-log) with the identity line and the tolerance band, T1 and T2."""
    fig, axes = new_subplots(1, 2, figsize=(10, 4.6))
    for ax, quantity in zip(axes, QUANTITIES, strict=True):
        results = [r for r in result.evaluation.spheres if r.quantity == quantity and np.isfinite(r.measured_ms)]
        metrics = result.evaluation.metrics[quantity]
        refs = np.array([r.reference_ms for r in results] or [1.0, 10.0])
        line = np.geomspace(refs.min() / 1.5, refs.max() * 1.5, 50)
        tolerance = metrics.tolerance_pct / 100
        ax.fill_between(line, line * (1 - tolerance), line * (1 + tolerance), color=PASS_COLOUR, alpha=0.15,
                        label=f"+-{metrics.tolerance_pct:g} %")
        ax.plot(line, line, color="0.3", lw=1, label="identity")
        for r in results:
            colour = EXCLUDED_COLOUR if not r.counted else PASS_COLOUR if r.passed else FAIL_COLOUR
            ax.plot(r.reference_ms, r.measured_ms, "o", ms=6, mec=colour, mfc=colour if r.counted else "none")
            ax.annotate(str(r.sphere), (r.reference_ms, r.measured_ms), textcoords="offset points",
                        xytext=(4, -9), fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"reference {QUANTITY_LABELS[quantity]} (ms)")
        ax.set_ylabel(f"measured {QUANTITY_LABELS[quantity]} (ms)")
        ax.set_title(f"{QUANTITY_LABELS[quantity]}: R^2 {format_r2(metrics.r2)}, CCC {metrics.lins_ccc:.4f} "
                     f"({metrics.n_counted} spheres)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper left")
    return fig


def bland_altman_figure(result: QAResult):
    """Relative difference against the mean of measured and reference, with bias and 95 % limits."""
    fig, axes = new_subplots(1, 2, figsize=(10, 4.2))
    for ax, quantity in zip(axes, QUANTITIES, strict=True):
        metrics = result.evaluation.metrics[quantity]
        for r in result.evaluation.spheres:
            if r.quantity != quantity or not np.isfinite(r.measured_ms):
                continue
            mean = (r.measured_ms + r.reference_ms) / 2
            difference = 100 * (r.measured_ms - r.reference_ms) / mean
            colour = EXCLUDED_COLOUR if not r.counted else PASS_COLOUR if r.passed else FAIL_COLOUR
            ax.plot(mean, difference, "o", ms=6, mec=colour, mfc=colour if r.counted else "none")
            ax.annotate(str(r.sphere), (mean, difference), textcoords="offset points", xytext=(4, 3), fontsize=7)
        for value, style in ((metrics.ba_mean_pct, "-"), (metrics.ba_lower_pct, "--"), (metrics.ba_upper_pct, "--")):
            if math.isfinite(value):
                ax.axhline(value, color="0.3", ls=style, lw=1)
        ax.axhline(0, color="0.7", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(f"mean of measured and reference {QUANTITY_LABELS[quantity]} (ms)")
        ax.set_ylabel("difference (% of mean)")
        ax.set_title(f"{QUANTITY_LABELS[quantity]}: bias {metrics.ba_mean_pct:+.2f} %, limits "
                     f"{metrics.ba_lower_pct:+.2f} / {metrics.ba_upper_pct:+.2f} %")
        ax.grid(alpha=0.3)
    return fig


def summary_figure(result: QAResult):
    """The verdict, and each sphere's T1 and T2 error as bars against the tolerance band."""
    fig, axes = new_subplots(2, 1, figsize=(8, 6), sharex=True)
    verdict = _verdict(result)
    reference = result.reference
    fig.suptitle(f"NIST {reference.array} QA {reference.field_t:g} T: {verdict}", fontsize=18, fontweight="bold",
                 color=PASS_COLOUR if result.passed else FAIL_COLOUR)
    for ax, quantity in zip(axes, QUANTITIES, strict=True):
        metrics = result.evaluation.metrics[quantity]
        rows = [r for r in result.evaluation.spheres if r.quantity == quantity]
        errors = [r.error_pct if np.isfinite(r.error_pct) else 0.0 for r in rows]
        colours = [EXCLUDED_COLOUR if not r.counted else PASS_COLOUR if r.passed else FAIL_COLOUR for r in rows]
        ax.axhspan(-metrics.tolerance_pct, metrics.tolerance_pct, color=PASS_COLOUR, alpha=0.12)
        ax.bar([r.sphere for r in rows], errors, color=colours)
        for r in rows:
            if not np.isfinite(r.error_pct):
                ax.text(r.sphere, 0, "n/a", ha="center", va="bottom", fontsize=7)
        limit = max(2 * metrics.tolerance_pct, *(abs(e) * 1.15 for e in errors))
        ax.set_ylim(-limit, limit)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_ylabel(f"{QUANTITY_LABELS[quantity]} error (%)")
        ax.set_title(f"{QUANTITY_LABELS[quantity]}: R^2 {format_r2(metrics.r2)}, "
                     f"max |error| {metrics.max_abs_error_pct:.1f} %"
                     f" over {metrics.n_counted} spheres; tolerance +-{metrics.tolerance_pct:g} %", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[-1].set_xticks(range(1, 15))
    axes[-1].set_xlabel("sphere (grey: not measurable by this sequence, not counted)")
    return fig


def summary_rgb(result: QAResult) -> np.ndarray:
    """The summary figure rendered as uint8 RGB (height, width, 3), for an image series on the scanner."""
    fig = summary_figure(result)
    fig.set_dpi(100)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _sphere_table(result: QAResult) -> str:
    head = ["sphere", "on blob"] + [f"{QUANTITY_LABELS[q]} {c}" for q in QUANTITIES for c in
                                    ("reference (ms)", "mean (ms)", "median (ms)", "std (ms)", "voxels",
                                     "error (%)", "verdict")]
    rows = []
    for n in sorted(result.stats):
        cells = [str(n), "yes" if result.layout.found[n] else "no"]
        for q in QUANTITIES:
            r = result.evaluation.sphere(n, q)
            verdict = ("not counted: " + r.why_not_counted) if not r.counted else ("pass" if r.passed else "FAIL")
            cells += [_fmt(r.reference_ms, 2), _fmt(r.stats.mean), _fmt(r.stats.median), _fmt(r.stats.std),
                      f"{r.stats.n_mapped}/{r.stats.n_voxels}", _fmt(r.error_pct, 2), verdict]
        css = "" if all(result.evaluation.sphere(n, q).passed is not False for q in QUANTITIES) else ' class="fail"'
        rows.append(f"<tr{css}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f'<table id="spheres"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _metrics_table(result: QAResult) -> str:
    fields = [("spheres counted", "n_counted", 0), ("R^2", "r2", 5), ("slope", "slope", 4),
              ("intercept (ms)", "intercept_ms", 2), ("Lin's CCC", "lins_ccc", 5), ("bias (ms)", "bias_ms", 2),
              ("bias (%)", "bias_pct", 2), ("Bland-Altman lower (%)", "ba_lower_pct", 2),
              ("Bland-Altman upper (%)", "ba_upper_pct", 2), ("max |error| (%)", "max_abs_error_pct", 2),
              ("mean ROI CV (%)", "mean_cv_pct", 2), ("tolerance (%)", "tolerance_pct", 1), ("verdict", "passed", 0)]
    rows = []
    for label, name, digits in fields:
        cells = []
        for q in QUANTITIES:
            value = getattr(result.evaluation.metrics[q], name)
            cells.append(("PASS" if value else "FAIL") if name == "passed" else format_r2(value) if name == "r2"
                         else _fmt(value, digits) if isinstance(value, float) else str(value))
        rows.append(f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ('<table id="metrics"><thead><tr><th></th><th>T1</th><th>T2</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
tr.fail td { background: #fbe3e1; }
.verdict { font-size: 1.6em; font-weight: bold; }
.pass { color: #1a9850; } .failv { color: #d73027; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
"""


def _corrections_text(result: QAResult) -> str:
    """One sentence on how the T2 map (the B1-sensitive one) handled B1 and the slice profile."""
    c = result.corrections.get("t2_ms")
    if not c or c["b1_correction"] is None:
        return "B1 and slice profile: not stated by the maps."
    b1 = {"none": "not corrected (B1 = 1 assumed)", "map": f"corrected ({c['b1_source']})",
          "estimated": "estimated jointly"}.get(c["b1_correction"], c["b1_correction"])
    profile = "modelled (" + c["slice_profile"] + ")" if c["slice_profile_corrected"] else "not modelled"
    return f"B1: {b1}; slice profile: {profile}."


def render_html(result: QAResult, style: FigureStyle = DEFAULT_STYLE) -> str:
    """The report as one HTML document with every figure embedded (maps in `style`)."""
    reference = result.reference
    placement = result.layout
    verdict_css = "pass" if result.passed else "failv"
    items = lambda values: "".join(f"<li>{html.escape(v)}</li>" for v in values) or "<li>none</li>"  # noqa: E731
    figures = [
        (summary_figure(result), "summary: verdict and per-sphere errors"),
        (maps_figure(result, style), "maps with ROI outlines"),
        (agreement_figure(result), "measured vs reference, log-log"),
        (bland_altman_figure(result), "Bland-Altman"),
    ]
    images = "\n".join(f"<h3>{html.escape(alt)}</h3>{_img(_png_bytes(fig), alt)}" for fig, alt in figures)
    source = result.source
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>NIST {reference.array} phantom QA</title>
<style>{_STYLE}</style></head><body>
<h1>ISMRM/NIST phantom QA: {reference.array} array, {reference.field_t:g} T, batch {reference.batch}</h1>
<p class="verdict {verdict_css}" id="verdict">{_verdict(result)}</p>
<p>Maps: {html.escape(source["path"])} (group {html.escape(str(source["group"]))}, slice {source["slice"]},
mapper {html.escape(str(source.get("mapper")))}); analysed {html.escape(result.created)}.
{html.escape(reference.temperature_text())}
Software: {html.escape(result.software)}.
Spheres found on {placement.n_found} of 14 blobs; placement: shift ({placement.shift_mm[0]:.1f},
{placement.shift_mm[1]:.1f}) mm, rotation {placement.rotation_deg:.1f} deg, scale {placement.scale:.3f}
{"(mirrored)" if placement.mirrored else ""}; fit rms {placement.fit_rms_mm:.2f} mm; ROI radius
{result.roi_radius_mm:.1f} mm (sphere radius less {result.settings.erosion_mm:g} mm);
measured value = ROI {result.settings.statistic}. {html.escape(_corrections_text(result))}</p>
<h2>Failures</h2><ul id="failures">{items(result.evaluation.failures)}</ul>
<h2>Warnings</h2><ul id="warnings">{items(result.warnings)}</ul>
<h2>Agreement over the counted spheres</h2>{_metrics_table(result)}
<h2>Spheres</h2>{_sphere_table(result)}
<p>Counted spheres: reference T1 and T2 inside the mapper's range, T2 at least one mean TR and T1 at least
three mean TRs of the schedule; others are measured and shown but never fail the scan.</p>
<h2>Figures</h2>{images}
</body></html>
"""


def write_report(result: QAResult, out_dir: str | Path, style: FigureStyle = DEFAULT_STYLE) -> dict[str, Path]:
    """Write report.html, results.json and summary.png into out_dir (created); returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_writable(out_dir / "results.json")
    paths = {"html": out_dir / "report.html", "json": out_dir / "results.json", "summary": out_dir / "summary.png"}
    atomic_write_text(paths["json"], json.dumps(result.to_json(), indent=1, allow_nan=False) + "\n")
    from mrf_core.plotting import save_figure

    save_figure(summary_figure(result), paths["summary"])
    atomic_write_text(paths["html"], render_html(result, style))
    return paths
