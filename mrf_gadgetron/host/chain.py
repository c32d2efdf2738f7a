"""A configuration's external stages run in a row: items in, relayed stage to stage, outputs out.

One thread per hop reads stage i and writes stage i+1 (so no stage ever waits on us while we wait on
it); the caller's thread feeds the first stage; the last hop hands outputs that a top-level writer accepts
to `on_output` (the rest are dropped, as Gadgetron drops them). A CLOSE is passed on as soon as it
arrives; when everything has closed, every process must exit 0. The reported error is the first stage in
chain order that failed in its own words (its CRITICAL line or ERROR message), else the first protocol
or transport error; a failure anywhere stops the whole chain at once and every process is reaped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mrf_gadgetron.host.external import StageError, StageProcess, read_stage_message
from mrf_gadgetron.host.messages import ITEM_IDS, Limits, WireError
from mrf_gadgetron.host.stream_config import StreamConfig

log = logging.getLogger(__name__)


class ChainError(Exception):
    """The chain failed; the message is the reason a client should read."""


class InputError(ChainError):
    """The items fed to the chain were bad (the client's fault): raised by the caller's item iterator."""


@dataclass(frozen=True)
class ChainOptions:
    """connect_s: time for a stage to start and connect (interpreter, torch import); io_s: longest
    silence on a stage's socket while it works; exit_s: time for a stage to exit after its CLOSE;
    grace_s: after a failure, time for the stages to exit by themselves before they are terminated;
    stage_memory_mib: address space of each stage process (RLIMIT_AS; None: unlimited), so that a scan too
    large for its machine fails with MemoryError in its stage instead of taking the machine down."""

    connect_s: float = 120.0
    io_s: float = 600.0
    exit_s: float = 60.0
    grace_s: float = 1.0
    limits: Limits = Limits()
    stage_memory_mib: int | None = None


@dataclass
class StageReport:
    label: str
    pid: int
    startup_s: float  # launch -> connected
    items_in: int = 0
    items_out: int = 0
    first_out_s: float | None = None  # since the chain started
    input_closed_s: float | None = None
    closed_s: float | None = None  # its CLOSE arrived
    peak_rss_mib: float = 0.0


@dataclass
class ChainReport:
    """What happened: per-stage reports, outputs delivered and dropped, wall times from start (s)."""

    stages: list[StageReport] = field(default_factory=list)
    delivered: int = 0
    dropped: int = 0
    started_at: float = 0.0  # perf_counter at start
    connected_s: float = 0.0  # all stages connected and configured
    first_input_s: float | None = None
    last_output_s: float | None = None
    total_s: float = 0.0

    def table(self) -> str:
        """Per-stage timings (s since the chain started) and peak memory, one row per stage."""
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"

        rows = [f"{'stage':<38} {'start-up s':>10} {'items in':>8} {'out':>5} {'input closed':>12} "
                f"{'first out':>9} {'closed':>7} {'peak MiB':>8}"]
        for s in self.stages:
            rows.append(f"{s.label:<38} {s.startup_s:>10.2f} {s.items_in:>8} {s.items_out:>5} "
                        f"{fmt(s.input_closed_s):>12} {fmt(s.first_out_s):>9} {fmt(s.closed_s):>7} "
                        f"{s.peak_rss_mib:>8.0f}")
        rows.append(f"all stages connected at {self.connected_s:.2f} s, first input {fmt(self.first_input_s)} s, "
                    f"last output {fmt(self.last_output_s)} s, done {self.total_s:.2f} s; {self.delivered} outputs "
                    f"delivered, {self.dropped} dropped")
        return "\n".join(rows)


class _Run:
    def __init__(self, config: StreamConfig, options: ChainOptions, on_output, on_log):
        self.config = config
        self.options = options
        self.on_output = on_output
        self.stages = [StageProcess(node, options.limits, options.io_s, on_log, options.stage_memory_mib)
                       for node in config.nodes]
        self.errors: list[Exception] = []
        self.lock = threading.Lock()
        self.failed = threading.Event()
        self.report = ChainReport(started_at=time.perf_counter())
        self.counts = [[0, 0] for _ in self.stages]  # items in, items out
        self.first_out: dict[int, float] = {}
        self.closed_at: dict[int, float] = {}
        self.failed_first: set[int] = set()  # stages that had failed by themselves when the chain failed

    def now(self) -> float:
        return time.perf_counter() - self.report.started_at

    def fail(self, error: Exception) -> None:
        """Record an error; the first one stops every stage (whose later failures are consequences)."""
        with self.lock:
            self.errors.append(error)
            if self.failed.is_set():
                return
            self.failed.set()
            self.failed_first = {i for i, stage in enumerate(self.stages)
                                 if stage.fatal or i in self.closed_at
                                 or (stage.proc is not None and stage.proc.poll() not in (None, 0))}
        for stage in self.stages:
            stage.interrupt()

    def send(self, stage: StageProcess, item) -> None:
        """Send an item (None: CLOSE) to a stage. A stage that stopped reading is usually exiting with its
        own reason: give it a moment, so that the reason and not our broken pipe is reported."""
        try:
            if item is None:
                stage.send_close()
            else:
                stage.send_item(item)
        except WireError:
            stage.wait(self.options.grace_s)
            raise

    def hop(self, index: int) -> None:
        """Read stage `index` until its CLOSE; pass items to the next stage or the output."""
        stage = self.stages[index]
        after = self.stages[index + 1] if index + 1 < len(self.stages) else None
        try:
            while True:
                kind, item = read_stage_message(stage)
                if kind == "close":
                    self.closed_at[index] = self.now()
                    stage.sample_memory()
                    if after is not None:
                        self.send(after, None)
                    return
                self.counts[index][1] += 1
                self.first_out.setdefault(index, self.now())
                if after is not None:
                    self.counts[index + 1][0] += 1
                    self.send(after, item)
                elif self.config.writes(item):
                    self.on_output(item)
                    self.report.delivered += 1
                    self.report.last_output_s = self.now()
                else:
                    self.report.dropped += 1
                    log.info("dropped a %s from %s: no writer in the configuration accepts it",
                             type(item).__name__, stage.label)
        except Exception as exc:  # noqa: BLE001 (whatever stops a hop stops the chain, with its reason)
            known = isinstance(exc, WireError | StageError | OSError)
            if isinstance(exc, WireError | OSError) and not self.failed.is_set():
                stage.wait(self.options.grace_s)  # a reset socket is usually a stage exiting with its reason
            self.fail(exc if known else ChainError(f"relaying {stage.label}'s output: {exc!r}"))

    def reason(self) -> str | None:
        """The error to report, or None when all went well: the first stage in chain order that failed by
        itself before the chain failed, else the error that stopped the chain."""
        with self.lock:
            errors, failed, first = list(self.errors), self.failed.is_set(), set(self.failed_first)
        own = [stage.failure() for i, stage in enumerate(self.stages) if not failed or i in first]
        cause = next((e for e in own if e is not None), None)
        if cause is not None:
            return str(cause)
        return str(errors[0]) if errors else None


def run_chain(config: StreamConfig, header, items: Iterable, on_output: Callable[[object], None],
              on_log: Callable[[str, str, str], None] | None = None,
              options: ChainOptions = ChainOptions(), stop: threading.Event | None = None) -> ChainReport:
    """Run the configuration's stages on a header (ismrmrd.xsd) and items; raise ChainError with the
    reason on any failure. `items` may raise InputError (bad client data): the chain stops at once. When
    `stop` is set (the client left), the chain stops within a fraction of a second and its stages are
    terminated."""
    run = _Run(config, options, on_output, on_log)
    threads: list[threading.Thread] = []
    try:
        for stage in run.stages:  # all start together, as Gadgetron opens its external channels
            stage.start()
        for stage in run.stages:
            stage.connect(options.connect_s)
            stage.handshake(header)
        run.report.connected_s = run.now()
        for index in range(len(run.stages)):
            thread = threading.Thread(target=run.hop, args=(index,), name=f"hop {index}", daemon=True)
            thread.start()
            threads.append(thread)
        first = run.stages[0]
        accepted = config.input_ids
        for item in items:
            if run.failed.is_set():
                break
            if stop is not None and stop.is_set():
                raise ChainError("the client left; the chain was stopped")
            mid = ITEM_IDS.get(type(item))
            if mid not in accepted:
                raise InputError(f"no reader in {config.source} accepts {type(item).__name__} messages ({mid}); "
                                 f"readers: {', '.join(config.readers)}")
            if run.report.first_input_s is None:
                run.report.first_input_s = run.now()
            run.counts[0][0] += 1
            run.send(first, item)
        if not run.failed.is_set():
            run.send(first, None)
        for thread in threads:
            while thread.is_alive() and not run.failed.is_set():
                if stop is not None and stop.is_set():
                    raise ChainError("the client left; the chain was stopped")
                thread.join(0.2)
        if not run.failed.is_set():
            for stage in run.stages:
                if stage.wait(options.exit_s) is None:
                    run.fail(StageError(stage.label, f"still running {options.exit_s:g} s after its CLOSE"))
    except (StageError, WireError, ChainError, OSError) as exc:
        run.fail(exc)
    except BaseException as exc:  # Ctrl-C and the like: stop everything, then let it through
        run.fail(ChainError(f"interrupted: {exc!r}"))
        raise
    finally:
        # Stages that failed by themselves are exiting: give them a moment for their exit status. The others
        # (healthy, or failing only because we stopped them) are terminated at once: a gadgetron-python
        # process whose socket we shut spins in its read loop and never exits by itself.
        failed = run.failed.is_set()
        deadline = time.monotonic() + (options.grace_s if failed else options.exit_s)
        for i, stage in enumerate(run.stages):
            stage.stop(deadline if not failed or i in run.failed_first else 0.0)
        for thread in threads:
            thread.join(5.0)
    reason = run.reason()
    run.errors.clear()  # the errors' tracebacks refer to this frame: no cycle left to hold buffers
    if reason is not None:
        raise ChainError(reason)
    _fill_report(run)
    return run.report


def _fill_report(run: _Run) -> None:
    report = run.report
    report.total_s = run.now()
    for index, stage in enumerate(run.stages):
        closed_input = stage.times.get("input closed")
        report.stages.append(StageReport(
            label=stage.label, pid=stage.proc.pid, startup_s=stage.times["connected"] - stage.times["launched"],
            items_in=run.counts[index][0], items_out=run.counts[index][1], first_out_s=run.first_out.get(index),
            input_closed_s=None if closed_input is None else closed_input - report.started_at,
            closed_s=run.closed_at.get(index),
            peak_rss_mib=stage.peak_rss_kib / 1024))
