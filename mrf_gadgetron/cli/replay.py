"""`mrf replay`: run a Gadgetron stream configuration on a raw file without Gadgetron (mrf_gadgetron.host)."""

from __future__ import annotations

import sys
from pathlib import Path

from mrf_gadgetron.cli import HelpFormatter


def register(sub) -> None:
    p = sub.add_parser(
        "replay",
        help="run a raw ISMRMRD file through a Gadgetron stream configuration, without Gadgetron",
        description="Start each <external> node of the configuration as its own `python -m gadgetron` process "
        "(as Gadgetron does), send it the node's configuration, the file's header and acquisitions, relay items "
        "between the stages, and write the images that come back like gadgetron_ismrmrd_client "
        "(<group>/image_<series>). Stage warnings are printed; any failure exits 2 with the stage's reason.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("raw", metavar="SCAN.h5", help="ISMRMRD raw file")
    p.add_argument("-c", "--config", required=True, metavar="XML",
                   help="stream configuration: a file, or a name in the configuration folder (e.g. mrf_default.xml)")
    p.add_argument("-o", "--out", required=True, metavar="MAPS.h5", help="image file to write or add a group to")
    p.add_argument("--png", default=None, metavar="FILE", help="also write a figure of the T1, T2 and PD maps")
    p.add_argument("-G", "--group", default=None, help="image group (default: date and time, as the client)")
    p.add_argument("--force", action="store_true", help="replace the group of the same name in the image file "
                   "(an existing file otherwise gets a new group, as gadgetron_ismrmrd_client appends)")
    p.add_argument("--io-timeout", type=float, default=600.0, metavar="S",
                   help="longest silence allowed on a stage's socket")
    p.set_defaults(func=run)


def save_maps_png(map_path: str | Path, png_path: str | Path, truth=None, title: str | None = None) -> None:
    """T1, T2 and PD maps (one row per slice, colour bars; unmapped voxels black), and below them the
    true maps when a simulated scan's phantom (mrf_core.sim.phantoms.Phantom) is given."""
    import matplotlib
    import numpy as np
    from matplotlib import colors

    from mrf_core.io.map_images import read_map_file
    from mrf_core.plotting import new_subplots, save_figure

    map_file = read_map_file(map_path)
    maps = map_file.maps
    columns = (("t1_ms", "T1 (ms)", "magma", True), ("t2_ms", "T2 (ms)", "viridis", True),
               ("pd", "PD (a.u.)", "gray", False))
    rows = [(f"slice {s}", {k: maps[k][i] for k, *_ in columns if k in maps}) for i, s in enumerate(map_file.slices)]
    if truth is not None:
        for s in range(truth.n_slices):
            inside = truth.mask[s]
            rows.append((f"truth, slice {s}", {k: np.where(inside, getattr(truth, k)[s], np.nan) for k, *_ in columns}))
    fig, axes = new_subplots(len(rows), len(columns), figsize=(4.2 * len(columns), 3.6 * len(rows)), squeeze=False)
    for c, (key, label, cmap, log_scale) in enumerate(columns):
        if key == "pd":  # each row on its own scale: PD has arbitrary units
            scales = [None] * len(rows)
        else:  # one scale per quantity, shared by maps and truth; logarithmic, as relaxation times span decades
            finite = np.concatenate([np.ravel(row[key]) for _, row in rows if key in row])
            finite = finite[np.isfinite(finite) & (finite > 0)]
            low, high = np.percentile(finite, [1, 99]) if finite.size else (1.0, 10.0)
            scales = [colors.LogNorm(max(low, 1.0), max(high, low * 1.01, 1.01))] * len(rows)
        for r, (name, row) in enumerate(rows):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if key not in row:
                ax.set_title(f"{label}: not in the file")
                continue
            values = np.ma.masked_invalid(np.where(np.asarray(row[key]) > 0, row[key], np.nan) if log_scale
                                          else np.asarray(row[key], dtype=float))
            shown = ax.imshow(values, cmap=matplotlib.colormaps[cmap].with_extremes(bad="black"), norm=scales[r])
            ax.set_title(f"{label}, {name}")
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    save_figure(fig, png_path)


def run(args) -> int:
    from mrf_core.io.map_images import check_new_group
    from mrf_gadgetron.cli.simulate import _check_writable
    from mrf_gadgetron.host.replay import replay

    _check_writable(args.out, "output")
    check_new_group(args.out, args.group, args.force)
    if args.png:
        _check_writable(args.png, "figure")
    from mrf_gadgetron.host.stream_config import find_config

    config = find_config(args.config)
    from mrf_gadgetron.host.chain import ChainOptions

    result = replay(args.raw, config, args.out, args.group, on_text=lambda t: print(f"warning: {t}", file=sys.stderr),
                    options=ChainOptions(io_s=args.io_timeout), force=args.force)
    series = ", ".join(f"series {k}: {v}" for k, v in sorted(result.series.items()))
    print(f"wrote {result.path} (group {result.group!r}): {result.n_images} images ({series})")
    print(result.chain.table())
    if args.png:
        save_maps_png(result.path, args.png, title=f"{Path(args.raw).name} through {Path(config.source).name}")
        print(f"wrote {args.png}")
    return 0
