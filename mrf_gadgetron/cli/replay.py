"""`mrf replay`: run a Gadgetron stream configuration on a raw file without Gadgetron (mrf_gadgetron.host)."""

from __future__ import annotations

import sys
from pathlib import Path

from mrf_gadgetron.cli import HelpFormatter, add_figure_arguments


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
    add_figure_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from mrf_core.io.map_images import check_new_group
    from mrf_core.plotting import FigureStyle, plot_map_file
    from mrf_gadgetron.cli.simulate import _check_writable
    from mrf_gadgetron.host.replay import replay

    _check_writable(args.out, "output")
    check_new_group(args.out, args.group, args.force)
    if args.png:
        _check_writable(args.png, "figure")
        style = FigureStyle.from_options(args.linear, args.window)  # a bad window fails before the work
    from mrf_gadgetron.host.stream_config import find_config

    config = find_config(args.config)
    from mrf_gadgetron.host.chain import ChainOptions

    result = replay(args.raw, config, args.out, args.group, on_text=lambda t: print(f"warning: {t}", file=sys.stderr),
                    options=ChainOptions(io_s=args.io_timeout), force=args.force)
    series = ", ".join(f"series {k}: {v}" for k, v in sorted(result.series.items()))
    print(f"wrote {result.path} (group {result.group!r}): {result.n_images} images ({series})")
    print(result.chain.table())
    if args.png:
        plot_map_file(result.path, args.png, title=f"{Path(args.raw).name} through {Path(config.source).name}",
                      style=style)
        print(f"wrote {args.png}")
    return 0
