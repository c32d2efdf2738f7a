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
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ismrmrd

from mrf_gadgetron.host.chain import ChainError, ChainOptions, InputError, run_chain
from mrf_gadgetron.host.messages import (
    Limits,
    MessageId,
    MessageReader,
    PeerClosed,
    WireError,
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
    resolve_config_name,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    """config_dir: where configuration names resolve; client_timeout_s: longest silence from a client;
    drain_s: how long to keep reading (and discarding) a client's data after its scan failed."""

    config_dir: Path = field(default_factory=default_config_dir)
    max_connections: int = 2
    client_timeout_s: float = 120.0
    drain_s: float = 30.0
    limits: Limits = Limits()
    chain: ChainOptions = ChainOptions()


class ClientChannel:
    """The client's socket: messages in (bounded), and serialized sends from several threads."""

    def __init__(self, sock: socket.socket, peer: str, settings: ServerSettings):
        self.sock = sock
        self.peer = peer
        self.reader = MessageReader(sock, peer, settings.limits)
        self._lock = threading.Lock()
        self.closed = False  # the client's CLOSE arrived
        self.broken = False  # framing lost: nothing more can be read

    def send(self, data: bytes) -> None:
        with self._lock:
            send(self.sock, data, self.peer)

    def send_text(self, text: str) -> None:
        self.send(encode_string(MessageId.TEXT, text))

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
            return load_stream_config(resolve_config_name(name, settings.config_dir))
        if mid == MessageId.CONFIG:
            text = self.reader.read_string(settings.limits.config_bytes, "configuration text").rstrip("\0")
            return parse_stream_config(text, "the configuration sent by the client")
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
        try:
            return ismrmrd.xsd.CreateFromDocument(xml)
        except Exception as exc:  # xsdata raises several kinds for malformed XML
            raise WireError(f"the ISMRMRD header does not parse: {str(exc).splitlines()[0][:300]}") from exc

    def items(self, accepted: set[int]):
        """The client's items until its CLOSE; bad messages raise InputError."""
        while True:
            try:
                mid = self.skip_texts()
                if mid == MessageId.CLOSE:
                    self.closed = True
                    return
                if mid not in accepted:
                    self.broken = True
                    raise WireError(f"unexpected message id {message_name(mid)}: the configuration's readers accept "
                                    f"{', '.join(message_name(m) for m in sorted(accepted))}")
                item = self.reader.read_item(mid)
            except WireError as exc:
                self.broken = True
                raise InputError(str(exc)) from exc
            yield item

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
        except (WireError, OSError):
            self.broken = True


def handle_connection(sock: socket.socket, peer: str, settings: ServerSettings) -> str:
    """Serve one client connection to its end; returns a one-line outcome for the log."""
    sock.settimeout(settings.client_timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = ClientChannel(sock, peer, settings)
    started = time.perf_counter()
    try:
        config = client.read_config(settings)
        if config is None:
            client.send_close()
            return "closed before sending a configuration"
        header = client.read_header(settings)

        def warn(stage: str, level: str, message: str) -> None:
            try:
                client.send_text(f"[{stage}] {level}: {message}")
            except WireError:
                pass  # the client went away; the chain notices when it sends the next image

        report = run_chain(config, header, client.items(config.input_ids), client.send_item, warn, settings.chain)
        client.send_close()
        return f"{config.source}: {report.delivered} images in {time.perf_counter() - started:.1f} s"
    except (PeerClosed, WireError, StreamConfigError, ChainError, OSError) as exc:
        reason = str(exc)
    except Exception as exc:  # a bug here must not take the server down
        log.exception("%s: unexpected failure", peer)
        reason = f"internal error: {exc!r}"
    try:
        client.send_text(f"ERROR: {reason}")
        client.send_close()
        if not (client.closed or client.broken):
            client.drain(settings.drain_s)
    except (WireError, OSError):
        pass
    return f"failed: {reason}"


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: MrfServer = self.server  # type: ignore[assignment]
        peer = f"client {self.client_address[0]}:{self.client_address[1]}"
        if not server.slots.acquire(blocking=False):
            log.warning("%s: refused, %d connections already running", peer, server.settings.max_connections)
            try:
                busy = f"ERROR: server busy ({server.settings.max_connections} scans running); try again later"
                self.request.sendall(encode_string(MessageId.TEXT, busy) + encode_id(MessageId.CLOSE))
            except OSError:
                pass
            return
        try:
            log.info("%s: connected", peer)
            log.info("%s: %s", peer, handle_connection(self.request, peer, server.settings))
        finally:
            server.slots.release()


class MrfServer(socketserver.ThreadingTCPServer):
    """`MrfServer((host, port), settings).serve_forever()`; port 0 picks a free one (see .port)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], settings: ServerSettings | None = None):
        self.settings = settings or ServerSettings()
        self.slots = threading.BoundedSemaphore(self.settings.max_connections)
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]
