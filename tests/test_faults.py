"""Faults: files truncated under live readers and writers, writers killed mid-loop, stale
sequence numbers, and the SIGBUS guard next to faulthandler.

No Python process using mmapipc may die of a signal, every error must be the clear one, and
everything must carry on once the file is whole again.  A real crash outside the guard must
still reach faulthandler and kill the process.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import numbered, start_cli

from mmapipc import FileTooShortError, Reader, Student, Writer

PATIENCE = 30.0  # seconds before a wait that should end is called a failure (not a timing check)



def is_consistent(record: Student) -> bool:
    return record.id >= 0 and record == numbered(record.id)


class Lines:
    """The lines of a child's stream, collected by a thread so that waits never block."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        self._q: queue.Queue[bytes] = queue.Queue()
        self.seen: list[bytes] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            self._q.put(line)
        self._q.put(b"")  # end of stream

    def wait_for(self, wanted: Callable[[bytes], bool], what: str) -> bytes:
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                line = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {what} within {PATIENCE} s; saw {self.seen!r}") from None
            if not line:
                raise AssertionError(f"stream ended before {what}; saw {self.seen!r}")
            self.seen.append(line)
            if wanted(line):
                return line

    def until_end(self) -> list[bytes]:
        """Every line of the stream, once it has ended."""
        deadline = time.monotonic() + PATIENCE
        while True:
            line = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            if not line:
                return self.seen
            self.seen.append(line)

    def drain(self) -> list[bytes]:
        """Lines that arrived since the last wait, without waiting."""
        got: list[bytes] = []
        while True:
            try:
                line = self._q.get_nowait()
            except queue.Empty:
                return got
            if line:
                self.seen.append(line)
                got.append(line)


def _wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {PATIENCE} s")
        time.sleep(0.01)


# ---- truncation under a live reader or writer -------------------------------------------


def _check_short(e: FileTooShortError, path: Path, size: int) -> None:
    assert isinstance(e, OSError)
    assert e.filename == str(path)
    text = str(e)
    assert "28-byte" in text, text
    assert f"{size} byte" in text, text


@pytest.mark.parametrize("size", [0, 10, 24])
def test_truncated_under_a_reader(size: int, shared: Path) -> None:
    """0 faults (the page is gone); 10 and 24 do not (same page) and are caught by size."""
    first = Student(1, "xiaoming", "m")
    with Writer(shared) as w:
        w.write(first)
    with Reader(shared) as r:
        assert r.read() == first
        os.truncate(shared, size)
        for _ in range(3):  # every read says so; none crashes
            with pytest.raises(FileTooShortError) as info:
                r.read()
            _check_short(info.value, shared, size)
        with pytest.raises(FileTooShortError) as info:
            r.wait_for_change(timeout=5)
        _check_short(info.value, shared, size)
        back = Student(2, "back", "f")
        with Writer(shared) as w:  # the file grows back
            w.write(back)
        assert r.read() == back
        assert r.read_raw() == back


def test_truncated_under_a_writer(shared: Path) -> None:
    w = Writer(shared)
    w.write(numbered(1))
    os.truncate(shared, 0)
    with pytest.raises(FileTooShortError) as info:
        w.write(numbered(2))
    _check_short(info.value, shared, 0)
    with Writer(shared) as other:  # someone makes the file whole again
        other.write(numbered(3))
    w.write(numbered(4))  # the first writer's mapping works again
    w.close()
    with Reader(shared) as r:
        assert r.read() == numbered(4)


@pytest.mark.parametrize("size", [10, 24])
def test_live_writer_keeps_writing_after_truncation(size: int, shared: Path) -> None:
    """Stores past the end of a file within its page vanish without a fault: the writer
    and a reader fed through the lock each find out from the file's size, soon."""
    w = Writer(shared)
    w.write(numbered(1))
    r = Reader(shared)
    assert r.read() == numbered(1)
    os.truncate(shared, size)
    n, writer_error, reader_error = 2, None, None
    deadline = time.monotonic() + PATIENCE
    while (writer_error is None or reader_error is None) and time.monotonic() < deadline:
        if writer_error is None:
            try:
                w.write(numbered(n))
            except FileTooShortError as e:
                writer_error = e
        if reader_error is None:
            try:
                r.read()
            except FileTooShortError as e:
                reader_error = e
        n += 1
        time.sleep(0.001)
    assert writer_error is not None, "the writer never noticed the truncation"
    assert reader_error is not None, "the reader never noticed the truncation"
    _check_short(writer_error, shared, size)
    _check_short(reader_error, shared, size)
    with Writer(shared) as other:  # whole again: both carry on
        other.write(numbered(n))
    w.write(numbered(n + 1))
    assert r.read() == numbered(n + 1)
    w.close()
    r.close()


def test_truncated_while_reader_waits_in_another_thread(shared: Path) -> None:
    """The guard is per thread: a reader blocked in wait_for_change in a thread gets the error."""
    with Writer(shared) as w:
        w.write(numbered(1))
    r = Reader(shared, max_gap=0.001)
    r.read()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            r.wait_for_change(timeout=PATIENCE)
        except BaseException as e:  # reported to the main thread
            errors.append(e)

    t = threading.Thread(target=wait)
    t.start()
    os.truncate(shared, 0)
    t.join(PATIENCE)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], FileTooShortError), errors
    r.close()


@pytest.mark.parametrize("size", [0, 10])
def test_truncated_under_mmapipc_read(size: int, shared: Path,
                                      procs: list[subprocess.Popen[bytes]]) -> None:
    """`mmapipc read` in its own process: one report, keeps going, prints again on regrowth."""
    first = Student(1, "xiaoming", "m")
    with Writer(shared) as w:
        w.write(first)
    p = start_cli("read", shared, "--interval", "0.05")
    procs.append(p)
    out, err = Lines(p.stdout), Lines(p.stderr)
    out.wait_for(lambda line: line == first.c_line(), "first record")
    os.truncate(shared, size)
    report = err.wait_for(lambda line: True, "truncation report").decode()
    assert str(shared) in report and "28-byte" in report and f"{size} byte" in report, report
    time.sleep(0.5)  # ten intervals of trying against the short file
    assert p.poll() is None, f"the reader died: status {p.returncode}"
    assert err.drain() == [], "reported more than once"
    back = Student(777, "back", "f")
    with Writer(shared) as w:
        w.write(back)
    out.wait_for(lambda line: line == back.c_line(), "the record written after regrowth")
    assert p.poll() is None
    p.send_signal(signal.SIGTERM)
    assert p.wait(PATIENCE) == 128 + signal.SIGTERM, "must end by its SIGTERM handler"
    stderr = b"".join(err.until_end()).decode()
    assert "Traceback" not in stderr, stderr
    reports = [ln for ln in stderr.splitlines() if "28-byte" in ln]
    assert reports == [report.rstrip("\n")], f"expected one report, got {stderr!r}"
    others = [ln for ln in stderr.splitlines() if ln not in reports]
    assert len(others) <= 1 and all("readable again" in ln for ln in others), stderr
    for line in out.until_end():
        assert line in (first.c_line(), back.c_line()), f"unexpected output {line!r}"


def test_read_wait_starts_before_its_writer(shared: Path,
                                            procs: list[subprocess.Popen[bytes]]) -> None:
    """`mmapipc read --wait` on a missing, then short file waits for a record."""
    p = start_cli("read", shared, "--wait", "--interval", "0.05", "--count", "1")
    procs.append(p)
    shared.write_bytes(b"short")
    time.sleep(0.2)
    assert p.poll() is None, "gave up on a short file"
    with Writer(shared) as w:
        w.write(numbered(5))
    stdout, stderr = p.communicate(timeout=PATIENCE)
    assert p.returncode == 0, stderr
    assert stdout == numbered(5).c_line()


# ---- writers killed mid-loop ------------------------------------------------------------

READ_ONCE = """
import json, sys
from mmapipc import Reader
with Reader(sys.argv[1]) as r:
    rec = r.read()
    again = r.read()
    print(json.dumps({"hex": rec.to_bytes().hex(), "same": again == rec, "stats": r.stats}))
"""


def read_in_child(path: Path) -> tuple[Student, dict[str, Any]]:
    """read() in a separate process, so that a hang is a failure, not a stuck test run."""
    proc = subprocess.run([sys.executable, "-c", READ_ONCE, str(path)], capture_output=True,
                          timeout=PATIENCE, check=False)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    assert out["same"]
    return Student.from_bytes(bytes.fromhex(out["hex"])), out


def _seq(path: Path) -> tuple[int, int]:
    """The padding as an mmapipc writer keeps it: (marker byte, 16-bit sequence)."""
    raw = path.read_bytes()
    return raw[25], int.from_bytes(raw[26:28], sys.byteorder)


def _wait_for_id(reader: Reader[Student], at_least: int) -> None:
    deadline = time.monotonic() + PATIENCE
    while reader.read().id < at_least:
        assert time.monotonic() < deadline, f"the writer did not reach id {at_least}"
        time.sleep(0.005)


def test_kill_9_the_cli_writer(shared: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    with Writer(shared) as w:
        w.write(numbered(0))
    reader = Reader(shared)  # open across every kill
    for round_ in range(3):
        start = 1000 * (round_ + 1) * 1000
        p = start_cli("write", shared, "--interval", "0", "--id", str(start),
                      "--name", f"killme{round_}", "--sex", "q")
        procs.append(p)
        _wait_for_id(reader, start + 500)
        p.send_signal(signal.SIGKILL)
        assert p.wait(PATIENCE) == -signal.SIGKILL
        record, _ = read_in_child(shared)
        raw = shared.read_bytes()
        assert len(raw) == 28
        assert raw[4:24] == f"killme{round_}".encode().ljust(20, b"\0"), raw
        assert record.name == f"killme{round_}" and record.sex == "q"
        assert start + 500 <= record.id < start + 10**7
        assert reader.read() == record
    # A new writer carries on, and the reader that saw it all follows.
    proc = subprocess.run([sys.executable, "-m", "mmapipc", "write", str(shared), "--count", "50",
                           "--interval", "0", "--id", "9000", "--name", "again"],
                          capture_output=True, timeout=PATIENCE, check=False, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert reader.read() == Student(9049, "again", "m")
    assert read_in_child(shared)[0] == Student(9049, "again", "m")
    marker, seq = _seq(shared)
    assert marker == 0xA6 and seq % 2 == 0
    reader.close()


BUSY_WRITER = """
import sys
from mmapipc import Student, Writer
def numbered(n):
    return Student(n, f"n{n % 100000:05d}" + "abcdefghijklm"[: n % 14], "mf"[n % 2])
with Writer(sys.argv[1]) as w:
    n = int(sys.argv[2])
    while True:
        w.write(numbered(n))
        n += 1
"""


def test_kill_9_a_writer_process(shared: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    with Writer(shared) as w:
        w.write(numbered(0))
    reader = Reader(shared)  # open across every kill
    for round_ in range(3):
        start = 10**6 * (round_ + 1)
        p = subprocess.Popen([sys.executable, "-c", BUSY_WRITER, str(shared), str(start)])
        procs.append(p)
        _wait_for_id(reader, start + 2000)
        p.kill()
        assert p.wait(PATIENCE) == -signal.SIGKILL
        record, _ = read_in_child(shared)
        assert is_consistent(record), record
        assert start + 2000 <= record.id < start + 10**6
        assert reader.read() == record
    with Writer(shared) as w:  # a new writer carries on
        for n in range(5 * 10**6, 5 * 10**6 + 100):
            w.write(numbered(n))
    assert reader.read() == numbered(5 * 10**6 + 99)
    assert _seq(shared)[1] % 2 == 0
    reader.close()


STALE = """
import json, sys
from mmapipc import Reader, Student, Writer
path = sys.argv[1]
r = Reader(path)
first = r.read()
second = r.read()
fresh = [Reader(path).read() for _ in range(2)]
w = Writer(path)
w.write(Student(6, "fresh", "f"))
raw = open(path, "rb").read()
after = r.read()
print(json.dumps({
    "first": first.to_bytes().hex(), "second": second.to_bytes().hex(),
    "fresh": [f.to_bytes().hex() for f in fresh], "after": after.to_bytes().hex(),
    "other": Reader(path).read().to_bytes().hex(), "raw": raw.hex(), "stats": r.stats,
}))
w.close()
"""


@pytest.mark.parametrize("seq", [0x0101, 0xFFFF, 0x0001])
def test_stale_odd_sequence(seq: int, shared: Path) -> None:
    """A writer killed mid-store leaves the sequence odd: readers wait a bounded time, then
    read by agreement; a new writer carries on from an even sequence past it."""
    stale = Student(5, "stale", "m")
    shared.write_bytes(stale.to_bytes()[:25] + b"\xa5" + seq.to_bytes(2, sys.byteorder))
    proc = subprocess.run([sys.executable, "-c", STALE, str(shared)], capture_output=True,
                          timeout=PATIENCE, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)

    def decode(h: str) -> Student:
        return Student.from_bytes(bytes.fromhex(h))

    assert decode(out["first"]) == stale and decode(out["second"]) == stale
    assert [decode(h) for h in out["fresh"]] == [stale, stale]
    assert out["stats"]["fallback_reads"] >= 1
    fresh = Student(6, "fresh", "f")
    assert decode(out["after"]) == fresh and decode(out["other"]) == fresh
    raw = bytes.fromhex(out["raw"])
    new_seq = int.from_bytes(raw[26:28], sys.byteorder)
    assert raw[25] == 0xA6 and new_seq % 2 == 0 and new_seq != seq


LEGACY_WRITER = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "mmapipc.h"

/* A C writer without the seq lock whose padding holds given garbage:
 *   legacy_w FILE FIRST COUNT PAD25 PAD26 PAD27   (one record every 200 us) */
int main(int argc, char **argv)
{
    if (argc != 7)
        return 2;
    int fd = open(argv[1], O_RDWR | O_CREAT, 0664);
    if (fd < 0 || ftruncate(fd, sizeof(struct STU)) != 0)
        return 3;
    struct STU *mm = mmap(NULL, sizeof(struct STU), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mm == MAP_FAILED)
        return 4;
    close(fd);
    struct STU s;
    unsigned char *b = (unsigned char *)&s;
    memset(&s, 0, sizeof s);
    b[25] = (unsigned char)strtol(argv[4], NULL, 0);
    b[26] = (unsigned char)strtol(argv[5], NULL, 0);
    b[27] = (unsigned char)strtol(argv[6], NULL, 0);
    long first = atol(argv[2]), count = atol(argv[3]);
    for (long n = first; n < first + count; n++) {
        static const char tail[] = "abcdefghijklm";
        s.id = (int)n;
        memset(s.name, 0, sizeof s.name);
        snprintf(s.name, sizeof s.name, "n%05ld%.*s", n % 100000, (int)(n % 14), tail);
        s.sex = "mf"[n % 2];
        memcpy(mm, &s, sizeof s);
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
    return 0;
}
"""


@pytest.mark.parametrize("pad", [(0xA5, 0x01, 0x01), (0xA5, 0x02, 0x02), (0x00, 0x00, 0x00)],
                         ids=["marker-odd", "marker-even", "zero"])
def test_legacy_writer_with_marker_like_padding(pad: tuple[int, int, int], shared: Path,
                                                build_c: Any) -> None:
    """Garbage padding that looks like the marker must not make reads stall or go stale."""
    exe = build_c("legacy_w", LEGACY_WRITER)
    shared.write_bytes(numbered(0).to_bytes())
    count = 2000
    ids: set[int] = set()
    with Reader(shared) as r:
        assert r.read() == numbered(0)  # first seen without the marker
        p = subprocess.Popen([str(exe), str(shared), "1", str(count), *map(hex, pad)])
        while p.poll() is None:
            ids.add(r.read().id)  # (a legacy writer can be seen torn: not checked here)
        assert p.wait() == 0
        assert r.read() == numbered(count)  # the last record, not a stale one
    assert len(ids) > 1, "the reader saw no change while the writer ran"
    assert shared.read_bytes()[25:] == bytes(pad)  # the reader never writes


@pytest.mark.parametrize("pad", [b"\xa5\x02\x02", b"\xa5\x01\x01", b"\xa5\x00\x00"],
                         ids=["even", "odd", "zero"])
def test_marker_like_padding_after_a_plain_record(pad: bytes, shared: Path) -> None:
    """A plain record, then records whose fixed padding looks like the marker: the sequence
    never moves, so each change must still be seen (read and wait_for_change)."""
    shared.write_bytes(bytes(28))

    def put(record: Student) -> None:
        fd = os.open(shared, os.O_WRONLY)
        try:
            os.pwrite(fd, record.to_bytes()[:25] + pad, 0)
        finally:
            os.close(fd)

    with Reader(shared) as r:
        assert r.read() == Student(0, "", b"\0")
        for n in range(1, 4):
            put(numbered(n))
            assert r.read() == numbered(n)
        put(numbered(4))
        assert r.wait_for_change(timeout=PATIENCE) == numbered(4)


# ---- the guard and faulthandler ---------------------------------------------------------

GUARD_SCRIPT = """
import faulthandler, mmap, os, sys, threading
d = sys.argv[1]
rec = os.path.join(d, "rec.bin")
state = {}

def guarded():
    from mmapipc import FileTooShortError, Student, Writer
    r = state["reader"]
    with Writer(rec) as w:
        w.write(Student(1, "whole", "m"))
    assert r.read().name == "whole"
    os.truncate(rec, 0)
    try:
        r.read()
    except FileTooShortError:
        pass
    else:
        raise AssertionError("read() of a truncated file did not raise")
    w = Writer(rec)
    os.truncate(rec, 0)
    try:
        w.write(Student(2, "x", "m"))
    except FileTooShortError:
        pass
    else:
        raise AssertionError("write() to a truncated file did not raise")
    w.close()
    print("guarded ok", flush=True)

def crash():
    other = os.path.join(d, "other.bin")
    with open(other, "wb") as f:
        f.write(b"x" * 4096)
    with open(other, "r+b") as f:
        m = mmap.mmap(f.fileno(), 4096)
    os.truncate(other, 0)
    print("crashing", flush=True)
    m[100]
    print("survived a SIGBUS outside the guard", flush=True)

def in_thread(fn):
    errors = []
    def run():
        try:
            fn()
        except BaseException as e:
            errors.append(e)
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]

def step(name):
    if name == "fh_on":
        faulthandler.enable()
    elif name == "fh_off":
        faulthandler.disable()
    elif name == "open":
        from mmapipc import Reader, Student, Writer
        with Writer(rec) as w:
            w.write(Student(0, "first", "m"))
        state["reader"] = Reader(rec)
    elif name == "guarded":
        guarded()
    elif name == "crash":
        crash()
    elif name.startswith("thread:"):
        in_thread(lambda: [step(s) for s in name[7:].split("+")])
    else:
        raise SystemExit(f"unknown step {name}")

for name in sys.argv[2:]:
    step(name)
print("done", flush=True)
"""

FATAL = "Fatal Python error: Bus error"
GUARD_SCENARIOS = [
    # id, steps, dies of SIGBUS, faulthandler's dump expected
    ("baseline-no-mmapipc", ["fh_on", "crash"], True, True),
    ("fh-before-import", ["fh_on", "open", "guarded", "crash"], True, True),
    ("fh-after-use", ["open", "guarded", "fh_on", "crash"], True, True),
    ("fh-after-open", ["open", "fh_on", "guarded"], False, False),
    ("fh-after-open-then-crash", ["open", "fh_on", "guarded", "guarded", "crash"], True, True),
    ("fh-disabled", ["fh_on", "open", "fh_off", "guarded"], False, False),
    ("fh-disabled-then-crash", ["fh_on", "open", "fh_off", "guarded", "crash"], True, False),
    ("fh-toggled", ["fh_on", "open", "guarded", "fh_off", "fh_on", "guarded", "crash"],
     True, True),
    ("no-fh", ["open", "guarded", "crash"], True, False),
    ("thread-guarded", ["fh_on", "open", "thread:guarded+guarded", "guarded", "crash"],
     True, True),
    ("thread-guarded-then-crash", ["fh_on", "open", "thread:guarded+guarded+crash"], True, True),
    ("thread-no-fh", ["open", "thread:guarded", "thread:guarded+crash"], True, False),
]


@pytest.mark.parametrize(("steps", "dies", "dump"), [s[1:] for s in GUARD_SCENARIOS],
                         ids=[s[0] for s in GUARD_SCENARIOS])
def test_guard_and_faulthandler(steps: list[str], dies: bool, dump: bool,
                                tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONFAULTHANDLER"}
    proc = subprocess.run([sys.executable, "-c", GUARD_SCRIPT, str(tmp_path), *steps],
                          capture_output=True, timeout=PATIENCE, env=env, check=False)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    guarded = sum(s.count("guarded") for s in steps)
    assert out.count("guarded ok") == guarded, (out, err)
    if dies:
        assert proc.returncode == -signal.SIGBUS, (proc.returncode, out, err)
        assert "crashing" in out and "survived" not in out
    else:
        assert proc.returncode == 0, (out, err)
        assert out.endswith("done\n")
    assert err.count(FATAL) == (1 if dump else 0), err
    if not dump:
        assert "Fatal Python error" not in err, err
    assert "Traceback" not in err, err
