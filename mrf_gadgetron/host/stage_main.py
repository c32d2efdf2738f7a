"""A gadgetron-python stage tied to the process that launched it:

    python -m mrf_gadgetron.host.stage_main <launcher pid> <port> <module> <target>

runs `python -m gadgetron <port> <module> <target>` (gadgetron's __main__ as the main module, in this
process: the stage behaves and logs as when Gadgetron starts it) after asking Linux to send this process
SIGTERM when its parent ends (PR_SET_PDEATHSIG; strictly, when the launcher's thread that started it
ends): a gadgetron-python process whose parent vanished would otherwise spin forever in its read loop.
The stage sets this itself, so the launcher, which has threads running, needs no `preexec_fn` (unsafe
with threads). A launcher that died before the call sends no signal: then the parent is no longer the
launcher's pid and the stage exits at once.

With $MRF_STAGE_MEMORY_MIB set (ChainOptions.stage_memory_mib), the stage limits its own address space
(RLIMIT_AS) first, so that an allocation beyond it is a MemoryError in the stage, not the machine's
out-of-memory killer.

Only the standard library is imported before gadgetron (the stage may run under another interpreter).
"""

from __future__ import annotations

import ctypes
import os
import resource
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1
MEMORY_ENV = "MRF_STAGE_MEMORY_MIB"  # set by the launcher (mrf_gadgetron.host.external) from ChainOptions
USAGE = "usage: python -m mrf_gadgetron.host.stage_main <launcher pid> <port> <module> <target>"


def die_with_parent() -> None:
    """SIGTERM to this process when its parent (thread) ends; Linux only, a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def limit_memory() -> None:
    """RLIMIT_AS of this process from $MRF_STAGE_MEMORY_MIB (unset or empty: unlimited)."""
    mib = os.environ.get(MEMORY_ENV, "").strip()
    if mib:
        resource.setrlimit(resource.RLIMIT_AS, (int(mib) * 2**20, int(mib) * 2**20))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 4 or not args[0].isdigit():
        sys.exit(USAGE)
    launcher = int(args[0])
    die_with_parent()
    limit_memory()
    if os.getppid() != launcher:
        sys.exit(f"stage {args[2]}.{args[3]}: its launcher (pid {launcher}) is gone: not starting")
    sys.argv = [sys.argv[0], *args[1:]]
    runpy.run_module("gadgetron", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
