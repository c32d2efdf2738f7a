"""`mrf serve`: the Gadgetron client protocol on a TCP port, for gadgetron_ismrmrd_client or an MRD client."""

from __future__ import annotations

import errno
import ipaddress
import logging

from mrf_gadgetron.cli import CliError, HelpFormatter

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the Gadgetron client protocol (gadgetron_ismrmrd_client, MRD/FIRE clients) without Gadgetron",
        description="Accept Gadgetron client connections: a configuration by name (resolved only inside the "
        "configuration folder) or inline, the header, acquisitions; images come back, errors as a TEXT message "
        "then CLOSE. Each connection runs its stages in its own processes. Example: "
        "gadgetron_ismrmrd_client -p 9002 -c mrf_default.xml -f scan.h5 -o maps.h5",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default)")
    p.add_argument("--port", type=int, default=None, help="TCP port (0: any free port; default: $MRF_PORT, else 9002)")
    p.add_argument("--config-dir", default=None, metavar="DIR",
                   help="folder that configuration names resolve in (default: $MRF_CONFIG_DIR, else the "
                   "checkout's config_xml/)")
    p.add_argument("--max-connections", type=int, default=2, help="scans run at once; more are refused")
    p.add_argument("--client-timeout", type=float, default=120.0, metavar="S", help="longest silence from a client")
    p.add_argument("--handshake-timeout", type=float, default=30.0, metavar="S",
                   help="time from connecting to a complete header (configuration and header messages)")
    p.add_argument("--min-rate", type=float, default=16 * 1024, metavar="BYTES_PER_S",
                   help="a message once started must arrive at this rate or faster, after --rate-grace (0: any rate)")
    p.add_argument("--rate-grace", type=float, default=10.0, metavar="S",
                   help="seconds a message may take before --min-rate applies")
    p.add_argument("--max-memory", type=float, default=None, metavar="MIB",
                   help="MiB of client items held in memory by all connections together; work beyond it is "
                   "refused (default: half of the machine's memory)")
    p.add_argument("--allow", action="append", default=None, metavar="MODULE:TARGET",
                   help="a stage that configurations may run, repeatable: MODULE:TARGET, MODULE:* or a module "
                   "prefix (default: the project's gadgets.reconstruct:reconstruct, gadgets.map_network:map_network, "
                   "gadgets.map_dictionary:map_dictionary, gadgets.emit:emit, gadgets.qa:qa; given entries are "
                   "added to these)")
    p.add_argument("--max-nodes", type=int, default=8, help="stream nodes (stage processes) per configuration")
    p.add_argument("--max-stages", type=int, default=None,
                   help="stage processes of all connections together (default: --max-connections x --max-nodes)")
    p.add_argument("--no-inline", action="store_true",
                   help="refuse configurations sent inline by clients (message 2); names only")
    p.add_argument("--distributed-worker", action="store_true",
                   help="serve a Gadgetron <distributed> node (config_xml/mrf_distributed.xml) rather than clients: "
                   "errors as ERROR messages (the node refuses TEXT), warnings only in this log, connections "
                   "beyond --max-connections wait instead of being refused, and an <execute> that arrives "
                   "without its target (Gadgetron drops it) runs the target --allow names for its module")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from mrf_gadgetron.cli.send import default_port
    from mrf_gadgetron.host.server import DEFAULT_ALLOW, MrfServer, ServerSettings, default_max_memory
    from mrf_gadgetron.host.stream_config import default_config_dir

    if args.port is None:
        args.port = default_port()
    folder = Path(args.config_dir) if args.config_dir else default_config_dir()
    if not folder.is_dir():
        raise OSError(f"configuration folder {folder} does not exist (use --config-dir or $MRF_CONFIG_DIR)")
    if args.max_connections < 1:
        raise CliError(f"--max-connections {args.max_connections} must be >= 1")
    for name, value in (("--max-nodes", args.max_nodes), ("--max-stages", args.max_stages)):
        if value is not None and value < 1:
            raise CliError(f"{name} {value} must be >= 1")
    for entry in args.allow or ():
        module = entry.split(":", 1)[0]
        if not module or not all(part.isidentifier() for part in module.split(".")):
            raise CliError(f"--allow {entry!r}: expected MODULE:TARGET, MODULE:* or a module prefix")
    memory = default_max_memory() if args.max_memory is None else int(args.max_memory * 2**20)
    settings = ServerSettings(config_dir=folder, max_connections=args.max_connections,
                              client_timeout_s=args.client_timeout, handshake_s=args.handshake_timeout,
                              min_rate=args.min_rate, rate_grace_s=args.rate_grace, max_memory_bytes=memory,
                              allow=DEFAULT_ALLOW + tuple(args.allow or ()), max_nodes=args.max_nodes,
                              max_stages=args.max_stages, inline_configs=not args.no_inline,
                              distributed_worker=args.distributed_worker)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if args.distributed_worker and args.no_inline:
        raise CliError("--distributed-worker needs inline configurations: a <distributed> node sends its stream "
                       "as message 2 (drop --no-inline)")
    if not loopback:
        log.warning("listening on %s: reachable from other machines; the protocol has no authentication", args.host)
    try:
        server = MrfServer((args.host, args.port), settings)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CliError(f"port {args.port} on {args.host} is in use (another mrf serve or Gadgetron?): stop it, "
                           "or choose another port with --port N (--port 0: any free port)") from exc
        raise
    with server:
        names = ", ".join(sorted(p.name for p in folder.glob("*.xml"))) or "none yet"
        print(f"mrf serve: listening on {args.host}:{server.port}; configurations in {folder}: {names}", flush=True)
        server.serve_forever()
    return 0
