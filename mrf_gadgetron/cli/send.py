"""`mrf send`: a raw file to a Gadgetron server (or `mrf serve`), the images back into a map file; the
options of gadgetron_ismrmrd_client."""

from __future__ import annotations

import os
import sys

from mrf_gadgetron.cli import CliError, HelpFormatter

PORT_VARIABLE = "MRF_PORT"  # the default port of `mrf serve` and `mrf send` when set


def default_port() -> int:
    """$MRF_PORT, else Gadgetron's 9002."""
    from mrf_gadgetron.host.client import DEFAULT_PORT

    text = os.environ.get(PORT_VARIABLE, "")
    try:
        return int(text) if text.strip() else DEFAULT_PORT
    except ValueError:
        raise CliError(f"${PORT_VARIABLE} = {text!r} is not a port number") from None


def register(sub) -> None:
    p = sub.add_parser(
        "send", help="send a raw file to a Gadgetron server or `mrf serve` and write the images (a client)",
        description="The client side of the Gadgetron protocol, with gadgetron_ismrmrd_client's options: send "
        "the configuration (by name, or a local file inline), the header and the acquisitions of an ISMRMRD raw "
        "file, and write the images that come back as <group>/image_<series> (an existing file gets a new "
        "group, as the client appends). Server warnings are printed; a failed run exits 2 with the server's "
        "reason.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("-f", "--filename", required=True, metavar="SCAN.h5", help="ISMRMRD raw file")
    config = p.add_mutually_exclusive_group(required=True)
    config.add_argument("-c", "--config", metavar="NAME", help="configuration on the server, e.g. mrf_default.xml")
    config.add_argument("-C", "--config-local", metavar="FILE", help="a local configuration file, sent inline")
    p.add_argument("-a", "--address", default="127.0.0.1", help="server address")
    p.add_argument("-p", "--port", type=int, default=None, help="server port (default: $MRF_PORT, else 9002)")
    p.add_argument("-o", "--out", required=True, metavar="MAPS.h5", help="image file to write or add a group to")
    p.add_argument("-G", "--group", default=None, help="image group (default: date and time, as the client)")
    p.add_argument("--force", action="store_true", help="replace the group of the same name in the image file")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S", help="longest silence from the server")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="keep trying to connect this long (a server that is still starting)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from mrf_core.io.map_images import check_new_group, write_images
    from mrf_gadgetron.cli.simulate import _check_writable
    from mrf_gadgetron.host.client import send_scan

    _check_writable(args.out, "output")
    check_new_group(args.out, args.group, args.force)
    port = args.port if args.port is not None else default_port()
    if args.config_local:
        path = Path(args.config_local)
        if not path.is_file():
            raise CliError(f"configuration file {path} does not exist")
        config, inline = path.read_text(), True
    else:
        config, inline = args.config, False
    images = send_scan(args.filename, config, args.address, port, inline,
                       on_text=lambda t: print(f"server: {t}", file=sys.stderr), timeout_s=args.timeout,
                       connect_s=args.connect_timeout)
    if not images:
        raise CliError(f"the server returned no images for {args.filename}")
    group = write_images(args.out, images, args.group, args.force)
    series = sorted({image.image_series_index for image in images})
    print(f"wrote {args.out} (group {group!r}): {len(images)} images, series {', '.join(map(str, series))}")
    return 0
