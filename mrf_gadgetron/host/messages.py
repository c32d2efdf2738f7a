"""Gadgetron/MRD message framing over a socket, with every length bounded before it is allocated.

A message is a uint16 little-endian id and a payload: 1 config file name (1024 bytes, NUL padded),
2 config text and 3 header and 5 text (uint32 length + bytes), 4 close (nothing), 8 error (uint64 length
+ bytes; only external peers send it), 1008 acquisition, 1022 image, 1026 waveform (ismrmrd's own
serialization). Sizes are checked against `Limits` from the fixed-size headers before any payload is
read, so a corrupt or hostile length is an error, not an allocation; payloads are read in chunks into a
growing buffer (memory follows the bytes that arrive, not the size claimed), and an acquisition is built
only once all its bytes are in. A `MemoryBudget` shared by a server's readers accounts the declared bytes
of client items in flight and refuses an item that would take it over its limit. A reader may also have a
`deadline` (a time by which whatever is being read must be complete: the handshake) and a minimum
transfer rate for a message once it has started (`min_rate`, bytes/s after `rate_grace_s`): a client
sending a byte now and then is refused, not waited for.

The encoders write what ismrmrd.serialization.ProtocolSerializer writes (tests/test_wire.py compares the
bytes), items through ismrmrd's own to_bytes as it does, but are not built on it: the supported ismrmrd
1.14.0 and 1.14.1 have no serialization module (1.14.2 adds ProtocolSerializer, 1.15.0 its CONFIG_FILE
and CONFIG_TEXT messages), and it has neither ERROR (8) nor a bounded reader.
"""

from __future__ import annotations

import ctypes
import math
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from enum import IntEnum

import ismrmrd

CONFIG_NAME_BYTES = 1024  # the fixed payload of message 1 (Gadgetron's read_filename_from_stream)
MiB = 2**20
CHUNK_BYTES = 1 * MiB  # payloads are received at most this much at a time


class MessageId(IntEnum):
    FILENAME = 1
    CONFIG = 2
    HEADER = 3
    CLOSE = 4
    TEXT = 5
    QUERY = 6
    RESPONSE = 7
    ERROR = 8
    ACQUISITION = 1008
    IMAGE = 1022
    RECON_DATA = 1023
    IMAGE_ARRAY = 1024
    WAVEFORM = 1026
    BUCKET = 1050


ITEM_IDS = {ismrmrd.Acquisition: MessageId.ACQUISITION, ismrmrd.Image: MessageId.IMAGE,
            ismrmrd.Waveform: MessageId.WAVEFORM}


def message_name(mid: int) -> str:
    try:
        return f"{MessageId(mid).name.lower()} ({mid})"
    except ValueError:
        return f"unknown ({mid})"


@dataclass(frozen=True)
class Limits:
    """Largest payloads accepted, in bytes: config text, header XML, text, and one acquisition,
    image or waveform (header, meta, trajectory and data together)."""

    config_bytes: int = 1 * MiB
    header_bytes: int = 16 * MiB
    text_bytes: int = 1 * MiB
    item_bytes: int = 512 * MiB


class WireError(Exception):
    """The byte stream broke the protocol (truncated, unknown id, too large, malformed)."""


class PeerClosed(WireError):
    """The peer closed the connection where a message could have started."""


class WireTimeout(WireError):
    """Nothing arrived within the socket's timeout."""


class TooSlow(WireTimeout):
    """The peer missed a deadline or sent below the minimum rate."""


class OverBudget(WireError):
    """An item would take the server's memory budget over its limit."""


class MemoryBudget:
    """Bytes of client items held in memory, counted across all connections against `limit_bytes`."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = int(limit_bytes)
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, n: int, what: str) -> None:
        with self._lock:
            if self.used + n > self.limit_bytes:
                raise OverBudget(f"server memory budget reached: {what} needs {n / MiB:.1f} MiB, "
                                 f"{self.used / MiB:.1f} of {self.limit_bytes / MiB:.0f} MiB are in use "
                                 f"(--max-memory); try again later")
            self.used += n

    def release(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)

    @property
    def full(self) -> bool:
        return self.used >= self.limit_bytes


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class MessageReader:
    """Reads messages from a socket (blocking, with the socket's timeout); `peer` names it in errors."""

    def __init__(self, sock: socket.socket, peer: str, limits: Limits = Limits(),
                 budget: MemoryBudget | None = None, min_rate: float = 0.0, rate_grace_s: float = 10.0):
        self.sock = sock
        self.peer = peer
        self.limits = limits
        self.budget = budget
        self.min_rate = min_rate  # bytes/s within a message, after rate_grace_s (0: no minimum)
        self.rate_grace_s = rate_grace_s
        self.deadline: float | None = None  # time.monotonic() by which the current phase must be read
        self.deadline_what = ""
        self.held = 0  # budget bytes reserved by this reader's items not yet released
        self.largest = 0  # the largest payload read so far (bytes)
        self._message_start: float | None = None
        self._message_bytes = 0

    # ---- receiving, with the deadline and the rate ---------------------------------------------------
    def _limit(self) -> tuple[float, str] | None:
        """The earliest time (monotonic) by which more bytes must arrive, and why; None: only silence."""
        limits = []
        if self.deadline is not None:
            limits.append((self.deadline, "deadline"))
        if self.min_rate > 0 and self._message_start is not None:
            limits.append((self._message_start + self.rate_grace_s + self._message_bytes / self.min_rate, "rate"))
        return min(limits) if limits else None

    def _too_slow(self, why: str, what: str) -> TooSlow:
        if why == "deadline":
            return TooSlow(f"{self.peer}: {self.deadline_what} not complete in time (while reading {what})")
        elapsed = time.monotonic() - (self._message_start or time.monotonic())
        return TooSlow(f"{self.peer}: too slow: {self._message_bytes} bytes of a message in {elapsed:.1f} s "
                       f"while reading {what} (minimum {self.min_rate:g} bytes/s after {self.rate_grace_s:g} s)")

    def _recv(self, size: int, what: str) -> bytes:
        """Up to `size` bytes (b'' at the end), within the socket's silence timeout and any deadline/rate."""
        limit = self._limit()
        try:
            if limit is not None:
                silence = self.sock.gettimeout()
                started = time.monotonic()
                poller = select.poll()
                poller.register(self.sock, select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR)
                while True:
                    now = time.monotonic()
                    limit = self._limit()
                    if now >= limit[0]:
                        raise self._too_slow(limit[1], what)
                    wait = limit[0] - now
                    if silence is not None:
                        if now - started >= silence:
                            raise TimeoutError
                        wait = min(wait, silence - (now - started))
                    if poller.poll(max(1, math.ceil(wait * 1000))):
                        break
            data = self.sock.recv(size)
        except TimeoutError as exc:
            raise WireTimeout(f"{self.peer}: no data for {self.sock.gettimeout():g} s while reading {what}") \
                from exc
        except OSError as exc:
            raise WireError(f"{self.peer}: connection failed while reading {what}: {exc}") from exc
        self._message_bytes += len(data)
        return data

    def read_exactly(self, n: int, what: str) -> bytes | bytearray:
        """n bytes, received in chunks into a growing buffer (never allocated at the claimed size up
        front); bytes when small, the bytearray itself when large (no copy)."""
        buffer = bytearray()
        while len(buffer) < n:
            chunk = self._recv(min(n - len(buffer), CHUNK_BYTES), what)
            if not chunk:
                raise WireError(f"{self.peer}: truncated message: connection closed after {len(buffer)} of {n} "
                                f"bytes of {what}")
            buffer += chunk
            del chunk
        self.largest = max(self.largest, n)
        return bytes(buffer) if n <= CHUNK_BYTES else buffer

    def read_id(self) -> int:
        """The next message id; PeerClosed when the connection ends cleanly before it. The message's
        rate is measured from its first byte."""
        self._message_start = None
        self._message_bytes = 0
        try:
            first = self._recv(2, "a message id")
        except WireTimeout as exc:
            if isinstance(exc, TooSlow):
                raise
            raise WireTimeout(f"{self.peer}: no message for {self.sock.gettimeout():g} s") from exc
        if not first:
            raise PeerClosed(f"{self.peer}: connection closed without a CLOSE message")
        self._message_start = time.monotonic()
        if len(first) == 1:
            first += self.read_exactly(1, "a message id")
        return _U16.unpack(first)[0]

    # ---- the memory budget ---------------------------------------------------------------------------
    def _reserve(self, n: int, what: str) -> None:
        if self.budget is not None:
            self.budget.reserve(n, what)
            self.held += n

    def release(self) -> None:
        """Give back what this reader's items hold of the budget (they were handed on or dropped)."""
        if self.budget is not None and self.held:
            self.budget.release(self.held)
        self.held = 0

    def _length(self, fmt: struct.Struct, limit: int, what: str) -> int:
        n = fmt.unpack(self.read_exactly(fmt.size, f"the length of {what}"))[0]
        if n > limit:
            raise WireError(f"{self.peer}: {what} of {n} bytes exceeds the limit of {limit} bytes")
        return n

    def read_string(self, limit: int, what: str, wide: bool = False) -> str:
        """A length-prefixed UTF-8 string (uint32 length; uint64 when wide)."""
        n = self._length(_U64 if wide else _U32, limit, what)
        try:
            return self.read_exactly(n, what).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(f"{self.peer}: {what} is not UTF-8: {exc}") from exc

    def read_config_name(self) -> str:
        raw = self.read_exactly(CONFIG_NAME_BYTES, "a configuration name")
        try:
            return raw.split(b"\0", 1)[0].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(f"{self.peer}: configuration name is not UTF-8: {exc}") from exc

    def _prefixed(self, what: str, *chunks: bytes):
        """A read_exactly for ismrmrd's deserialize_from that first returns the chunks already read."""
        pending = list(reversed(chunks))

        def read(n: int) -> bytes:
            return pending.pop() if pending else self.read_exactly(n, what)

        return read

    def _check_item(self, n_bytes: int, what: str) -> None:
        if n_bytes > self.limits.item_bytes:
            raise WireError(f"{self.peer}: {what} of {n_bytes} bytes exceeds the limit of {self.limits.item_bytes}")

    def read_acquisition(self) -> ismrmrd.Acquisition:
        head_bytes = self.read_exactly(ctypes.sizeof(ismrmrd.AcquisitionHeader), "an acquisition header")
        head = ismrmrd.AcquisitionHeader.from_buffer_copy(head_bytes)
        traj = head.number_of_samples * head.trajectory_dimensions * 4
        data = head.number_of_samples * head.active_channels * 8
        what = (f"acquisition {head.scan_counter} ({head.active_channels} channels x {head.number_of_samples} "
                f"samples, {head.trajectory_dimensions} trajectory dimensions)")
        self._check_item(traj + data, what)
        self._reserve(traj + data, what)
        # every byte in before ismrmrd allocates the acquisition's arrays
        payload = (self.read_exactly(traj, "an acquisition's trajectory"), self.read_exactly(data, "an acquisition"))
        return ismrmrd.Acquisition.deserialize_from(self._prefixed("an acquisition", head_bytes, *payload))

    def read_image(self) -> ismrmrd.Image:
        head_bytes = self.read_exactly(ctypes.sizeof(ismrmrd.ImageHeader), "an image header")
        head = ismrmrd.ImageHeader.from_buffer_copy(head_bytes)
        sizes = {ismrmrd.DATATYPE_USHORT: 2, ismrmrd.DATATYPE_SHORT: 2, ismrmrd.DATATYPE_UINT: 4,
                 ismrmrd.DATATYPE_INT: 4, ismrmrd.DATATYPE_FLOAT: 4, ismrmrd.DATATYPE_DOUBLE: 8,
                 ismrmrd.DATATYPE_CXFLOAT: 8, ismrmrd.DATATYPE_CXDOUBLE: 16}
        if head.data_type not in sizes:
            raise WireError(f"{self.peer}: image has unknown data type {head.data_type}")
        x, y, z = head.matrix_size
        n = head.channels * x * y * z * sizes[head.data_type]
        self._check_item(n, f"image data ({head.channels} channels x {x} x {y} x {z})")
        meta_bytes = self.read_exactly(8, "the image meta length")
        self._check_item(n + _U64.unpack(meta_bytes)[0], "image data and meta")
        self._reserve(n + _U64.unpack(meta_bytes)[0], "an image")
        return ismrmrd.Image.deserialize_from(self._prefixed("an image", head_bytes, meta_bytes))

    def read_waveform(self) -> ismrmrd.Waveform:
        head_bytes = self.read_exactly(ctypes.sizeof(ismrmrd.WaveformHeader), "a waveform header")
        head = ismrmrd.WaveformHeader.from_buffer_copy(head_bytes)
        n = head.number_of_samples * head.channels * 4
        self._check_item(n, "waveform")
        self._reserve(n, "a waveform")
        data = self.read_exactly(n, "a waveform")
        return ismrmrd.Waveform.deserialize_from(self._prefixed("a waveform", head_bytes, data))

    def read_item(self, mid: int):
        """The payload of an item message (acquisition, image, waveform) whose id was read."""
        readers = {MessageId.ACQUISITION: self.read_acquisition, MessageId.IMAGE: self.read_image,
                   MessageId.WAVEFORM: self.read_waveform}
        if mid not in readers:
            raise WireError(f"{self.peer}: message id {message_name(mid)} is not an acquisition, image or waveform")
        try:
            return readers[mid]()
        except WireError:
            self.release()
            raise
        except (ValueError, TypeError) as exc:  # ismrmrd rejects inconsistent headers this way
            self.release()
            raise WireError(f"{self.peer}: malformed {message_name(mid)}: {exc}") from exc


def encode_id(mid: int) -> bytes:
    return _U16.pack(mid)


def encode_string(mid: int, text: str | bytes, wide: bool = False) -> bytes:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return _U16.pack(mid) + (_U64 if wide else _U32).pack(len(data)) + data


def encode_config_name(name: str) -> bytes:
    data = name.encode("utf-8")
    if len(data) >= CONFIG_NAME_BYTES:
        raise ValueError(f"configuration name of {len(data)} bytes: at most {CONFIG_NAME_BYTES - 1}")
    return _U16.pack(MessageId.FILENAME) + data.ljust(CONFIG_NAME_BYTES, b"\0")


def encode_item(item) -> bytes:
    """An acquisition, image or waveform as one message."""
    for kind, mid in ITEM_IDS.items():
        if isinstance(item, kind):
            return _U16.pack(mid) + item.to_bytes()
    raise TypeError(f"cannot send {type(item).__name__}: only acquisitions, images and waveforms")


def encode_header(header) -> bytes:
    """An ismrmrd.xsd header (or its XML) as message 3."""
    xml = header if isinstance(header, str | bytes) else ismrmrd.xsd.ToXML(header)
    return encode_string(MessageId.HEADER, xml)


def send(sock: socket.socket, data: bytes, peer: str) -> None:
    """sendall with the protocol's errors."""
    try:
        sock.sendall(data)
    except TimeoutError as exc:
        raise WireTimeout(f"{peer}: could not send for {sock.gettimeout():g} s") from exc
    except OSError as exc:
        raise WireError(f"{peer}: connection failed while sending: {exc}") from exc
