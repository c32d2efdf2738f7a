"""Figures a person would rather look at than read: fingerprints, dictionaries, maps (PNG, Agg).

Figures are matplotlib.figure.Figure objects with their own Agg canvas (`new_figure`): pyplot is not
used and matplotlib's backend is never set, so plotting from a notebook or another application leaves
its backend and its pyplot figures alone.

Every map the project draws (demo, replay --png, simulate --png, the QA report) goes through `draw_map`:
Crameri's lipari for T1 and navia for T2 (the ISMRM quantitative MR study group's recommendation, from
cmcrameri), fixed windows (`MAP_DISPLAYS`; log by default, so 20 ms spheres and 2 s CSF share one scale
and two scans compare), titles in words with units, mm axes from the field of view, orientation letters
from read_dir/phase_dir, one stated slice per panel. Unmapped voxels are black; the colour scales start
above their near-black first tenth, so the shortest T1/T2 still differ from the background. PD is shown
relative to the median of the mapped object; it keeps the receive-coil shading (not corrected).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mrf_core.errors import MrfError
from mrf_core.io.atomic import atomic_path
from mrf_core.mapping.maps import QUANTITY_BY_KEY
from mrf_core.physics.sequence import FispSchedule

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mrf_core.io.map_images import ImageGeometry, MapFile


def new_figure(**kwargs) -> Figure:
    """A matplotlib Figure (Figure's keyword arguments: figsize, dpi, ...) drawn by its own Agg canvas,
    outside pyplot: nothing global changes, and nothing needs closing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def new_subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, dpi=None, **kwargs):
    """(figure, axes) as pyplot.subplots gives them (kwargs: Figure.subplots'), from `new_figure`."""
    fig = new_figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def bbox_inches(fig) -> str | None:
    """savefig's bbox_inches: 'tight' trims the margins but draws the figure twice; a figure with a layout
    engine (constrained) has its margins laid out already."""
    return None if fig.get_layout_engine() is not None else "tight"


def save_figure(fig, path: str | Path) -> None:
    """Save a matplotlib figure atomically (PNG by the file's suffix); a pyplot figure is closed too."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches=bbox_inches(fig))
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None and getattr(fig.canvas, "manager", None) is not None:
        pyplot.close(fig)


def plot_fingerprints(
    schedule: FispSchedule, signals: np.ndarray, labels: Sequence[str], path: str | Path
) -> None:
    """Flip-angle schedule above, |signal| of each fingerprint below, against time (s)."""
    time_s = np.cumsum(schedule.tr_ms) / 1000.0
    fig, (ax_fa, ax_sig) = new_subplots(2, 1, figsize=(9, 5.5), sharex=True, height_ratios=[1, 2])
    ax_fa.plot(time_s, schedule.flip_angle_deg, color="0.3", lw=1)
    ax_fa.set_ylabel("flip angle (deg)")
    ax_fa.set_title(f"{schedule.name}: {schedule.n_timepoints} TRs, TE {schedule.te_ms:g} ms")
    for signal, label in zip(np.atleast_2d(signals), labels, strict=True):
        ax_sig.plot(time_s, np.abs(signal), lw=1, label=label)
    ax_sig.set_xlabel("time (s)")
    ax_sig.set_ylabel("|signal| / M0")
    ax_sig.legend(fontsize=8, loc="upper right")
    ax_sig.grid(alpha=0.3)
    save_figure(fig, path)


def plot_basis(basis, schedule: FispSchedule, path: str | Path) -> None:
    """Residual energy by rank (log) beside the basis vectors over time."""
    fig, (ax_energy, ax_vectors) = new_subplots(1, 2, figsize=(11, 4))
    ranks = np.arange(1, min(30, basis.n_timepoints) + 1)
    ax_energy.semilogy(ranks, [max(basis.residual_energy(k), 1e-12) for k in ranks], "o-", ms=3)
    ax_energy.axvline(basis.rank, color="0.5", ls="--", lw=1)
    ax_energy.set_xlabel("rank")
    ax_energy.set_ylabel("residual energy (fraction)")
    ax_energy.set_title(f"SVD of the dictionary (rank {basis.rank} chosen)")
    ax_energy.grid(alpha=0.3, which="both")
    time_s = np.cumsum(schedule.tr_ms) / 1000.0
    for k in range(min(basis.rank, 5)):
        ax_vectors.plot(time_s, basis.vectors[:, k], lw=1, label=f"component {k + 1}")
    ax_vectors.set_xlabel("time (s)")
    ax_vectors.set_title("temporal basis vectors")
    ax_vectors.legend(fontsize=8)
    save_figure(fig, path)


class FigureError(MrfError):
    """A figure option that cannot be honoured (an unknown map, an empty or non-positive log window)."""


BACKGROUND = "black"  # unmapped voxels and the space around the object
LOW_END = 0.12  # colour scales start here: below it lipari/navia are too close to black to tell from background
PATIENT_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))  # +/- x, y, z of ISMRMRD's (DICOM's) LPS patient axes
CRAMERI = ("lipari", "navia", "vik")  # the colour maps taken from cmcrameri; others are matplotlib's


@dataclass(frozen=True)
class Window:
    """The values a colour scale spans, in the map's unit; log: a logarithmic scale."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.high > self.low):
            raise FigureError(f"window {self.low:g}:{self.high:g}: needs finite LOW < HIGH")
        if self.log and self.low <= 0:
            raise FigureError(f"window {self.low:g}:{self.high:g}: a log scale needs LOW > 0 (or use --linear)")

    def norm(self):
        from matplotlib.colors import LogNorm, Normalize

        return (LogNorm if self.log else Normalize)(self.low, self.high)

    def ticks(self) -> list[float] | None:
        """1-2-5 ticks of each decade inside a log window (matplotlib's default shows only the decades)."""
        if not self.log:
            return None
        decades = range(math.floor(math.log10(self.low)), math.ceil(math.log10(self.high)) + 1)
        ticks = [m * 10.0**e for e in decades for m in (1, 2, 5)]
        return [t for t in ticks if self.low * (1 - 1e-9) <= t <= self.high * (1 + 1e-9)]


@dataclass(frozen=True)
class MapDisplay:
    """How a map is shown: its name in words, unit, colour map (a Crameri name from cmcrameri, or
    matplotlib's), and its log window (None: the linear window only)."""

    name: str
    unit: str
    colormap: str
    log_window: Window | None = None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.unit})" if self.unit else self.name


def _scanner_window(key: str) -> Window:
    """The linear window the images carry for the scanner (mapping.maps.QUANTITIES: centre, width)."""
    centre, width = QUANTITY_BY_KEY[key].window
    return Window(max(centre - width / 2, 0.0), centre + width / 2)


RELATIVE_PD_WINDOW = Window(0.0, 1.5)
# Log windows: T1 10-5000 ms and T2 2-2000 ms cover the NIST spheres (T1 20-2000, T2 5-1000 ms at 3 T) and
# brain with CSF; linear windows (--linear) are the scanner's, the ones exported images carry.
MAP_DISPLAYS = {
    "t1_ms": MapDisplay("T1", "ms", "lipari", Window(10.0, 5000.0, log=True)),
    "t2_ms": MapDisplay("T2", "ms", "navia", Window(2.0, 2000.0, log=True)),
    "pd": MapDisplay("relative PD", "1 = median of the object", "gray"),
    "b1": MapDisplay("B1", "relative", "vik"),
    "quality": MapDisplay("match quality", "correlation", "gray"),
}
KEY_ALIASES = {"t1": "t1_ms", "t2": "t2_ms"}


@dataclass(frozen=True)
class FigureStyle:
    """Scale (log or linear) and windows overriding the defaults, per map key."""

    log: bool = True
    windows: dict[str, Window] = field(default_factory=dict)

    def window(self, key: str) -> Window:
        if key in self.windows:
            return self.windows[key]
        display = MAP_DISPLAYS[key]
        if self.log and display.log_window is not None:
            return display.log_window
        return RELATIVE_PD_WINDOW if key == "pd" else _scanner_window(key)

    @classmethod
    def from_options(cls, linear: bool = False, windows: Sequence[str] = ()) -> FigureStyle:
        """From the command line: --linear and --window Q=LOW:HIGH (Q: t1, t2, pd, b1, quality)."""
        parsed = {}
        for text in windows:
            name, _, span = text.partition("=")
            key = KEY_ALIASES.get(name.strip().lower(), name.strip().lower())
            low, _, high = span.partition(":")
            if key not in MAP_DISPLAYS or not high:
                raise FigureError(f"--window {text!r}: expected Q=LOW:HIGH with Q one of t1, t2, pd, b1, quality")
            try:
                parsed[key] = Window(float(low), float(high), log=not linear and MAP_DISPLAYS[key].log_window
                                     is not None)
            except ValueError as exc:
                raise FigureError(f"--window {text!r}: LOW and HIGH must be numbers") from exc
        return cls(log=not linear, windows=parsed)


DEFAULT_STYLE = FigureStyle()


@functools.cache
def crameri(name: str):
    """A Crameri colour map from the cmcrameri package's table (cmaps/<name>.txt: 256 RGB rows), read
    without importing the package, which imports pyplot and builds ~200 colour maps (1-3 s)."""
    from matplotlib.colors import ListedColormap

    spec = importlib.util.find_spec("cmcrameri")
    table = Path(spec.submodule_search_locations[0]) / "cmaps" / f"{name}.txt" if spec else None
    if table is None or not table.is_file():
        raise FigureError(f"colour map {name!r} not found: install cmcrameri >= 1.6 (pip install 'cmcrameri>=1.6')")
    return ListedColormap(np.loadtxt(table), name=name)


def colormap(key: str):
    """The map's colour scale without its near-black low end, unmapped (NaN) voxels in the background."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    name = MAP_DISPLAYS[key].colormap
    base = crameri(name) if name in CRAMERI else colormaps[name]
    start = LOW_END if key in ("t1_ms", "t2_ms") else 0.0
    colours = base(np.linspace(start, 1.0, 256))
    return ListedColormap(colours, name=f"{name}_from_{start:g}").with_extremes(bad=BACKGROUND)


def direction_letters(vector: Sequence[float]) -> str:
    """The patient directions a unit vector in LPS points to, strongest first: (1, 0, 0) 'L', (0, -0.8,
    0.6) 'AS'; components under 0.25 (15 deg) are left out."""
    v = np.asarray(vector, dtype=float)
    order = np.argsort(-np.abs(v), kind="stable")
    return "".join(PATIENT_LETTERS[i][0 if v[i] > 0 else 1] for i in order if abs(v[i]) >= 0.25)


def relative_pd(pd: np.ndarray) -> np.ndarray:
    """PD divided by its median over the mapped (finite, positive) voxels: 1 is the object's typical PD."""
    pd = np.asarray(pd, dtype=float)
    inside = np.isfinite(pd) & (pd > 0)
    return pd / np.median(pd[inside]) if inside.any() else pd


def draw_map(fig, ax, values: np.ndarray, key: str, geometry: ImageGeometry | None = None,
             style: FigureStyle = DEFAULT_STYLE, where: str = "") -> None:
    """One map panel: the colour scale of `key` in its window with a colour bar in its unit, mm axes
    about the slice centre (pixel (nx // 2, ny // 2), as the FFT places it) and the patient direction of
    each edge when `geometry` is given, and the title '<name>, <where>'."""
    display = MAP_DISPLAYS[key]
    window = style.window(key)
    values = relative_pd(values) if key == "pd" else np.asarray(values, dtype=float)
    ny, nx = values.shape
    if geometry is not None and min(geometry.fov_mm[:2]) <= 0:  # no field of view: pixels, no mm or directions
        geometry = None
    extent = None
    if geometry is not None:
        dx, dy = geometry.fov_mm[0] / nx, geometry.fov_mm[1] / ny
        left, top = (-(nx // 2) - 0.5) * dx, (-(ny // 2) - 0.5) * dy  # pixel edges: centres at (i - n // 2) * d
        extent = (left, left + nx * dx, top + ny * dy, top)
    shown = ax.imshow(np.ma.masked_invalid(values), cmap=colormap(key), norm=window.norm(), extent=extent,
                      interpolation="nearest")
    ax.set_facecolor(BACKGROUND)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label(display.label + (", log scale" if window.log else ""), fontsize=9)
    bar.ax.tick_params(labelsize=8)
    ticks = window.ticks()
    if ticks:
        bar.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
        bar.ax.minorticks_off()
    ax.set_title(f"{display.name}, {where}" if where else display.name, fontsize=10)
    if geometry is None:
        ax.set_xticks([])
        ax.set_yticks([])
        return
    ax.set_xlabel("mm", fontsize=8, labelpad=1)
    ax.set_ylabel("mm", fontsize=8, labelpad=1)
    ax.tick_params(labelsize=7)
    read, phase = geometry.read_dir, geometry.phase_dir
    edges = {(1.0, 0.5): direction_letters(read), (0.0, 0.5): direction_letters(-np.asarray(read)),
             (0.5, 0.0): direction_letters(phase), (0.5, 1.0): direction_letters(-np.asarray(phase))}
    for (x, y), letters in edges.items():
        ax.text(x, y, letters, transform=ax.transAxes, color="white", fontsize=9, fontweight="bold",
                ha="right" if x == 1.0 else "left" if x == 0.0 else "center",
                va="bottom" if y == 0.0 else "top" if y == 1.0 else "center")


MAP_COLUMNS = ("t1_ms", "t2_ms", "pd")


def maps_figure(map_file: MapFile, truth=None, title: str | None = None, style: FigureStyle = DEFAULT_STYLE):
    """T1, T2 and PD of every slice of a map file (one row per slice), and below them the true maps when a
    simulated scan's phantom (mrf_core.sim.phantoms.Phantom) is given, on the same windows."""
    rows = []
    n_slices = len(map_file.slices)
    for i, s in enumerate(map_file.slices):
        geometry = map_file.geometry.get(s)
        rows.append((f"slice {s} ({i + 1} of {n_slices})", {k: map_file.maps[k][i] for k in MAP_COLUMNS
                                                             if k in map_file.maps}, geometry))
    if truth is not None:
        like = next(iter(map_file.geometry.values()), None)
        for s in range(truth.n_slices):
            inside = truth.mask[s]
            rows.append((f"truth, slice {s}", {k: np.where(inside, getattr(truth, k)[s], np.nan)
                                              for k in MAP_COLUMNS}, map_file.geometry.get(s, like)))
    fig = new_figure(figsize=(4.6 * len(MAP_COLUMNS), 3.9 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(MAP_COLUMNS), squeeze=False)
    for r, (where, maps, geometry) in enumerate(rows):
        for c, key in enumerate(MAP_COLUMNS):
            if key in maps:
                draw_map(fig, axes[r, c], maps[key], key, geometry, style, where)
            else:
                axes[r, c].set_axis_off()
                axes[r, c].set_title(f"{MAP_DISPLAYS[key].name}: not in the file", fontsize=10)
    if title:
        fig.suptitle(title)
    return fig


def plot_map_file(map_path: str | Path, png_path: str | Path, truth=None, title: str | None = None,
                  style: FigureStyle = DEFAULT_STYLE) -> None:
    """`maps_figure` of a map file (the newest image group), saved as PNG."""
    from mrf_core.io.map_images import read_map_file

    save_figure(maps_figure(read_map_file(map_path), truth, title, style), png_path)

