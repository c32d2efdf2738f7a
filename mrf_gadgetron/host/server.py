"""A server speaking the Gadgetron client protocol, so `gadgetron_ismrmrd_client` or an MRD (FIRE) client
can run our configurations without Gadgetron.

Per connection: message 1 (a configuration name, resolved only inside the configuration folder) or 2
(inline XML); message 3 (the header); items (acquisitions, and whatever else the readers accept); 4
(close). TEXT messages from the client (which MRD clients may send) are logged and skipped; a trailing NUL
after the header or configuration text (sent by some MRD clients) is ignored. Back: images, TEXT (5) for
stage warnings, then CLOSE. Any failure is one TEXT message with the reason and then CLOSE, as Gadgetron's
RootErrorHandler sends them. Each connection runs its own stage processes in its own thread, so one failed
scan never touches another; a connection beyond `max_connections` gets a "busy" TEXT and CLOSE. Every
read has a timeout and every length a limit.

As a worker of a Gadgetron `<distributed>` node (`distributed_worker`, `mrf serve --distributed-worker`) the
peer is that node, which refuses TEXT: failures go back as ERROR (8, uint64 length) then CLOSE, warnings
stay in the log, a connection beyond `max_connections` waits for a slot, and an `<execute>` that arrives
without its target (Gadgetron's serializer drops it) runs the one target `allow` names for its module.

Hostile and careless clients (ServerSettings, `mrf serve` options):
- memory: items are read as their bytes arrive (never allocated at the claimed size), their declared bytes
  count against one server-wide budget (`max_memory_bytes`, default half of MemTotal) that refuses work
  beyond it, and each connection's garbage is collected when it ends, so large buffers go back to the OS;
- XML: a DOCTYPE or ENTITY declaration in a configuration or header is refused before parsing;
- time: the handshake (configuration and header) must be complete within `handshake_s`, and a message once
  started must arrive at `min_rate` bytes/s or more (after `rate_grace_s`), besides the silence timeout;
- code: only allowed stage targets run (`allow`: "module:target", "module:*", or a module prefix; default
  the project's gadgets), at most `max_nodes` per configuration and `max_stages` stage processes in all;
  inline configurations (message 2) are accepted, as Gadgetron accepts them, unless `inline_configs` is off
  (they can run only allowed targets either way);
- a client that leaves while its stages work stops them (its socket is watched once its CLOSE arrived);
- texts sent to clients never show server paths (directories are cut from any absolute path).
"""

from __future__ import annotations

import gc
import logging
import os
import select
import site
import socket
import socketserver
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ismrmrd

from mrf_gadgetron.host.chain import ChainError, ChainOptions, InputError, run_chain
from mrf_gadgetron.host.external import REPO_ROOT
from mrf_gadgetron.host.messages import (
    Limits,
    MemoryBudget,
    MessageId,
    MessageReader,
    PeerClosed,
    WireError,
    WireTimeout,
    encode_id,
    encode_item,
    encode_string,
    message_name,
    send,
)
from mrf_gadgetron.host.stream_config import (
    StreamConfig,
    StreamConfigError,
    default_config_dir,
    load_stream_config,
    parse_stream_config,
    refuse_doctype,
    resolve_config_name,
)

log = logging.getLogger(__name__)


DEFAULT_ALLOW = ("gadgets.reconstruct:reconstruct", "gadgets.map_network:map_network",
                 "gadgets.map_dictionary:map_dictionary", "gadgets.emit:emit", "gadgets.qa:qa")


def default_max_memory() -> int:
    """Half of the machine's memory (MemTotal in /proc/meminfo), else 4 GiB."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024 // 2
    except (OSError, ValueError, IndexError):
        pass
    return 4 * 2**30


def server_folders(settings: ServerSettings | None = None) -> list[str]:
    """The server's own folders, longest first: the checkout, the interpreter's prefixes and its
    site-packages, the home and working folders, the configuration folder."""
    folders = {str(REPO_ROOT), sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.expanduser("~"), os.getcwd(),
               *site.getsitepackages(), *sysconfig.get_paths().values()}
    if settings is not None:
        folders |= {str(settings.config_dir), str(Path(settings.config_dir).resolve())}
    return sorted((f.rstrip("/") for f in folders if f and f.rstrip("/")), key=len, reverse=True)


def public_text(text: str, folders: list[str] | None = None) -> str:
    """A text fit for a client: the server's folders (server_folders) cut from every path in it, so that
    "/srv/mrf/config_xml/x.xml" reads "x.xml". Paths the client itself sent (a model file it named)
    and the like are left as they are."""
    for folder in server_folders() if folders is None else folders:
        text = text.replace(folder + "/", "").replace(folder, "<server folder>")
    return text


def is_allowed(module: str, target: str, allow: tuple[str, ...]) -> bool:
    """Whether module:target may run: an entry "module:target" allows that target, "module:*" every
    target of the module, and an entry without ":" every module under that prefix ("gadgets" allows
    gadgets and gadgets.*)."""
    for entry in allow:
        if ":" in entry:
            mod, tgt = entry.split(":", 1)
            if mod == module and tgt in ("*", target):
                return True
        elif module == entry.rstrip(".") or module.startswith(entry.rstrip(".") + "."):
            return True
    return False


def sole_allowed_target(module: str, allow: tuple[str, ...]) -> str | None:
    """The one target `allow` names for `module` ("module:target"), else None: what a distributed worker
    runs for an `<execute>` that reached it without its target."""
    targets = {entry.split(":", 1)[1] for entry in allow if entry.split(":", 1)[0] == module and ":" in entry}
    return targets.pop() if len(targets) == 1 and "*" not in targets else None


@dataclass(frozen=True)
class ServerSettings:
    """config_dir: where configuration names resolve; client_timeout_s: longest silence from a client;
    drain_s: how long to keep reading (and discarding) a client's data after its scan failed;
    handshake_s: time from connecting to a complete header; min_rate: bytes/s a started message must
    arrive at after rate_grace_s (0: no minimum); max_memory_bytes: client items in memory, all
    connections together; allow: stage targets that may run (see is_allowed); max_nodes: stages per
    configuration; max_stages: stage processes in all connections together (None: max_connections x
    max_nodes); inline_configs: whether
    message 2 (a configuration sent by the client) is accepted."""

    config_dir: Path = field(default_factory=default_config_dir)
    max_connections: int = 2
    client_timeout_s: float = 120.0
    drain_s: float = 30.0
    handshake_s: float = 30.0
    min_rate: float = 16 * 1024
    rate_grace_s: float = 10.0
    max_memory_bytes: int = field(default_factory=default_max_memory)
    allow: tuple[str, ...] = DEFAULT_ALLOW
    max_nodes: int = 8
    max_stages: int | None = None
    inline_configs: bool = True
    distributed_worker: bool = False
    limits: Limits = Limits()
    chain: ChainOptions = ChainOptions()


class ServerState:
    """What connections share: the memory budget and the count of stage processes running."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.budget = MemoryBudget(settings.max_memory_bytes)
        self.stages = 0
        self._lock = threading.Lock()

    @property
    def max_stages(self) -> int:
        s = self.settings
        return s.max_stages if s.max_stages is not None else s.max_connections * s.max_nodes

    def take_stages(self, n: int) -> bool:
        with self._lock:
            if self.stages + n > self.max_stages:
                return False
            self.stages += n
            return True

    def give_stages(self, n: int) -> None:
        with self._lock:
            self.stages -= n


def check_allowed(config: StreamConfig, settings: ServerSettings) -> None:
    """StreamConfigError unless every node may run here and there are not too many."""
    if len(config.nodes) > settings.max_nodes:
        raise StreamConfigError(f"{config.source}: {len(config.nodes)} stream nodes; this server runs at most "
                                f"{settings.max_nodes} per configuration (mrf serve --max-nodes)")
    for node in config.nodes:
        if not is_allowed(node.module, node.target, settings.allow):
            raise StreamConfigError(
                f"{config.source}: stage {node.module}:{node.target} is not allowed on this server (allowed: "
                f"{', '.join(settings.allow) or 'none'}); a site allows its own with "
                f"`mrf serve --allow {node.module}:{node.target}` (ServerSettings.allow)")


class ClientChannel:
    """The client's socket: messages in (bounded), and serialized sends from several threads."""

    def __init__(self, sock: socket.socket, peer: str, settings: ServerSettings, budget: MemoryBudget | None = None):
        self.sock = sock
        self.peer = peer
        self.reader = MessageReader(sock, peer, settings.limits, budget, settings.min_rate, settings.rate_grace_s)
        self.folders = server_folders(settings)
        self.worker = settings.distributed_worker
        self._lock = threading.Lock()
        self.closed = False  # the client's CLOSE arrived
        self.broken = False  # framing lost: nothing more can be read

    def send(self, data: bytes) -> None:
        with self._lock:
            send(self.sock, data, self.peer)

    def send_text(self, text: str) -> None:
        self.send(encode_string(MessageId.TEXT, public_text(text, self.folders)))

    def send_error(self, reason: str) -> None:
        """A failure as the peer reads it: TEXT "ERROR: ..." for a client (as Gadgetron's RootErrorHandler),
        ERROR (8, uint64 length) for a distributed node (which reports it as the worker's error)."""
        if self.worker:
            self.send(encode_string(MessageId.ERROR, public_text(reason, self.folders), wide=True))
        else:
            self.send_text(f"ERROR: {reason}")

    def send_item(self, item) -> None:
        self.send(encode_item(item))

    def send_close(self) -> None:
        self.send(encode_id(MessageId.CLOSE))

    def next_id(self) -> int:
        try:
            return self.reader.read_id()
        except WireError:
            self.broken = True
            raise

    def read_config(self, settings: ServerSettings) -> StreamConfig | None:
        """Message 1 or 2; None when the client closes first."""
        mid = self.skip_texts()
        if mid == MessageId.CLOSE:
            self.closed = True
            return None
        if mid == MessageId.FILENAME:
            name = self.reader.read_config_name()
            log.info("%s: configuration %s", self.peer, name)
            path = resolve_config_name(name, settings.config_dir)
            return load_stream_config(path, path.name)
        if mid == MessageId.CONFIG:
            text = self.reader.read_string(settings.limits.config_bytes, "configuration text").rstrip("\0")
            if not settings.inline_configs:
                raise StreamConfigError("inline configurations (message 2) are not accepted by this server "
                                        "(mrf serve --no-inline); send a configuration name (message 1)")
            targets = (lambda module: sole_allowed_target(module, settings.allow)) if self.worker else None
            return parse_stream_config(text, "the configuration sent by the client", targets)
        self.broken = True
        raise WireError(f"expected a configuration (message 1 or 2) first, got message {message_name(mid)}")

    def skip_texts(self) -> int:
        """The next message id that is not a TEXT (MRD clients may send some; they are logged)."""
        mid = self.next_id()
        while mid == MessageId.TEXT:
            log.info("%s says: %s", self.peer, self.reader.read_string(self.reader.limits.text_bytes, "a text"))
            mid = self.next_id()
        return mid

    def read_header(self, settings: ServerSettings):
        mid = self.skip_texts()
        if mid != MessageId.HEADER:
            self.broken = True
            raise WireError(f"expected the ISMRMRD header (message 3) after the configuration, got {message_name(mid)}")
        xml = self.reader.read_string(settings.limits.header_bytes, "the ISMRMRD header").rstrip("\0")
        refused = refuse_doctype(xml, "the ISMRMRD header")
        if refused:
            raise WireError(refused)
        try:
            return ismrmrd.xsd.CreateFromDocument(xml)
        except Exception as exc:  # xsdata raises several kinds for malformed XML
            raise WireError(f"the ISMRMRD header does not parse: {str(exc).splitlines()[0][:300]}") from exc

    def items(self, accepted: set[int], on_close: threading.Event | None = None):
        """The client's items until its CLOSE (then `on_close` is set); bad messages raise InputError. Each
        item holds its part of the memory budget until the chain has taken it."""
        try:
            while True:
                try:
                    mid = self.skip_texts()
                    if mid == MessageId.CLOSE:
                        self.closed = True
                        if on_close is not None:
                            on_close.set()
                        return
                    if mid not in accepted:
                        self.broken = True
                        raise WireError(f"unexpected message id {message_name(mid)}: the configuration's readers "
                                        f"accept {', '.join(message_name(m) for m in sorted(accepted))}")
                    item = self.reader.read_item(mid)
                except WireError as exc:
                    self.broken = True
                    raise InputError(str(exc)) from None
                yield item
                del item
                self.reader.release()
        finally:
            self.reader.release()

    def watch_departure(self, armed: threading.Event, done: threading.Event, gone: threading.Event) -> None:
        """Once `armed` (the client's CLOSE arrived) and until `done`: set `gone` when the client has left.
        An end of stream may be a half-close by a client still reading: one TEXT probes it, and the reset
        that a closed socket answers with shows as an error on ours."""
        while not armed.wait(0.2):
            if done.is_set():
                return
        poller = select.poll()
        poller.register(self.sock, select.POLLIN | select.POLLHUP | select.POLLERR)
        probed = False
        while not done.is_set():
            events = poller.poll(200)
            if not events:
                continue
            if events[0][1] & (select.POLLHUP | select.POLLERR):
                gone.set()
                return
            try:
                data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                gone.set()
                return
            if not data and self.worker:  # a distributed node never half-closes: it is gone
                gone.set()
                return
            if not data and not probed:
                probed = True
                try:
                    self.send_text("[server] INFO: input complete; reconstructing")
                except (WireError, OSError):
                    gone.set()
                    return
            time.sleep(0.1)

    def drain(self, seconds: float) -> None:
        """Read and discard the rest of a client's messages (until CLOSE) for at most `seconds`, so that a
        client still sending when its scan failed can finish sending and read the error."""
        deadline = time.monotonic() + seconds
        strings = {MessageId.CONFIG: self.reader.limits.config_bytes, MessageId.HEADER: self.reader.limits.header_bytes,
                   MessageId.TEXT: self.reader.limits.text_bytes}
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.1, deadline - time.monotonic()))
                mid = self.next_id()
                if mid == MessageId.CLOSE:
                    self.closed = True
                    return
                if mid in strings:
                    self.reader.read_string(strings[mid], message_name(mid))
                elif mid == MessageId.FILENAME:
                    self.reader.read_config_name()
                else:
                    self.reader.read_item(mid)
                    self.reader.release()
        except (WireError, OSError):
            self.broken = True


def handle_connection(sock: socket.socket, peer: str, settings: ServerSettings,
                      state: ServerState | None = None, stats: dict | None = None) -> str:
    """Serve one client connection to its end; returns a one-line outcome for the log. `stats` gets
    "largest": the largest payload read (bytes)."""
    state = state or ServerState(settings)
    sock.settimeout(settings.client_timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = ClientChannel(sock, peer, settings, state.budget)
    started = time.perf_counter()
    stages = 0
    armed, done, gone = threading.Event(), threading.Event(), threading.Event()
    try:
        client.reader.deadline = time.monotonic() + settings.handshake_s
        client.reader.deadline_what = f"the handshake (configuration and header, {settings.handshake_s:g} s)"
        config = client.read_config(settings)
        if config is None:
            client.send_close()
            return "closed before sending a configuration"
        check_allowed(config, settings)
        header = client.read_header(settings)
        client.reader.deadline = None
        if not state.take_stages(len(config.nodes)):
            raise ChainError(f"server busy: {state.stages} stage processes running, at most {state.max_stages} "
                             f"(mrf serve --max-stages); try again later")
        stages = len(config.nodes)

        def warn(stage: str, level: str, message: str) -> None:
            if client.worker:
                log.warning("%s: [%s] %s: %s", peer, stage, level, message)
                return
            try:
                client.send_text(f"[{stage}] {level}: {message}")
            except WireError:
                pass  # the client went away; the departure watch or the next image notices

        watcher = threading.Thread(target=client.watch_departure, args=(armed, done, gone), daemon=True,
                                   name=f"watch {peer}")
        watcher.start()
        report = run_chain(config, header, client.items(config.input_ids, armed), client.send_item, warn,
                           settings.chain, stop=gone)
        client.send_close()
        return f"{config.source}: {report.delivered} images in {time.perf_counter() - started:.1f} s"
    except (PeerClosed, WireError, StreamConfigError, ChainError, OSError) as exc:
        reason = str(exc)
        if isinstance(exc, WireTimeout):
            client.broken = True  # too slow or silent mid-message: no draining (the slot is freed now)
    except Exception as exc:  # a bug here must not take the server down
        log.exception("%s: unexpected failure", peer)
        reason = f"internal error: {exc!r}"
    finally:
        done.set()
        client.reader.release()
        if stats is not None:
            stats["largest"] = client.reader.largest
        if stages:
            state.give_stages(stages)
    if gone.is_set():
        return f"the client left: {reason}"
    try:
        client.reader.deadline = None
        client.send_error(reason)
        client.send_close()
        if not (client.closed or client.broken):
            client.drain(settings.drain_s)
    except (WireError, OSError):
        pass
    return f"failed: {reason}"


def _linger(sock: socket.socket, seconds: float = 1.0, max_bytes: int = 16 * 2**20) -> None:
    """Close gently: end our side, then read and discard what the client still sends (briefly, boundedly)
    so that closing with unread data does not reset the connection before the client read our answer."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline, got = time.monotonic() + seconds, 0
        while got < max_bytes and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                return
            got += len(chunk)
    except OSError:
        pass


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: MrfServer = self.server  # type: ignore[assignment]
        peer = f"client {self.client_address[0]}:{self.client_address[1]}"
        busy = None
        if server.state.budget.full:
            busy = "ERROR: server busy (its memory budget is in use, mrf serve --max-memory); try again later"
        elif not server.slots.acquire(blocking=server.settings.distributed_worker):  # a node does not retry: wait
            busy = f"ERROR: server busy ({server.settings.max_connections} scans running); try again later"
        if busy is not None:
            log.warning("%s: refused: %s", peer, busy)
            message = (encode_string(MessageId.ERROR, busy.removeprefix("ERROR: "), wide=True)
                       if server.settings.distributed_worker else encode_string(MessageId.TEXT, busy))
            try:
                self.request.sendall(message + encode_id(MessageId.CLOSE))
            except OSError:
                pass
            return
        stats = {"largest": 0}
        try:
            log.info("%s: connected", peer)
            log.info("%s: %s", peer, handle_connection(self.request, peer, server.settings, server.state, stats))
        finally:
            _linger(self.request)
            server.slots.release()
            # A failed connection's buffers may sit in reference cycles (exceptions and their tracebacks)
            # that the collector, rarely triggered in a server, would keep for long: free them now.
            # A full collection holds the GIL for tens of ms in a process with torch loaded, so only
            # after connections that read large payloads (the thresholds keep the rest young).
            gc.collect(2 if stats["largest"] > 16 * 2**20 else 1)


class MrfServer(socketserver.ThreadingTCPServer):
    """`MrfServer((host, port), settings).serve_forever()`; port 0 picks a free one (see .port)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], settings: ServerSettings | None = None):
        self.settings = settings or ServerSettings()
        self.slots = threading.BoundedSemaphore(self.settings.max_connections)
        self.state = ServerState(self.settings)
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]
