"""The README's examples run: every ```sh, ```bash and ```python block, in document order, in one
temporary folder (later blocks use the files of earlier ones) with `mrf` on PATH (this interpreter's bin
folder, i.e. the venv's), a fresh cache folder and a free port in $MRF_PORT. A block is left out when the
line before its fence is `<!-- readme-test: skip (reason) -->`; blocks tagged text or console are never
run. Each block runs in its own process group, which is killed afterwards (a server a block started)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\S*)\s*$")
SKIP = re.compile(r"^<!-- readme-test: skip \((.*)\) -->$")
RUNNERS = {"sh": ["bash", "-eu", "-c"], "bash": ["bash", "-eu", "-c"],  # as typed: no pipefail
           "python": [sys.executable, "-c"]}
BLOCK_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # of the opening fence, 1-based
    skip: str | None  # the reason, when the block is left out


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, with the skip reason given on the line before each."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        skip = SKIP.match(lines[i - 1]) if i > 0 else None
        blocks.append(Block(opening.group(1), "\n".join(lines[i + 1:end]) + "\n", i + 1,
                            skip.group(1) if skip else None))
        i = end + 1
    return blocks


@pytest.mark.repository
def test_skip_comments_precede_a_runnable_block_and_give_a_reason():
    lines = README.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.startswith("<!-- readme-test"):
            continue
        match = SKIP.match(line)
        assert match and match.group(1).strip(), f"README line {number}: a skip comment needs a reason: {line}"
        fence = FENCE.match(lines[number]) if number < len(lines) else None
        assert fence and fence.group(1) in RUNNERS, f"README line {number}: the skip comment must precede a " \
            "sh/bash/python block"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.repository
def test_readme_examples_run(tmp_path):
    runnable = [b for b in readme_blocks(README.read_text()) if b.language in RUNNERS and b.skip is None]
    assert len(runnable) >= 7
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
               XDG_CACHE_HOME=str(tmp_path / "cache"), MRF_PORT=str(_free_port()), MPLBACKEND="Agg")
    work = tmp_path / "work"
    work.mkdir()
    for block in runnable:
        started = time.perf_counter()
        proc = subprocess.Popen([*RUNNERS[block.language], block.code], cwd=work, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=BLOCK_TIMEOUT_S)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            proc.wait()
        print(f"README line {block.line} ({block.language}): {time.perf_counter() - started:.1f} s")
        assert proc.returncode == 0, f"README block at line {block.line} failed (exit {proc.returncode}):\n" \
            f"{block.code}\n--- output (last 3000 characters) ---\n{output[-3000:]}"
