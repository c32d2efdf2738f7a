"""The client side of the Gadgetron protocol, as gadgetron_ismrmrd_client speaks it: send a raw file to a
server (Gadgetron or `mrf serve`) and write the images that come back into a map file.

Sent: the configuration by name (message 1, 1024 bytes) or inline (2), the ISMRMRD header (3), the
file's acquisitions in file order (1008), CLOSE (4). Read meanwhile, on a thread of its own (the server
may answer before all is sent, e.g. with an error): images (1022), TEXT (5, warnings and errors, to
`on_text`), CLOSE. A TEXT that starts with "ERROR:" fails the run, as Gadgetron's RootErrorHandler reports
a failed chain that way.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ismrmrd

from mrf_core.errors import MrfError
from mrf_gadgetron.host.messages import (
    Limits,
    MessageId,
    MessageReader,
    WireError,
    encode_config_name,
    encode_header,
    encode_id,
    encode_item,
    encode_string,
    send,
)
from mrf_gadgetron.host.replay import RawSource

DEFAULT_PORT = 9002  # Gadgetron's and `mrf serve`'s


class ClientError(MrfError):
    """The server could not be reached, or the run failed (the server's reason)."""


@dataclass
class Answer:
    """What came back: images, TEXT messages (warnings, and the error when the run failed)."""

    images: list[ismrmrd.Image] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    failure: BaseException | None = None


def _read_answer(reader: MessageReader, answer: Answer, on_text: Callable[[str], None] | None) -> None:
    try:
        while True:
            mid = reader.read_id()
            if mid == MessageId.CLOSE:
                return
            if mid == MessageId.TEXT:
                text = reader.read_string(reader.limits.text_bytes, "a text message")
                answer.texts.append(text)
                if on_text is not None:
                    on_text(text)
            else:
                item = reader.read_item(mid)
                if isinstance(item, ismrmrd.Image):
                    answer.images.append(item)
    except BaseException as exc:  # noqa: BLE001 - handed to the sending thread, which reports it
        answer.failure = exc


def _connect(host: str, port: int, timeout_s: float, connect_s: float) -> socket.socket:
    """A connection to the server, retried for up to connect_s seconds (a server that is starting)."""
    deadline = time.monotonic() + connect_s
    while True:
        try:
            return socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ClientError(f"cannot connect to {host}:{port} ({exc.strerror or exc}): is `mrf serve` or "
                                  "Gadgetron running there? (-a/--address, -p/--port)") from exc
            time.sleep(0.2)


def send_scan(raw_path: str | Path, config: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
              inline: bool = False, on_text: Callable[[str], None] | None = None, timeout_s: float = 600.0,
              connect_s: float = 0.0, dataset: str = "dataset") -> list[ismrmrd.Image]:
    """Send a raw file through the server's configuration `config` (a name, or the XML text itself with
    inline) and return the images that came back."""
    source = RawSource(raw_path, dataset)
    peer = f"server {host}:{port}"
    try:
        sock = _connect(host, port, timeout_s, connect_s)
        with sock:
            answer = Answer()
            reader = MessageReader(sock, peer, Limits())
            thread = threading.Thread(target=_read_answer, args=(reader, answer, on_text), daemon=True)
            thread.start()
            try:
                send(sock, encode_string(MessageId.CONFIG, config) if inline else encode_config_name(config), peer)
                send(sock, encode_header(source.header), peer)
                for acquisition in source.acquisitions():
                    send(sock, encode_item(acquisition), peer)
                send(sock, encode_id(MessageId.CLOSE), peer)
            except WireError as exc:
                if answer.failure is None and thread.is_alive():
                    thread.join(timeout=5)  # the server's reason, when it said one before closing
                if not _errors(answer):
                    raise ClientError(str(exc)) from exc
            thread.join()
    finally:
        source.close()
    errors = _errors(answer)
    if errors:
        raise ClientError(f"{peer}: {errors[0].removeprefix('ERROR:').strip()}")
    if answer.failure is not None:
        raise ClientError(str(answer.failure)) from answer.failure
    return answer.images


def _errors(answer: Answer) -> list[str]:
    return [t for t in answer.texts if t.startswith("ERROR")]
