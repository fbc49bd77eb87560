"""mmapipc demo: writers and readers in separate processes, Python and C, talking at once.

Every reader's lines are shown as they are printed, prefixed with the time since the
writers started and the pairing they come from. The C reader is run on a pseudo-terminal,
so that its stdio flushes every line as it would on a screen (into a pipe it would hold
them all until it exits). Ctrl-C or SIGTERM stops every child at once and removes the
temporary files.
"""

from __future__ import annotations

import os
import pty
import selectors
import signal
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mmapipc.peers import CompilerError, build_peer, find_compiler
from mmapipc.record import RECORD_SIZE

WRITE_INTERVAL = 0.5
READ_INTERVAL = 1.0
START_TIMEOUT = 10.0  # seconds a child gets to write its record or print its first line
STOP_GRACE = 0.2  # seconds children get to end on SIGTERM before they are killed
PY = [sys.executable, "-m", "mmapipc"]


@dataclass
class Pairing:
    """One writer process and one reader process on one file."""

    label: str
    writer: list[str]
    reader: list[str]
    path: Path
    c_reader: bool = False
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class _Child:
    """A running child, where its stderr goes, and (for a reader) its output and buffer."""

    proc: subprocess.Popen[bytes]
    role: str
    pairing: Pairing
    errfile: Path
    fd: int | None = None
    pending: bytes = b""


def _last_line(errfile: Path) -> str:
    """The last line a child said on stderr (its error, not a whole traceback)."""
    try:
        text = errfile.read_text("utf-8", "replace")
    except OSError:
        return "(nothing on stderr)"
    lines = text.strip().splitlines()
    return lines[-1] if lines else "(nothing on stderr)"


def _output_for(c_reader: bool) -> tuple[int, int]:
    """(our end, the child's stdout) of a pseudo-terminal for a C reader, a pipe otherwise."""
    if not c_reader:
        return os.pipe()
    try:
        ours, theirs = pty.openpty()
    except OSError:  # no pseudo-terminals here: a pipe, and the C lines come at its exit
        return os.pipe()
    attrs = termios.tcgetattr(theirs)
    attrs[1] &= ~termios.OPOST  # no "\n" -> "\r\n": the bytes as the program wrote them
    termios.tcsetattr(theirs, termios.TCSANOW, attrs)
    return ours, theirs


@contextmanager
def _children() -> Iterator[list[_Child]]:
    """Children that are stopped and reaped, and whose descriptors are closed, on exit."""
    kids: list[_Child] = []
    try:
        yield kids
    finally:
        _stop(kids)
        for kid in kids:
            if kid.fd is not None:
                os.close(kid.fd)
                kid.fd = None


def _stop(kids: list[_Child]) -> None:
    """SIGTERM every child still running, then SIGKILL those left after STOP_GRACE."""
    for kid in kids:
        if kid.proc.poll() is None:
            kid.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for kid in kids:
        try:
            kid.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kid.proc.kill()
            kid.proc.wait()


def _start(kids: list[_Child], p: Pairing, role: str, tmp: Path) -> _Child:
    # Children run in the scratch directory with a safe path, so `python -m mmapipc` finds
    # the installed package even when the demo is started from a source checkout.
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    errfile = tmp / f"{p.path.stem}.{role}.err"
    argv = p.writer if role == "writer" else p.reader
    ours = theirs = None
    if role == "reader":
        ours, theirs = _output_for(p.c_reader)
    try:
        with open(errfile, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL if theirs is None else theirs,
                                    stderr=err, cwd=tmp, env=env)
    except BaseException:
        for fd in (ours, theirs):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        if theirs is not None:
            os.close(theirs)
    kid = _Child(proc, role, p, errfile, ours)
    kids.append(kid)
    return kid


def _wait_for_records(pairings: list[Pairing], kids: list[_Child]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    waiting = list(pairings)
    while waiting and time.monotonic() < deadline:
        for p in list(waiting):
            try:
                if p.path.stat().st_size >= RECORD_SIZE:
                    waiting.remove(p)
            except FileNotFoundError:
                pass
        if any(k.proc.poll() is not None for k in kids):
            break
        time.sleep(0.01)
    for p in waiting:
        p.problems.append("the writer did not create its record")


class _Screen:
    """Prints each reader's lines, prefixed with the time and the pairing."""

    def __init__(self, out: IO[str], t0: float, width: int) -> None:
        self.out, self.t0, self.width = out, t0, width

    def say(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def feed(self, kid: _Child, data: bytes) -> None:
        kid.pending += data
        *complete, kid.pending = kid.pending.split(b"\n")
        for raw in complete:
            self.line(kid.pairing, raw)

    def line(self, p: Pairing, raw: bytes) -> None:
        text = raw.decode("utf-8", "backslashreplace").rstrip("\r")
        p.lines.append(text)
        t = time.monotonic() - self.t0
        shown = text.replace("\t", "  ")
        self.say(f"{t:5.2f}s  {p.label:<{self.width}}: {shown}\n")


def _pump(kids: list[_Child], screen: _Screen, until: float, first_lines: bool) -> None:
    """Show readers' lines as they come until `until` (monotonic), or, with first_lines,
    until every reader has printed a line; returns early when every reader has ended."""
    readers = [k for k in kids if k.fd is not None]
    with selectors.DefaultSelector() as sel:
        for kid in readers:
            sel.register(kid.fd, selectors.EVENT_READ, kid)  # type: ignore[arg-type]
        while sel.get_map():
            if first_lines and all(k.pairing.lines for k in readers):
                return
            left = until - time.monotonic()
            if left <= 0:
                return
            for key, _ in sel.select(left):
                kid = key.data
                try:
                    data = os.read(key.fd, 65536)
                except OSError:  # EIO: a pseudo-terminal whose program has ended
                    data = b""
                if data:
                    screen.feed(kid, data)
                else:
                    sel.unregister(key.fd)


def _drain(kids: list[_Child], screen: _Screen) -> None:
    """After the children have ended: show what they printed last."""
    for kid in kids:
        if kid.fd is None:
            continue
        while True:
            try:
                data = os.read(kid.fd, 65536)
            except (OSError, BlockingIOError):
                data = b""
            if not data:
                break
            screen.feed(kid, data)
        if kid.pending:
            screen.line(kid.pairing, kid.pending)
            kid.pending = b""


def _pairings(tmp: Path, cdir: Path | None) -> list[Pairing]:
    w_args = ["--interval", str(WRITE_INTERVAL)]
    r_args = ["--interval", str(READ_INTERVAL)]
    ms_w, ms_r = str(int(WRITE_INTERVAL * 1000)), str(int(READ_INTERVAL * 1000))
    f1, f2, f3 = tmp / "py-py.shared", tmp / "py-c.shared", tmp / "c-py.shared"
    result = [
        Pairing("Python write -> Python read", [*PY, "write", str(f1), *w_args],
                [*PY, "read", str(f1), *r_args], f1),
    ]
    if cdir is not None:
        mmap_w, mmap_r = str(cdir / "mmap_w"), str(cdir / "mmap_r")
        result.append(Pairing("Python write -> C mmap_r", [*PY, "write", str(f2), "--id", "100",
                                                          *w_args],
                              [mmap_r, str(f2), "0", ms_r], f2, c_reader=True))
        result.append(Pairing("C mmap_w -> Python read", [mmap_w, str(f3), "0", ms_w,
                                                          "xiaoming", "1000"],
                              [*PY, "read", str(f3), *r_args], f3))
    return result


def _build(tmp: Path) -> tuple[Path | None, str]:
    """The C twins compiled into tmp/bin, and a note saying with what (or why not)."""
    try:
        cc = find_compiler()
        if cc is None:
            raise CompilerError("no C compiler found (set CC, or install cc/gcc/clang)")
        cdir = tmp / "bin"
        cdir.mkdir()
        build_peer("mmap_w", cdir, cc)
        build_peer("mmap_r", cdir, cc)
    except CompilerError as e:
        return None, f"{e}: showing Python to Python only"
    return cdir, f"C twins of mmap_w and mmap_r built with {cc}"


def run_demo(seconds: float, out: IO[str]) -> int:
    """Run the pairings side by side for `seconds` from the first line of every reader,
    then stop them; 0 if every reader printed its writer's records."""
    with tempfile.TemporaryDirectory(prefix="mmapipc-demo-") as name, _children() as kids:
        tmp = Path(name)
        cdir, note = _build(tmp)
        pairings = _pairings(tmp, cdir)
        width = max(len(p.label) for p in pairings)
        screen = _Screen(out, time.monotonic(), width)
        screen.say(
            f"mmapipc demo: {len(pairings)} writer/reader pair(s) in separate processes, all at"
            f" once, for {seconds:g} s after every reader's first line\n"
            f"  ({note}; files in {tmp})\n"
            f"  writers write every {WRITE_INTERVAL:g} s with id+1, readers print every"
            f" {READ_INTERVAL:g} s as mmap_r does; time since the writers started:\n"
        )
        for p in pairings:
            _start(kids, p, "writer", tmp)
        screen.t0 = time.monotonic()
        _wait_for_records(pairings, kids)
        for p in pairings:
            if not p.problems:
                _start(kids, p, "reader", tmp)
        _pump(kids, screen, time.monotonic() + START_TIMEOUT, first_lines=True)
        _pump(kids, screen, time.monotonic() + seconds, first_lines=False)
        ended = {id(k): k.proc.poll() for k in kids}
        _stop(kids)
        _drain(kids, screen)
        for kid in kids:
            status = ended[id(kid)]
            if status is not None:  # it ended before the demo stopped it
                kid.pairing.problems.append(
                    f"{kid.role} exited {status}: {_last_line(kid.errfile)}")
        failed = [p for p in pairings if p.problems or not p.lines]
        for p in failed:
            for problem in p.problems or ["the reader printed nothing"]:
                screen.say(f"mmapipc demo: [{p.label}] {problem}\n")
        if failed:
            return 1
        screen.say("mmapipc demo: every reader printed its writer's records.\n")
        return 0
