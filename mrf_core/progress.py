"""Progress of long waits: a tqdm bar on a terminal, throttled log lines otherwise (a log file, a pipe,
Gadgetron's log), nothing when switched off.

`bar(...)` is used where the library loops over chunks, readouts, iterations or epochs. Its `enabled`
argument: True or False, or None for the process default, which is off for the library (a notebook or a
gadget asks for it) and on for the `mrf` command (`--quiet` turns it off: `set_default`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable

log = logging.getLogger("mrf.progress")

LOG_EVERY_S = 10.0  # a log line at most this often, and only for waits longer than QUIET_S
QUIET_S = 2.0
_default = False


def set_default(enabled: bool) -> None:
    """Progress on or off where a caller leaves it open (enabled=None)."""
    global _default
    _default = bool(enabled)


def is_enabled(enabled: bool | None = None) -> bool:
    return _default if enabled is None else bool(enabled)


class LogBar:
    """tqdm's interface as log lines: `desc: n/total unit (p %), t s, ~r s left` every LOG_EVERY_S seconds
    once the wait exceeds QUIET_S, and a last line at close when it did."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it"):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.postfix = total, 0, ""
        self.start = self._last = time.monotonic()
        self._logged = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> LogBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def line(self, final: bool = False) -> str:
        elapsed = time.monotonic() - self.start
        text = f"{self.desc}: {self.n}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100 * self.n / self.total:.0f} %), {elapsed:.0f} s"
            if 0 < self.n < self.total and not final:
                text += f", ~{elapsed * (self.total - self.n) / self.n:.0f} s left"
        else:
            text += f" {self.unit}, {elapsed:.0f} s"
        return text + (f" [{self.postfix}]" if self.postfix else "")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.start > QUIET_S and now - self._last >= LOG_EVERY_S:
            self._last, self._logged = now, True
            log.info("%s", self.line())

    def close(self) -> None:
        if self._logged or time.monotonic() - self.start > QUIET_S:
            log.info("%s (done)", self.line(final=True))
        self._logged = False
        self.start = float("inf")  # a second close says nothing


class _Off(LogBar):
    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass


def bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
        enabled: bool | None = None):
    """A progress bar over `iterable` (or updated by hand up to `total`): tqdm when stderr is a terminal,
    LogBar otherwise, a silent stand-in when progress is off."""
    if not is_enabled(enabled):
        return _Off(iterable, total, desc, unit)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, mininterval=0.5, delay=QUIET_S)
    return LogBar(iterable, total, desc, unit)
