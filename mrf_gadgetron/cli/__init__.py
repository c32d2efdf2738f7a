"""The `mrf` command: one subcommand per module of this package, found at start-up.

Each subcommand module has `register(subparsers)`, which adds its parser and sets `func`; heavy imports
(torch, h5py) happen inside the command functions so that `mrf --help` stays fast. Every subcommand takes
--quiet and --log-level; unless --quiet, long waits show progress (mrf_core.progress).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import traceback

import mrf_core
from mrf_core.errors import MrfError

# Subcommand modules of mrf_gadgetron.cli (every public module), in the order --help lists them.
SUBCOMMANDS = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


class CliError(MrfError):
    """An error of the command's own arguments, reported as one line like every MrfError."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it is None (the help says what happens then) or the help names
    its default already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


LOG_LEVELS = ("debug", "info", "warning", "error")


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    """--quiet and --log-level on every leaf subcommand (a subcommand with subcommands of its own passes
    them down)."""
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if nested:
        for child in nested[0].choices.values():
            _add_common_options(child)
        return
    group = parser.add_argument_group("output")
    group.add_argument("--quiet", action="store_true",
                       help="no progress and no log lines: warnings, errors and the result only")
    group.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                       help="log lines from this level up (default: info; --quiet: warning)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrf",
        description="Magnetic Resonance Fingerprinting: simulate, build dictionaries, reconstruct, map, QA.",
    )
    parser.add_argument("--version", action="version", version=f"mrf {mrf_core.__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"mrf_gadgetron.cli.{name}").register(sub)
    for child in sub.choices.values():
        _add_common_options(child)
    return parser


def _configure_output(args: argparse.Namespace) -> None:
    """Logging level and progress: progress bars (or log lines when stderr is not a terminal) unless
    --quiet."""
    from mrf_core import progress

    level = "debug" if args.debug else args.log_level or ("warning" if args.quiet else "info")
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(getattr(logging, level.upper()))
    progress.set_default(not args.quiet and logging.getLogger().isEnabledFor(logging.INFO))


def _stdout_closed() -> int:
    """The reader of stdout went away (`mrf signal ... | head`): end quietly, as a program killed by
    SIGPIPE (128 + 13), with stdout pointed at /dev/null so the interpreter's last flush cannot fail."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_output(args)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except (MrfError, OSError) as exc:  # explained input, settings or file-system problems: one line
        if args.debug:
            raise
        print(f"mrf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception:  # anything else is a bug: its traceback, and where to report it
        traceback.print_exc()
        print(f"mrf {args.command}: internal error (a bug in mrf {mrf_core.__version__}): please report it with "
              "the traceback above and the command line", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"mrf {args.command}: interrupted", file=sys.stderr)
        return 130


def add_figure_arguments(parser: argparse.ArgumentParser) -> None:
    """--linear and --window, the options of every command that draws maps (mrf_core.plotting.FigureStyle)."""
    parser.add_argument("--linear", action="store_true",
                        help="figures: linear colour scales in the scanner windows (T1 0-3000 ms, T2 0-300 ms) "
                        "instead of the log windows (T1 10-5000 ms, T2 2-2000 ms)")
    parser.add_argument("--window", action="append", default=[], metavar="Q=LOW:HIGH",
                        help="figures: a map's window in its unit, e.g. t1=100:2500 (Q: t1, t2, pd, b1, quality; "
                        "repeatable)")


if __name__ == "__main__":
    sys.exit(main())
