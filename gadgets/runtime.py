"""What every gadget process does around its work: thread policy, timing logs, and errors the client sees.

Errors: gadgetron-python sends only CLOSE when a gadget raises, so Gadgetron would end the stream as if
all went well. `run_gadget` therefore writes an ERROR message first (id 8, uint64 length, UTF-8 text:
Gadgetron 4's ExternalChannel turns it into "Errors received: ..." for the client), then re-raises, so the
process also exits non-zero with the message as its CRITICAL log line. Messages are one line naming the
gadget and the cause.

Warnings: an external peer may not send TEXT (id 5) to Gadgetron 4 (it is an illegal message id there),
so gadgets log them (`logging.warning`; Gadgetron's log, and the project's replay/server forward such
lines to the client as TEXT) and put them in image meta (`MRF_Warning`).

Threads: the gadget processes of a chain share the machine and work on different slices at once (a
pipeline), so each caps its torch threads (`threads` setting, mrf_core.pipeline.set_threads); reconstruct
also hands it to finufft (ReconSettings.n_threads).

Sends: one lock serialises them (`run_gadget`): reconstruct reads its input in a gather thread, and
gadgetron-python's filtered iteration passes other messages on from that thread while the main thread
sends images.
Exit: a stage process (`python -m gadgetron PORT MODULE TARGET`, as Gadgetron's External node and `mrf
serve` start it) ends when its gadget returns, and Python's last garbage collection at exit costs ~1 s of
CPU with torch, scipy and numba loaded, on the 2 cores the next stage is using to map the slice just sent
(measured: the network mapping of a 256^2 slice took 0.9 s instead of 0.1 s). Such a process freezes its
objects (gc.freeze) when its gadget is done, so that the exit leaves them to the operating system.
Progress: a wait longer than ~2 s (a dictionary build, the reconstruction's iterations) logs a line every
10 s (mrf_core.progress), which Gadgetron's log shows and `mrf replay` prints.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gadgetron.external.constants import GADGET_MESSAGE_ERROR, GadgetMessageIdentifier, uint64

from gadgets import compat
from mrf_core import progress
from mrf_core.pipeline import one_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorMessage:
    """An error for the host (Gadgetron's ERROR message, id 8)."""

    text: str


def write_error(destination, message: ErrorMessage) -> None:
    payload = message.text.encode("utf-8", errors="replace")
    destination.write(GadgetMessageIdentifier.pack(GADGET_MESSAGE_ERROR))
    destination.write(uint64.pack(len(payload)))
    destination.write(payload)


def run_gadget(name: str, connection, body: Callable[[], None]) -> None:
    """Run a gadget's body: register the ERROR writer, log start/end and duration; on an exception send
    ERROR "<name>: <message>" to the host, log it, and re-raise."""
    compat.add_writer(connection, lambda item: isinstance(item, ErrorMessage), write_error)
    send, lock = connection.send, threading.Lock()

    def serialised_send(item) -> None:
        with lock:
            send(item)

    connection.send = serialised_send
    progress.set_default(True)
    start = time.perf_counter()
    log.info("%s: started", name)
    try:
        body()
    except Exception as exc:
        message = one_line(exc)
        message = message if message.startswith(f"{name}: ") else f"{name}: {message}"
        log.error(message)
        try:
            connection.send(ErrorMessage(message))
        except OSError as send_error:  # the host may already be gone
            log.error("%s: could not send the error to the host: %s", name, send_error)
        raise
    log.info("%s: done in %.2f s", name, time.perf_counter() - start)
    if stage_process():
        gc.freeze()


def stage_process() -> bool:
    """Whether this process is a gadget stage of its own, run as `python -m gadgetron ...`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "gadgetron.__main__"
