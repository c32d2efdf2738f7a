"""Figures a person would rather look at than read: fingerprints, dictionaries, maps (PNG, Agg).

Figures are matplotlib.figure.Figure objects with their own Agg canvas (`new_figure`): pyplot is not
used and matplotlib's backend is never set, so plotting from a notebook or another application leaves
its backend and its pyplot figures alone.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mrf_core.io.atomic import atomic_path
from mrf_core.physics.sequence import FispSchedule

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def save_figure(fig, path: str | Path) -> None:
    """Save a matplotlib figure atomically (PNG by the file's suffix); a pyplot figure is closed too."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
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
