"""The command line: clean one-line errors for every bad input, signals, pipes, dump, help."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_clean_error, read_line, run_cli

from mmapipc import Student, Writer

NOBODY = 65534
TMP = Path(os.environ.get("TMPDIR", "/tmp"))

# Runs the CLI's main() after giving up root, so that file access is checked as an
# ordinary user whichever directory the interpreter and the package live in (they may
# not be readable by that user: the arguments are parsed once first, so that everything
# main() imports is imported before).
AS_NOBODY = f"""
import os, sys
from mmapipc.cli import build_parser, main
build_parser().parse_args(sys.argv[1:])
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid({NOBODY})
    os.setuid({NOBODY})
assert os.geteuid() != 0
sys.exit(main(sys.argv[1:]))
"""


def run_unprivileged(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", AS_NOBODY, *args], capture_output=True, timeout=30,
        cwd="/", check=False,
    )


def _default_signals() -> None:
    # A shell may start background jobs with SIGINT ignored; Python then never raises
    # KeyboardInterrupt.  Give the child the default dispositions.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start(*args: Any) -> subprocess.Popen[bytes]:
    """`python -m mmapipc ARGS` in the background, with stdout block-buffered as usual."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.Popen(
        [sys.executable, "-m", "mmapipc", *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, cwd=TMP, preexec_fn=_default_signals, env=env,
    )


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def record_in(path: Path) -> Student | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return Student.from_bytes(data) if len(data) == 28 else None


def reason(code: int) -> str:
    return os.strerror(code)


# ---- bad paths -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["read", "dump"])
def test_missing_file(tmp_path: Path, command: str) -> None:
    path = tmp_path / "missing.bin"
    proc = run_cli(command, path)
    assert_clean_error(proc, f"mmapipc {command}:", str(path), reason(errno.ENOENT))
    assert proc.stdout == b""


def test_directory_write(tmp_path: Path) -> None:
    proc = run_cli("write", tmp_path, "--count", "1")
    assert_clean_error(proc, "mmapipc write:", str(tmp_path), "is a directory, not a regular file")


@pytest.mark.parametrize("command", ["read", "dump"])
def test_directory_read(tmp_path: Path, command: str) -> None:
    proc = run_cli(command, tmp_path)
    line = assert_clean_error(proc, f"mmapipc {command}:", str(tmp_path))
    assert "directory" in line.lower()


def test_path_in_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "f.bin"
    proc = run_cli("write", path, "--count", "1")
    assert_clean_error(proc, "mmapipc write:", str(path), reason(errno.ENOENT))
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("command", ["read", "dump"])
def test_empty_file(tmp_path: Path, command: str) -> None:
    """The C reader dies of SIGBUS here; we say the file is too short."""
    path = tmp_path / "empty.bin"
    path.touch()
    proc = run_cli(command, path)
    line = assert_clean_error(proc, f"mmapipc {command}:", str(path))
    assert "28" in line and "0 bytes" in line


def test_fifo_does_not_hang(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    proc = run_cli("read", path, "--count", "1", timeout=20)
    line = assert_clean_error(proc, "mmapipc read:", str(path))
    assert "fifo" in line.lower()


def test_longer_file_is_not_shrunk(tmp_path: Path) -> None:
    path = tmp_path / "long.bin"
    path.write_bytes(b"keep" * 25)
    proc = run_cli("write", path, "--count", "1")
    assert_clean_error(proc, "mmapipc write:", str(path), "100 bytes")
    assert path.read_bytes() == b"keep" * 25


def test_non_utf8_missing_path_gives_a_clean_error(tmp_path: Path) -> None:
    path = os.fsencode(tmp_path) + b"/caf\xe9\xff.bin"
    proc = run_cli("read", path)
    assert_clean_error(proc, "mmapipc read:", str(tmp_path), reason(errno.ENOENT))


@pytest.fixture()
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's own tmp dirs are private to root)."""
    d = Path(tempfile.mkdtemp(prefix="mmapipc-perm-", dir=TMP))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def _protect(path: Path, mode: int) -> None:
    if os.geteuid() == 0:
        path.chmod(mode)  # owned by root, mode denies the unprivileged child
    else:
        path.chmod(mode & 0o500 if path.is_dir() else 0)  # deny ourselves


def test_permission_denied(open_dir: Path) -> None:
    """Run as uid 65534 (when root) on root's 0600 file and 0755 directory."""
    public = open_dir / "public.bin"
    Writer(public, seqlock=False).close()
    public.chmod(0o644)
    # Control: the unprivileged child can reach this directory and read a public file.
    ok = run_unprivileged("read", str(public), "--count", "1")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == b"id=0\tname=\t\0\n"

    secret = open_dir / "secret.bin"
    Writer(secret).close()
    _protect(secret, 0o600)
    denied = reason(errno.EACCES)
    for command, *options in (("read", "--count", "1"), ("dump",), ("write", "--count", "1")):
        proc = run_unprivileged(command, str(secret), *options)
        assert_clean_error(proc, f"mmapipc {command}:", str(secret), denied)
        assert proc.stdout == b""

    locked = open_dir / "locked"
    locked.mkdir()
    _protect(locked, 0o755)
    target = locked / "new.bin"
    proc = run_unprivileged("write", str(target), "--count", "1")
    assert_clean_error(proc, "mmapipc write:", str(target), denied)
    assert not target.exists()


# ---- bad values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "needles"),
    [
        ("--name", "x" * 20, ("name", "19")),
        ("--name", "\u00e9" * 10, ("name", "19")),
        ("--sex", "", ("sex", "one byte")),
        ("--sex", "ab", ("sex", "one byte")),
        ("--id", "2147483648", ("id", "2147483647")),
        ("--id", "-2147483649", ("id", "-2147483648")),
        ("--id", "ten", ("--id",)),
        ("--interval", "-1", ("--interval",)),
        ("--interval", "abc", ("--interval",)),
        ("--interval", "nan", ("--interval",)),
        ("--interval", "inf", ("--interval",)),
        ("--count", "0", ("--count",)),
        ("--count", "-3", ("--count",)),
        ("--count", "1.5", ("--count",)),
        ("--count", "x", ("--count",)),
    ],
)
def test_bad_write_values(
    tmp_path: Path, option: str, value: str, needles: tuple[str, ...]
) -> None:
    path = tmp_path / "f.bin"
    count = () if option == "--count" else ("--count", "1")
    proc = run_cli("write", path, f"{option}={value}", *count)
    assert_clean_error(proc, "mmapipc write:", *needles)
    assert not path.exists()  # nothing was created before the value was refused


@pytest.mark.parametrize(
    ("option", "value"),
    [("--interval", "-0.5"), ("--interval", "soon"), ("--count", "0"), ("--count", "many")],
)
def test_bad_read_values(tmp_path: Path, option: str, value: str) -> None:
    path = tmp_path / "f.bin"
    Writer(path).close()
    proc = run_cli("read", path, f"{option}={value}")
    assert_clean_error(proc, "mmapipc read:", option)
    assert proc.stdout == b""


@pytest.mark.parametrize(
    "args", [(), ("bogus",), ("read",), ("write",), ("dump",), ("read", "f", "--nope")]
)
def test_usage_errors(args: tuple[str, ...]) -> None:
    proc = run_cli(*args)
    assert_clean_error(proc, "mmapipc")
    assert proc.returncode == 2


# ---- what works ------------------------------------------------------------------------


@pytest.mark.parametrize("args", [("--help",), ("write", "--help"), ("read", "--help"),
                                  ("dump", "--help"), ("demo", "--help")])
def test_help(args: tuple[str, ...]) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert out.startswith("usage: mmapipc") and proc.stderr == b""
    expected = {
        "--help": ["write", "read", "dump", "demo"],
        "write": ["--id", "--name", "--sex", "--interval", "--count"],
        "read": ["--interval", "--count", "--json"],
        "dump": ["file"],
        "demo": ["--seconds"],
    }[args[0]]
    for word in expected:
        assert word in out


def test_write_then_read_and_json(shared: Path) -> None:
    proc = run_cli("write", shared, "--id", "-5", "--name", "\u5c0f\u660e", "--sex", "f",
                   "--count", "3", "--interval", "0.01")
    assert proc.returncode == 0 and proc.stderr == b"" and proc.stdout == b""
    assert record_in(shared) == Student(-3, "\u5c0f\u660e", "f")
    line = run_cli("read", shared, "--count", "2", "--interval", "0.01")
    assert line.returncode == 0, line.stderr
    assert line.stdout == "id=-3\tname=\u5c0f\u660e\tf\n".encode() * 2
    js = run_cli("read", shared, "--count", "1", "--json")
    assert js.returncode == 0, js.stderr
    assert json.loads(js.stdout) == {"id": -3, "name": "\u5c0f\u660e", "sex": "f"}


def test_write_defaults_are_mmap_w_s(shared: Path) -> None:
    proc = run_cli("write", shared, "--count", "1")
    assert proc.returncode == 0, proc.stderr
    assert record_in(shared) == Student(10, "xiaoming", "m")


def test_write_non_utf8_name_from_argv(shared: Path) -> None:
    proc = run_cli("write", shared, "--name", b"caf\xe9\xff", "--sex", "f", "--count", "1")
    assert proc.returncode == 0, proc.stderr
    assert shared.read_bytes()[4:10] == b"caf\xe9\xff\0"
    out = run_cli("read", shared, "--count", "1")
    assert out.stdout == b"id=10\tname=caf\xe9\xff\tf\n"


HEX_ROW = re.compile(r"^\s*(\d+)\s+(\w+)\s+((?:[0-9a-f]{2})(?: [0-9a-f]{2})*)\s*$")


def test_dump_shows_all_28_bytes_in_hex(shared: Path) -> None:
    with Writer[Student](shared) as w:  # the seq lock puts non-zero bytes in the padding
        w.write(Student(0x11223344, b"caf\xe9\xff", "f"))
    raw = shared.read_bytes()
    proc = run_cli("dump", shared)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    text = proc.stdout.decode("utf-8", "surrogateescape")
    assert "287454020" in text.splitlines()[0]  # 0x11223344, decoded
    rows = [m for m in map(HEX_ROW.match, text.splitlines()) if m]
    fields = {m.group(2): int(m.group(1)) for m in rows}
    assert fields == {"id": 0, "name": 4, "sex": 24, "padding": 25}
    dumped = b""
    for m in sorted(rows, key=lambda m: int(m.group(1))):
        assert int(m.group(1)) == len(dumped), "rows must be contiguous"
        dumped += bytes.fromhex(m.group(3))
    assert dumped == raw and len(dumped) == 28
    assert re.search(r"\b28\b", text.splitlines()[-1])


def test_console_script_and_module_agree(shared: Path) -> None:
    script = Path(sys.executable).parent / "mmapipc"
    assert script.exists(), f"console script not installed next to {sys.executable}"
    Writer(shared).close()
    w = subprocess.run([script, "write", shared, "--id", "42", "--count", "1"],
                       capture_output=True, cwd=TMP, timeout=30, check=False)
    assert w.returncode == 0, w.stderr
    by_script = subprocess.run([script, "read", shared, "--count", "1"],
                               capture_output=True, cwd=TMP, timeout=30, check=False)
    by_module = run_cli("read", shared, "--count", "1")
    assert by_script.returncode == by_module.returncode == 0
    assert by_script.stdout == by_module.stdout == b"id=42\tname=xiaoming\tm\n"
    bad = subprocess.run([script, "read", shared.parent / "missing"],
                         capture_output=True, cwd=TMP, timeout=30, check=False)
    assert_clean_error(bad, "mmapipc read:", reason(errno.ENOENT))


# ---- pipes and signals -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "line"),
    [((), b"id=77\tname=pipe\tp\n"), (("--json",), b'{"id": 77, "name": "pipe", "sex": "p"}\n')],
    ids=["line", "json"],
)
def test_read_is_flushed_when_piped(
    shared: Path, procs: list[subprocess.Popen[bytes]], options: tuple[str, ...], line: bytes
) -> None:
    """The first line reaches the pipe at once, while `read` sleeps out its long interval
    (mmap_r's would sit in its stdio buffer)."""
    with Writer[Student](shared) as w:
        w.write(Student(77, "pipe", "p"))
    p = start("read", shared, "--interval", "600", *options)
    procs.append(p)
    assert read_line(p) == line
    assert p.poll() is None  # still in its first sleep: nothing flushed by exiting
    p.terminate()
    assert p.wait(timeout=20) == 128 + signal.SIGTERM


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_write_loop_cleanly(
    shared: Path, procs: list[subprocess.Popen[bytes]], sig: signal.Signals
) -> None:
    p = start("write", shared, "--id", "100", "--name", "sig", "--interval", "0.02")
    procs.append(p)

    def advanced() -> bool:
        rec = record_in(shared)
        return rec is not None and rec.id >= 102  # the loop is running

    wait_for(advanced, "the writer to loop")
    p.send_signal(sig)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 128 + sig, err
    assert b"Traceback" not in err and err == b""
    data = shared.read_bytes()
    assert len(data) == 28
    rec = Student.from_bytes(data)
    assert rec.name == "sig" and rec.sex == "m" and rec.id >= 102


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_read_loop_cleanly(
    shared: Path, procs: list[subprocess.Popen[bytes]], sig: signal.Signals
) -> None:
    with Writer[Student](shared) as w:
        w.write(Student(5, "r", "m"))
    before = shared.read_bytes()
    p = start("read", shared, "--interval", "0.02")
    procs.append(p)
    assert read_line(p) == b"id=5\tname=r\tm\n"
    p.send_signal(sig)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 128 + sig, err
    assert err == b""
    assert set(out.splitlines()) <= {b"id=5\tname=r\tm"}
    assert shared.read_bytes() == before
