"""Shared fixtures: C peers compiled with the system compiler, and running the CLI."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The tests exercise the installed package, never the uncompiled source tree: drop the
# checkout from sys.path (`python -m pytest` puts it there) before importing mmapipc.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]

from mmapipc import Student, get_include  # noqa: E402
from mmapipc.peers import build_peer, compile_c, find_compiler  # noqa: E402

CSRC = ROOT / "csrc"


@pytest.fixture(scope="session", autouse=True)
def _outside_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run from a scratch directory, so child Pythons cannot import the source tree.

    Run as a background job, the tests inherit SIGINT ignored, and so would every process
    they start (a Python started with SIGINT ignored never raises KeyboardInterrupt): give
    it a handler, which exec resets to the default in each child."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    os.environ["PYTHONSAFEPATH"] = "1"
    yield
    os.chdir(old)


@pytest.fixture(scope="session")
def cc() -> str:
    compiler = find_compiler()
    if compiler is None:
        pytest.fail("a C compiler is required for the interop tests")
    return compiler


@pytest.fixture(scope="session")
def peers(cc: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The C twins of mmap_w and mmap_r, compiled for this test run."""
    out = tmp_path_factory.mktemp("peers")
    return {name: build_peer(name, out, cc) for name in ("mmap_w", "mmap_r")}


@pytest.fixture(scope="session")
def build_c(cc: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Compile a C program (source text) against csrc/ and return its path."""
    out = tmp_path_factory.mktemp("cprogs")

    def build(name: str, source: str) -> Path:
        src = out / f"{name}.c"
        src.write_text(source)
        exe = out / name
        cmd = [cc, "-O2", "-std=gnu11", f"-I{CSRC}", "-o", str(exe), str(src)]
        subprocess.run(cmd, check=True, capture_output=True)
        return exe

    return build


# The head of the C programs built on mmapipc_record.h: struct STU and numbered(n), the C
# twin of numbered() below (its fields all follow from its id).
NUMBERED_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mmapipc_record.h"

struct STU {
    int id;
    char name[20];
    char sex;
};

static inline void numbered(struct STU *s, int n)
{
    static const char tail[] = "abcdefghijklm";
    memset(s, 0, sizeof *s);
    s->id = n;
    snprintf(s->name, sizeof s->name, "n%05u%.*s", (unsigned)n % 100000u, n % 14, tail);
    s->sex = "mf"[n % 2];
}

/* The struct STU record at path, through the header (flags: 0 or MMAPIPC_REC_WRITE). */
static inline mmapipc_rec *open_stu(const char *path, int flags)
{
    return mmapipc_rec_open(path, MMAPIPC_STU_SIZE, MMAPIPC_STU_MARKER, MMAPIPC_STU_SEQ, flags);
}
"""

Build = Callable[[str, "str | Path"], Path]


@pytest.fixture(scope="session")
def cbuild(cc: str, tmp_path_factory: pytest.TempPathFactory) -> Build:
    """Compile a C program (source text, or a path) on mmapipc_record.h, against
    get_include(), with -Wall -Wextra -Werror; return its path."""
    out = tmp_path_factory.mktemp("clib")

    def build(name: str, source: str | Path) -> Path:
        src = Path(source) if isinstance(source, Path) else out / f"{name}.c"
        if not isinstance(source, Path):
            src.write_text(source)
        exe = out / name
        cmd = [cc, "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{get_include()}",
               "-o", str(exe), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        return exe

    return build


def start_ready(cmd: list[str]) -> subprocess.Popen[str]:
    """Start a process that prints 'ready' once it is; fail the test if it does not."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"{cmd[:3]} did not start: {line!r} {err!r}")
    return proc


Arg = str | bytes | os.PathLike[str]


def run_cli(
    *args: Arg, timeout: float = 30, input: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m mmapipc ARGS` in a separate process, outside the checkout."""
    cmd: list[Any] = [sys.executable, "-m", "mmapipc", *args]
    return subprocess.run(
        cmd, capture_output=True, timeout=timeout, input=input,
        cwd=cwd or Path(os.environ.get("TMPDIR", "/tmp")), check=False,
    )


def start_cli(*args: Arg, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start `python -m mmapipc ARGS` in the background."""
    cmd: list[Any] = [sys.executable, "-m", "mmapipc", *args]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=cwd or Path(os.environ.get("TMPDIR", "/tmp")),
    )


def assert_clean_error(proc: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    """A one-line error on stderr, non-zero status, no traceback; returns the line."""
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode != 0, f"expected failure, got 0; stderr={err!r}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {lines!r}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def read_line(proc: subprocess.Popen[bytes], timeout: float = 20) -> bytes:
    """One line from proc's stdout pipe as soon as it is written (no waiting for exit)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0, f"no complete line within {timeout} s, got {data!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1)
            assert chunk, f"stdout closed after {data!r}; status {proc.wait()}"
            data += chunk
    return data


@pytest.fixture()
def shared(tmp_path: Path) -> Path:
    """A path for a shared record file (not created)."""
    return tmp_path / "shared.bin"


def reap(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


@pytest.fixture()
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Background processes to kill at the end of a test."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    reap(started)


def numbered(n: int) -> Student:
    """A record whose fields all follow from its id (name 6 to 19 bytes, sex by parity), so
    a record that is half one store and half another shows."""
    return Student(n, f"n{n % 100000:05d}" + "abcdefghijklm"[: n % 14], "mf"[n % 2])


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as two users")


def as_nobody(fn: Any) -> None:
    """Run fn in a forked child as uid/gid 65534 (another user); it must succeed."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            fn()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert status == 0


@pytest.fixture()
def open_dir() -> Iterator[Path]:
    """A scratch directory every user can reach (pytest's are root's alone), with a sticky
    world-writable tmp/ in it, as the system's temporary directory is."""
    d = Path(tempfile.mkdtemp(prefix="mmapipc-"))
    os.chmod(d, 0o755)
    (d / "tmp").mkdir()
    os.chmod(d / "tmp", 0o1777)
    yield d
    shutil.rmtree(d)


def run_script(script: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """python -c script ARGS in a child (a crash there cannot take the tests down)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONFAULTHANDLER"}
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


__all__ = ["assert_clean_error", "compile_c", "run_cli", "shutil", "start_cli"]
