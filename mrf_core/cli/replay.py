"""`mrf replay`: run a Gadgetron stream configuration on a raw file without Gadgetron (mrf_core.wire)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "replay",
        help="run a raw ISMRMRD file through a Gadgetron stream configuration, without Gadgetron",
        description="Start each <external> node of the configuration as its own `python -m gadgetron` process "
        "(as Gadgetron does), send it the node's configuration, the file's header and acquisitions, relay items "
        "between the stages, and write the images that come back like gadgetron_ismrmrd_client "
        "(<group>/image_<series>). Stage warnings are printed; any failure exits 2 with the stage's reason.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("raw", metavar="SCAN.h5", help="ISMRMRD raw file")
    p.add_argument("-c", "--config", required=True, metavar="XML",
                   help="stream configuration: a file, or a name in the configuration folder (e.g. mrf_default.xml)")
    p.add_argument("-o", "--out", required=True, metavar="MAPS.h5", help="image file to write")
    p.add_argument("--png", default=None, metavar="FILE", help="also write a figure of the T1, T2 and PD maps")
    p.add_argument("-G", "--group", default=None, help="image group (default: date and time, as the client)")
    p.add_argument("--io-timeout", type=float, default=600.0, metavar="S",
                   help="longest silence allowed on a stage's socket")
    p.add_argument("--quiet", action="store_true", help="do not print the stages' log lines")
    p.set_defaults(func=run)


def load_config(spec: str):
    """A configuration from a path, else by name from the configuration folder."""
    from mrf_core.wire.stream_config import load_stream_config, resolve_config_name

    path = Path(spec)
    return load_stream_config(path if path.exists() or path.parent != Path(".") else resolve_config_name(spec))


def save_maps_png(map_path: str | Path, png_path: str | Path, truth=None, title: str | None = None) -> None:
    """T1, T2 and PD maps (one row per slice, colour bars; unmapped voxels black), and the truth's
    maps below when a GroundTruth is given."""
    import matplotlib
    import numpy as np

    from mrf_core.map_images import read_map_file
    from mrf_core.plotting import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = read_map_file(map_path).maps
    columns = (("t1_ms", "T1 (ms)", "magma"), ("t2_ms", "T2 (ms)", "viridis"), ("pd", "PD (a.u.)", "gray"))
    rows = [(f"slice {s}", {k: maps[k][s] for k, _, _ in columns if k in maps}) for s in range(maps["t1_ms"].shape[0])]
    if truth is not None:
        for s in range(truth.t1_ms.shape[0]):
            mask = truth.mask[s] > 0
            rows.append((f"truth, slice {s}", {k: np.where(mask, getattr(truth, k)[s], np.nan)
                                               for k, _, _ in columns}))
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(4.2 * len(columns), 3.6 * len(rows)), squeeze=False)
    for r, (name, row) in enumerate(rows):
        for c, (key, label, cmap) in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if key not in row:
                ax.set_title(f"{label}: not in file")
                continue
            values = np.asarray(row[key], dtype=float)
            limits = (0.0, 2000.0) if key == "t1_ms" else (0.0, 250.0) if key == "t2_ms" else \
                (0.0, float(np.nanpercentile(values, 99)) if np.isfinite(values).any() else 1.0)
            colours = plt.get_cmap(cmap).copy()
            colours.set_bad("black")
            shown = ax.imshow(np.ma.masked_invalid(values), cmap=colours, vmin=limits[0], vmax=limits[1])
            ax.set_title(f"{label}, {name}")
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    save_figure(fig, png_path)


def run(args) -> int:
    from mrf_core.cli.simulate import _check_writable
    from mrf_core.wire.replay import ReplayError, replay

    _check_writable(args.out, "output")
    if args.png:
        _check_writable(args.png, "figure")
    config = load_config(args.config)
    if args.quiet:
        import logging

        logging.getLogger("mrf_core.wire").setLevel(logging.WARNING)
    from mrf_core.wire.chain import ChainOptions

    try:
        result = replay(args.raw, config, args.out, args.group, on_text=lambda t: print(f"warning: {t}",
                                                                                           file=sys.stderr),
                        options=ChainOptions(io_s=args.io_timeout))
    except ReplayError as exc:
        raise ValueError(str(exc)) from exc
    series = ", ".join(f"series {k}: {v}" for k, v in sorted(result.series.items()))
    print(f"wrote {result.path} (group {result.group!r}): {result.n_images} images ({series})")
    print(result.chain.table())
    if args.png:
        save_maps_png(result.path, args.png, title=f"{Path(args.raw).name} through {Path(config.source).name}")
        print(f"wrote {args.png}")
    return 0
