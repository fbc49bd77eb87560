"""One voice on the command line: every message says which command it comes from, the
same problem reads the same in every command, and no number can cause a traceback."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import assert_clean_error, read_line, run_cli, start_cli

from mmapipc import Student, Writer, loops


def _stderr_line(p: subprocess.Popen[bytes], timeout: float = 20) -> str:
    """One line from p's stderr as soon as it is written."""
    assert p.stderr is not None
    fd, data = p.stderr.fileno(), b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0, f"no stderr line within {timeout} s, got {data!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 1)
            assert chunk, f"stderr closed after {data!r}"
            data += chunk
    return data.decode()


@pytest.mark.parametrize("command", ["read", "watch", "write", "dump"])
def test_an_unknown_option_is_named_by_its_command(command: str) -> None:
    line = assert_clean_error(run_cli(command, "--bogus", "x"), "--bogus")
    assert line.startswith(f"mmapipc {command}: unrecognized arguments"), line


def test_a_directory_reads_the_same_to_every_command(tmp_path: Path) -> None:
    reasons = set()
    for command in ("write", "read", "watch", "dump"):
        line = assert_clean_error(run_cli(command, tmp_path, "--count", "1")
                                  if command != "dump" else run_cli(command, tmp_path))
        assert line.startswith(f"mmapipc {command}: {tmp_path}: "), line
        reasons.add(line.split(f"{tmp_path}: ", 1)[1])
    assert reasons == {"is a directory, not a regular file"}, reasons


@pytest.mark.parametrize("args", [
    ("write", "F", "--interval", "1e308", "--count", "2"),
    ("write", "F", "--interval", "nan"),
    ("write", "F", "--interval", "-1"),
    ("read", "F", "--interval", "inf"),
    ("read", "F", "--count", "0"),
    ("watch", "F", "--timeout", "1e308"),
    ("watch", "F", "--timeout", "nan"),
    ("demo", "--seconds", "1e308"),
    ("demo", "--seconds", "-0.5"),
])
def test_numbers_out_of_range_are_one_line_errors(args: tuple[str, ...],
                                                  tmp_path: Path) -> None:
    argv = [str(tmp_path / a) if a == "F" else a for a in args]
    line = assert_clean_error(run_cli(*argv))
    assert line.startswith(f"mmapipc {args[0]}: argument --"), line


@pytest.mark.parametrize("interval", [1e308, float("inf"), float("nan"), -1.0])
def test_the_loops_refuse_intervals_they_cannot_sleep(interval: float, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="interval"):
        loops.write_loop(tmp_path / "f", interval=interval, count=2)
    with pytest.raises(ValueError, match="interval"):
        loops.read_loop(tmp_path / "f", interval=interval, count=1)
    with pytest.raises(ValueError, match="timeout"):
        loops.watch_loop(tmp_path / "f", timeout=interval, count=1)
    assert not (tmp_path / "f").exists(), "refused before touching the file"


def test_version() -> None:
    from importlib.metadata import version

    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == f"mmapipc {version('mmapipc')}\n"


@pytest.mark.parametrize("command", ["read", "watch"])
def test_read_and_watch_ride_out_a_truncation_alike(
        command: str, shared: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """Both report a truncated file once, as 'mmapipc CMD: ...', keep going, say when the
    record is readable again, and print the record written after regrowth."""
    first, back = Student(1, "first", "m"), Student(2, "back", "f")
    with Writer(shared) as w:
        w.write(first)
    extra = ["--interval", "0.05"] if command == "read" else []
    p = start_cli(command, shared, *extra)
    procs.append(p)
    assert read_line(p) == first.c_line()
    os.truncate(shared, 0)
    report = _stderr_line(p)
    assert report.startswith(f"mmapipc {command}: {shared}: "), report
    assert "28-byte" in report, report
    time.sleep(0.3)
    assert p.poll() is None, f"{command} gave up on a truncated file"
    with Writer(shared) as w:
        w.write(back)
    assert _stderr_line(p) == f"mmapipc {command}: {shared}: record is readable again\n"
    line = read_line(p)
    if command == "read":  # read prints every interval; watch only a change
        while line == first.c_line():
            line = read_line(p)
    assert line == back.c_line()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 128 + signal.SIGTERM


@pytest.mark.parametrize("kind", ["zero", "fifo", "dir", "huge", "missing"])
def test_a_header_that_is_no_file_to_read_is_one_line(kind: str, tmp_path: Path) -> None:
    """/dev/zero, a FIFO or a huge sparse file would never finish reading (or end when
    memory does): each is refused before it is read, by `layout` and by --struct-file."""
    path = tmp_path / "h"
    if kind == "zero":
        path = Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(1 << 40)
    for args in (("layout", path, "x"),
                 ("read", tmp_path / "F", "--struct-file", path, "--struct", "x")):
        line = assert_clean_error(run_cli(*args, timeout=20))
        assert line.startswith(f"mmapipc {args[0]}: {path}: "), line


def test_an_unknown_option_before_any_command_is_named() -> None:
    line = assert_clean_error(run_cli("--bogus"))
    assert line.startswith("mmapipc: unrecognized arguments: --bogus"), line
    line = assert_clean_error(run_cli())
    assert line.startswith("mmapipc: the following arguments are required: COMMAND"), line
