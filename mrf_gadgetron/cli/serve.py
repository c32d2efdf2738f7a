"""`mrf serve`: the Gadgetron client protocol on a TCP port, for gadgetron_ismrmrd_client or an MRD client."""

from __future__ import annotations

import argparse
import ipaddress
import logging

from mrf_gadgetron.cli import CliError

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the Gadgetron client protocol (gadgetron_ismrmrd_client, MRD/FIRE clients) without Gadgetron",
        description="Accept Gadgetron client connections: a configuration by name (resolved only inside the "
        "configuration folder) or inline, the header, acquisitions; images come back, errors as a TEXT message "
        "then CLOSE. Each connection runs its stages in its own processes. Example: "
        "gadgetron_ismrmrd_client -p 9002 -c mrf_default.xml -f scan.h5 -o maps.h5",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default)")
    p.add_argument("--port", type=int, default=9002, help="TCP port (0: any free port)")
    p.add_argument("--config-dir", default=None, metavar="DIR",
                   help="folder that configuration names resolve in (default: $MRF_CONFIG_DIR, else the "
                   "checkout's config_xml/)")
    p.add_argument("--max-connections", type=int, default=2, help="scans run at once; more are refused")
    p.add_argument("--client-timeout", type=float, default=120.0, metavar="S", help="longest silence from a client")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from mrf_gadgetron.host.server import MrfServer, ServerSettings
    from mrf_gadgetron.host.stream_config import default_config_dir

    folder = Path(args.config_dir) if args.config_dir else default_config_dir()
    if not folder.is_dir():
        raise OSError(f"configuration folder {folder} does not exist (use --config-dir or $MRF_CONFIG_DIR)")
    if args.max_connections < 1:
        raise CliError(f"--max-connections {args.max_connections} must be >= 1")
    settings = ServerSettings(config_dir=folder, max_connections=args.max_connections,
                              client_timeout_s=args.client_timeout)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        log.warning("listening on %s: reachable from other machines; the protocol has no authentication", args.host)
    with MrfServer((args.host, args.port), settings) as server:
        names = ", ".join(sorted(p.name for p in folder.glob("*.xml"))) or "none yet"
        print(f"mrf serve: listening on {args.host}:{server.port}; configurations in {folder}: {names}", flush=True)
        server.serve_forever()
    return 0
