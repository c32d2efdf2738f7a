"""One external stage: a `python -m gadgetron <port> <module> <target>` process started as Gadgetron does
(through mrf_gadgetron.host.stage_main, which runs exactly that after tying the process to us).

Gadgetron 4's External node (nodes/External.cpp, external/Python.cpp) listens on a free port, starts the
module with that port, accepts its connection, and sends the node's `<configuration>` (message 2) and the
header (message 3); items follow, then CLOSE. gadgetron-python 1.4.1 connects to localhost with a 30 s
timeout, asserts that config then header come first, and on any exception in the gadget still sends CLOSE
(Connection.__exit__) before logging `CRITICAL ... <message>` and exiting 1; it never sends ERROR (8).
So a stage's failure is its exit status plus that log line, which we collect from its stderr.

Differences from Gadgetron, on purpose: the interpreter is ours (sys.executable, or $MRF_PYTHON) rather
than the first `python` on PATH, so the venv's gadgets run; the repository root is added to PYTHONPATH
(as Gadgetron adds $GADGETRON_HOME/share/gadgetron/python, which we add too when set); we listen on
127.0.0.1 only; NUMPY_MADVISE_HUGEPAGE defaults to 0 in the stages (HUGEPAGE_ENV; the Dockerfile sets it for
Gadgetron's own launches). Children run in their own session, get SIGTERM if we die (Linux PR_SET_PDEATHSIG, which
the child sets itself in stage_main, so no preexec_fn runs in a fork of this threaded process: a
gadgetron-python process whose parent vanished would otherwise spin forever in its read loop), and are
always reaped.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mrf_gadgetron.host import stage_main
from mrf_gadgetron.host.messages import (
    Limits,
    MessageId,
    MessageReader,
    WireError,
    encode_header,
    encode_id,
    encode_item,
    encode_string,
    send,
)
from mrf_gadgetron.host.stage_main import MEMORY_ENV
from mrf_gadgetron.host.stream_config import ExternalNode

log = logging.getLogger(__name__)

# numpy asks Linux for transparent huge pages on its large arrays (madvise), and under the common
# `defrag = madvise` setting each first touch of one may compact memory synchronously: measured here, the
# first slice reconstructed in a fresh process took 4.9-5.0 s with it and 4.0-4.3 s without (the next
# slice 4.0-4.4 s either way); numpy reads this variable at import
HUGEPAGE_ENV = "NUMPY_MADVISE_HUGEPAGE"
PYTHON_ENV = "MRF_PYTHON"
LOG_LEVEL_ENV = "GADGETRON_EXTERNAL_LOG_LEVEL"
REPO_ROOT = Path(__file__).resolve().parents[2]
# gadgetron-python's log format: "%m-%d %H:%M:%S.mmm LEVEL [ext. PID module.target] message"
_LOG_LINE = re.compile(r"^\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (?P<level>[A-Z]+) \[ext\. \d+ [^\]]*\] (?P<message>.*)$")
_TAIL_LINES = 40
# gadgetron-python's own warning for a node without <configuration> (the text is then just the XML
# declaration, exactly what Gadgetron sends): expected, so not passed on to clients.
_NO_CONFIGURATION = "Config parsing failed with error message no element found"
DEFAULT_LIMITS = Limits()
STAGE_MAIN = stage_main.__name__  # `python -m gadgetron` that dies with us (its docstring)


class StageError(Exception):
    """A stage failed: `stage` is its label, the message its own words where it left any."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.detail = message


def stage_environment(environ, memory_mib: float | None = None) -> dict[str, str]:
    """A stage process's environment: `environ` with the repository (and Gadgetron's python folder) on
    PYTHONPATH, INFO logging, unbuffered output and no numpy huge pages unless set, and the memory limit."""
    env = dict(environ)
    paths = [str(REPO_ROOT)]
    if env.get("GADGETRON_HOME"):
        paths.append(str(Path(env["GADGETRON_HOME"]) / "share" / "gadgetron" / "python"))
    env["PYTHONPATH"] = os.pathsep.join([p for p in (env.get("PYTHONPATH"), *paths) if p])
    env.setdefault(LOG_LEVEL_ENV, "INFO")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault(HUGEPAGE_ENV, "0")
    if memory_mib:
        env[MEMORY_ENV] = str(int(memory_mib))
    return env


class StageProcess:
    """An external node's process and its socket. `on_log(stage, level, message)` gets every log line
    of level WARNING while it runs (errors end the stage and are reported as its failure)."""

    def __init__(self, node: ExternalNode, limits: Limits = DEFAULT_LIMITS, io_timeout_s: float = 600.0,
                 on_log: Callable[[str, str, str], None] | None = None, memory_mib: int | None = None):
        self.node = node
        self.memory_mib = memory_mib
        self.label = node.label
        self.limits = limits
        self.io_timeout_s = io_timeout_s
        self.on_log = on_log
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.reader: MessageReader | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self.fatal: str | None = None  # the CRITICAL line gadgetron-python logs for an exception
        self.killed = False
        self.peak_rss_kib = 0
        self.times: dict[str, float] = {}
        self._listener: socket.socket | None = None
        self._log_thread: threading.Thread | None = None
        self._send_lock = threading.Lock()

    # ---- start-up ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Listen on a free loopback port and start the module (returns at once)."""
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        env = stage_environment(os.environ, self.memory_mib)
        python = env.get(PYTHON_ENV) or sys.executable
        command = [python, "-m", STAGE_MAIN, str(os.getpid()), str(port), self.node.module, self.node.target]
        self.times["launched"] = time.perf_counter()
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.debug("started %s (pid %d) on port %d", self.label, self.proc.pid, port)
        self._log_thread = threading.Thread(target=self._read_log, name=f"log {self.label}", daemon=True)
        self._log_thread.start()

    def _read_log(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            self.tail.append(line)
            match = _LOG_LINE.match(line)
            if not match:
                continue
            level, message = match["level"], match["message"]
            if level in ("CRITICAL", "FATAL"):
                self.fatal = message
            if level in ("WARNING", "WARN") and self.on_log is not None:
                if not message.startswith(_NO_CONFIGURATION):
                    self.on_log(self.label, level, message)
            elif level != "DEBUG":
                log.info("[%s] %s %s", self.label, level, message)

    def connect(self, timeout_s: float) -> None:
        """Accept the module's connection; StageError when it exits or stays away for timeout_s."""
        deadline = time.monotonic() + timeout_s
        self._listener.settimeout(0.1)
        try:
            while True:
                try:
                    self.sock, _ = self._listener.accept()
                    break
                except TimeoutError:
                    pass
                if self.proc.poll() is not None:
                    self._log_thread.join(2.0)
                    raise StageError(self.label, f"exited with code {self.proc.returncode} before connecting: "
                                                 f"{self.reason()}")
                if time.monotonic() > deadline:
                    raise StageError(self.label, f"did not connect within {timeout_s:g} s")
        finally:
            self._listener.close()
        self.times["connected"] = time.perf_counter()
        self.sock.settimeout(self.io_timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = MessageReader(self.sock, self.label, self.limits)

    def handshake(self, header) -> None:
        """Message 2 (the node's configuration) then message 3 (the header), as ExternalChannel does."""
        self.send(encode_string(MessageId.CONFIG, self.node.configuration_xml) + encode_header(header))

    # ---- traffic -----------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        with self._send_lock:
            send(self.sock, data, self.label)

    def send_item(self, item) -> None:
        self.send(encode_item(item))

    def send_close(self) -> None:
        self.send(encode_id(MessageId.CLOSE))
        self.times["input closed"] = time.perf_counter()

    # ---- the end -----------------------------------------------------------------------------------
    def sample_memory(self) -> None:
        """Record the process's peak resident memory so far (VmHWM from /proc, KiB)."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        if match:
            self.peak_rss_kib = max(self.peak_rss_kib, int(match[1]))

    def wait(self, timeout_s: float) -> int | None:
        """The exit status, waiting at most timeout_s (None if still running)."""
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def reason(self) -> str:
        """The stage's own words for its failure: its CRITICAL line, else the last lines of its output."""
        if self.fatal:
            return self.fatal
        lines = [line for line in self.tail if line.strip()]
        return " | ".join(lines[-3:]) if lines else "no output"

    def failure(self) -> StageError | None:
        """A StageError when the process ended badly by itself (not killed by us)."""
        code = self.proc.poll() if self.proc else None
        if self._log_thread is not None:
            self._log_thread.join(2.0)
        if code is not None and code != 0 and not self.killed:
            what = f"exit code {code}" if code > 0 else f"killed by signal {-code}"
            return StageError(self.label, f"failed ({what}): {self.reason()}")
        if self.fatal and not (code == 0):
            return StageError(self.label, f"failed: {self.fatal}")
        return None

    def interrupt(self) -> None:
        """Unblock whoever reads or writes this stage's socket."""
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self, deadline: float) -> None:
        """Make sure the process is gone and reaped (terminated if still running at `deadline`, a
        time.monotonic() value), and everything is closed."""
        if self._listener is not None:
            self._listener.close()
        if self.proc is not None and self.proc.poll() is None:
            if self.wait(max(0.0, deadline - time.monotonic())) is None:
                self.killed = True
                self.proc.terminate()
                if self.wait(2.0) is None:
                    self.proc.kill()
                    self.proc.wait()
        if self.sock is not None:
            self.sock.close()
        if self._log_thread is not None:
            self._log_thread.join(2.0)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def read_stage_message(stage: StageProcess):
    """The next message from a stage as (kind, value): ('item', item), ('close', None); a stage's
    ERROR (8) becomes StageError with its text; anything else a stage may not send is a WireError."""
    mid = stage.reader.read_id()
    if mid == MessageId.CLOSE:
        return "close", None
    if mid == MessageId.ERROR:
        raise StageError(stage.label, stage.reader.read_string(stage.limits.text_bytes, "an error message", wide=True))
    if mid in (MessageId.ACQUISITION, MessageId.IMAGE, MessageId.WAVEFORM):
        return "item", stage.reader.read_item(mid)
    if mid in (MessageId.IMAGE_ARRAY, MessageId.RECON_DATA, MessageId.BUCKET):
        raise WireError(f"{stage.label}: sent message {mid} (image array / recon data / bucket), which this replay "
                        f"does not relay; send ismrmrd.Image items")
    raise WireError(f"{stage.label}: illegal message id from an external peer: {mid} (Gadgetron 4 accepts only "
                    f"items, ERROR (8) and CLOSE (4) from externals)")
