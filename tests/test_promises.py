"""Hostile tests of the guarantees: threads sharing one object, close() from another thread,
big structs under a busy writer, stale records, truncated and replaced files, planted links.

Each test tries to break one promise of docs/guarantees.md and asserts that it holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import as_nobody, numbered, root_only, run_script

import mmapipc.mapping
from mmapipc import (
    FileReplacedError,
    FileTooShortError,
    Layout,
    Reader,
    Student,
    SymlinkError,
    Writer,
)
from mmapipc.mapping import SIZE_CHECK

HAMMER = 3.0  # seconds each torn/stale hammer runs
PATIENCE = 60.0



def big_layout(ints: int) -> Layout:
    return Layout.from_c(
        f"struct big {{ int head; int data[{ints}]; int tail; signed char c; }};", "struct big")


# ---- close() from another thread -----------------------------------------------------------

CLOSE_SCRIPT = """
import sys, threading, time
from mmapipc import Layout, Reader, Student, Writer
path, what = sys.argv[1], sys.argv[2]
big = Layout.from_c("struct huge { int head; char blob[4194304]; int tail; };", "struct huge")
results = []

def inside(fn):
    try:
        while True:
            fn()
    except ValueError as e:
        results.append("ValueError" if "closed" in str(e) else repr(e))
    except BaseException as e:
        results.append(repr(e))

for round in range(6):
    if what == "wait":
        with Writer(path) as w:
            w.write(Student(1, "one", "m"))
        obj = Reader(path)
        fn = lambda: obj.wait_for_change(2.0)
    elif what == "read":
        with Writer(path, layout=big) as w:
            w.write(big.Record(head=1, blob="x" * 4000000, tail=1))
        obj = Reader(path, layout=big)
        fn = obj.read
    else:
        obj = Writer(path, layout=big)
        rec = big.Record(head=2, blob="y" * 4000000, tail=2)
        fn = lambda: obj.write(rec)
    threads = [threading.Thread(target=inside, args=(fn,)) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.2 if what == "wait" else 0.02 * (round + 1))
    obj.close()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
print(" ".join(results))
"""


@pytest.mark.parametrize("what", ["wait", "read", "write"])
def test_close_from_another_thread_never_crashes(what: str, tmp_path: Path) -> None:
    """close() while other threads wait or copy: they get ValueError, the process lives."""
    proc = run_script(CLOSE_SCRIPT, str(tmp_path / "rec.bin"), what)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.split() == ["ValueError"] * 12, proc.stdout


# ---- thread safety -------------------------------------------------------------------------

def _consistent(rec: Any, ints: int) -> bool:
    if ints == 0:
        return bool(rec == numbered(rec.id) or rec == Student(0, "", b"\0"))
    d = rec.data
    return bool(rec.head == d[0] == d[ints // 2] == d[-1] == rec.tail and rec.c == rec.head % 100)


def _rec(n: int, lay: Layout | None, ints: int) -> Any:
    if lay is None:
        return numbered(n)
    return lay.Record(head=n, data=[n] * ints, tail=n, c=n % 100)


@pytest.mark.parametrize("ints", [0, 16384], ids=["stu", "64KiB"])
def test_one_reader_shared_by_four_threads(ints: int, tmp_path: Path) -> None:
    """2 threads read() and 2 wait_for_change() on one Reader while a process writes:
    no torn record, and no thread gets a record older than one it already had."""
    path = tmp_path / "rec.bin"
    lay = big_layout(ints) if ints else None
    Writer(path, layout=lay).close() if lay else Writer(path).close()
    script = f"""
import sys, time
from mmapipc import Layout, Student, Writer
ints = {ints}
if ints:
    lay = Layout.from_c("struct big {{ int head; int data[{ints}]; int tail; signed char c; }};",
                        "struct big")
    def rec(n):
        return lay.Record(head=n, data=[n] * ints, tail=n, c=n % 100)
    w = Writer(sys.argv[1], layout=lay)
else:
    def rec(n):
        return Student(n, f"n{{n % 100000:05d}}" + "abcdefghijklm"[: n % 14], "mf"[n % 2])
    w = Writer(sys.argv[1])
deadline = time.monotonic() + {HAMMER}
n = 0
while time.monotonic() < deadline:
    n += 1
    w.write(rec(n))
    if n % 64 == 0:
        time.sleep(0.0001)
print(n, flush=True)
"""
    reader = Reader(path, layout=lay) if lay else Reader(path)
    torn: list[Any] = []
    stale: list[tuple[int, int]] = []
    counts = [0, 0, 0, 0]
    done = threading.Event()

    def ident(rec: Any) -> int:
        return int(rec.id if ints == 0 else rec.head)

    def run(k: int) -> None:
        last = 0
        while not done.is_set():
            try:
                rec = reader.read() if k < 2 else reader.wait_for_change(0.05)
            except TimeoutError:
                continue
            counts[k] += 1
            if not _consistent(rec, ints):
                torn.append(rec)
            elif ident(rec) < last:
                stale.append((last, ident(rec)))
            else:
                last = ident(rec)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, timeout=PATIENCE, check=False)
    time.sleep(0.2)
    done.set()
    for t in threads:
        t.join(PATIENCE)
    assert proc.returncode == 0, proc.stderr
    written = int(proc.stdout)
    final = reader.read()
    reader.close()
    assert not torn, f"{len(torn)} torn records, e.g. {torn[0]!r}"[:500]
    assert not stale, f"{len(stale)} stale records, e.g. {stale[:3]}"
    assert ident(final) == written, (ident(final), written)
    assert min(counts) > 0, counts


READING_CHILD = """
import json, sys, time
from mmapipc import Layout, Reader, Student
ints, seconds = int(sys.argv[2]), float(sys.argv[3])
if ints:
    lay = Layout.from_c(f"struct big {{ int head; int data[{ints}]; int tail; signed char c; }};",
                        "struct big")
    r = Reader(sys.argv[1], layout=lay)
    def ok(rec):
        d = rec.data
        return rec.head == d[0] == d[ints // 2] == d[-1] == rec.tail and rec.c == rec.head % 100
else:
    r = Reader(sys.argv[1])
    def ok(rec):
        n = rec.id
        return rec == Student(n, f"n{n % 100000:05d}" + "abcdefghijklm"[: n % 14], "mf"[n % 2])
print("ready", flush=True)
reads = torn = unstable = 0
example = None
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        rec = r.read()
    except OSError as e:
        unstable += 1
        continue
    reads += 1
    if not ok(rec):
        torn += 1
        example = repr(rec)[:200]
print(json.dumps({"reads": reads, "torn": torn, "unstable": unstable, "example": example,
                  "stats": r.stats}), flush=True)
"""


def _start_reading_child(path: Path, ints: int, seconds: float) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", READING_CHILD, str(path), str(ints),
                              str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    return child


def _child_result(child: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = child.communicate(timeout=PATIENCE)
    assert child.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.mark.parametrize("ints", [0, 16384], ids=["stu", "64KiB"])
def test_one_writer_shared_by_four_threads(ints: int, tmp_path: Path) -> None:
    """4 threads write through one Writer; a reader in another process sees no torn record."""
    path = tmp_path / "rec.bin"
    lay = big_layout(ints) if ints else None
    writer = Writer(path, layout=lay) if lay else Writer(path)
    writer.write(_rec(1, lay, ints))
    child = _start_reading_child(path, ints, HAMMER)
    done = threading.Event()
    written = [0] * 4

    def run(k: int) -> None:
        recs = [_rec(n, lay, ints) for n in range(k * 1000 + 1, k * 1000 + 64)]
        i = 0
        while not done.is_set():
            writer.write(recs[i % len(recs)])
            written[k] += 1
            i += 1

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    result = _child_result(child)
    done.set()
    for t in threads:
        t.join(PATIENCE)
    writer.close()
    assert result["torn"] == 0, result
    assert result["reads"] > 0 and sum(n > 0 for n in written) >= 2, (result, written)


# ---- a busy writer of a big struct ---------------------------------------------------------

ALTERNATING_WRITER = """
import sys
from mmapipc import Layout, Writer
ints = int(sys.argv[2])
lay = Layout.from_c(f"struct big {{ int head; int data[{ints}]; int tail; signed char c; }};",
                    "struct big")
a = lay.Record(head=1, data=[1] * ints, tail=1, c=1)
b = lay.Record(head=2, data=[2] * ints, tail=2, c=2)
w = Writer(sys.argv[1], layout=lay)
w.write(a)
print("ready", flush=True)
while True:
    w.write(a)
    w.write(b)
"""


def _read_against(writer_script: str, path: Path, ints: int, seconds: float) -> None:
    """Start a writer of big records in another process, read() for seconds, and assert that
    no record returned was torn (head, data and tail all one value) and that some were."""
    lay = big_layout(ints)
    writer = subprocess.Popen([sys.executable, "-c", writer_script, str(path), str(ints)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        r = Reader(path, layout=lay)
        reads, torn, unstable = 0, [], 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                rec = r.read()
            except OSError:
                unstable += 1
                continue
            reads += 1
            values = (rec.head, rec.data[0], rec.data[ints // 2], rec.data[-1], rec.tail)
            if len(set(values)) != 1:
                torn.append(values)
        stats = r.stats
        r.close()
    finally:
        writer.kill()
        writer.wait()
    assert not torn, f"{len(torn)} torn of {reads}: {torn[:5]} {stats}"
    assert reads > 0, (reads, unstable)


def test_no_torn_record_from_a_busy_writer_of_a_big_struct(tmp_path: Path) -> None:
    """A writer storing 256 KiB records back to back: read() never returns a torn one."""
    _read_against(ALTERNATING_WRITER, tmp_path / "big.bin", 65536, HAMMER)


SLOW_STORE_WRITER = """
import mmap, os, sys, time
from mmapipc import Layout, Writer
ints = int(sys.argv[2])
lay = Layout.from_c(f"struct big {{ int head; int data[{ints}]; int tail; signed char c; }};",
                    "struct big")
Writer(sys.argv[1], layout=lay).close()
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, lay.size)
marker, seq_at = lay.lock_offsets
words = memoryview(m).cast("B")
seq = memoryview(m)[seq_at:seq_at + 2].cast("H")
m[marker] = 0xA5
half = 4 + 4 * (ints // 2)
print("ready", flush=True)
n, pause_at = 0, time.monotonic() + 0.4
while True:
    # the sequence moves all the time: odd for 2 ms of every store, even for a moment
    n += 1
    seq[0] += 1
    new = lay.encode(lay.Record(head=n, data=[n] * ints, tail=n, c=n % 100))
    words[:half] = new[:half]
    time.sleep(0.002)
    words[half:marker] = new[half:marker]
    seq[0] += 1
    if time.monotonic() > pause_at:  # now and then it rests, even, for a while
        time.sleep(0.03)
        pause_at = time.monotonic() + 0.4
"""


def test_no_torn_record_from_a_writer_whose_sequence_keeps_moving(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store in progress for 2 ms at a time, the even sequence held for a moment only:
    the sequence moves, so the reader must wait for it rather than read by agreement.  (A
    writer kept off the CPU mid-store longer than STUCK_WAIT is taken for dead, by design:
    the wait is lengthened here so that CPU hogs on a 2-core machine cannot fake that.)"""
    monkeypatch.setattr(mmapipc.mapping, "STUCK_WAIT", 2.0)
    _read_against(SLOW_STORE_WRITER, tmp_path / "big.bin", 16384, HAMMER / 2)


# ---- stale records -------------------------------------------------------------------------

def test_sequence_wrap_is_not_mistaken_for_no_change(tmp_path: Path) -> None:
    """Exactly 32,768 stores bring the 16-bit sequence back to its value: still a change."""
    path = tmp_path / "rec.bin"
    a, b, c = Student(1, "A", "m"), Student(2, "B", "m"), Student(3, "C", "f")
    w = Writer(path)
    w.write(a)
    r = Reader(path)
    waiter = Reader(path)
    assert r.read() == a
    w.write(b)
    assert r.read() == b and waiter.read() == b
    for _ in range(32767):
        w.write(b)
    w.write(c)
    assert r.changed()
    assert r.read() == c
    assert waiter.wait_for_change(0.3) == c
    w.close()


def _store_raw(path: Path, data: bytes) -> None:
    """A legacy writer: a whole record in one copy, no sequence lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def test_legacy_padding_that_looks_like_the_lock_and_moves_once(tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    first, second, third = (Student(n, f"legacy{n}", "m") for n in (1, 2, 3))
    _store_raw(path, first.to_bytes()[:25] + b"\xa5\x02\x00")
    r = Reader(path)
    assert r.read() == first
    _store_raw(path, second.to_bytes()[:25] + b"\xa5\x04\x00")
    assert r.read() == second
    _store_raw(path, third.to_bytes()[:25] + b"\xa5\x04\x00")
    assert r.changed()
    assert r.read() == third
    _store_raw(path, second.to_bytes()[:25] + b"\xa5\x04\x00")
    assert r.wait_for_change(0.3) == second


def test_two_writers_with_the_same_sequence(tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    w1 = Writer(path)
    w1.write(numbered(0))
    w2 = Writer(path)  # carries on from the same sequence as w1
    r = Reader(path)
    for n in range(1, 20):
        (w1 if n % 2 else w2).write(numbered(n))
        assert r.changed(), n
        assert r.read() == numbered(n), n


def test_a_forked_writer(tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    w = Writer(path)
    w.write(numbered(0))
    r = Reader(path)
    r.read()
    pid = os.fork()
    if pid == 0:  # the child stores its own records with the same sequence values
        try:
            w.write(numbered(1))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert r.read() == numbered(1)
    w.write(numbered(2))
    assert r.read() == numbered(2)


# ---- truncation and replacement ------------------------------------------------------------

def test_truncation_after_the_path_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(Student(7, "seven", "m"))
    r = Reader(path)
    fd = os.open(path, os.O_RDWR)
    os.unlink(path)
    os.ftruncate(fd, 4)
    try:
        with pytest.raises(FileTooShortError):
            r.read()
    finally:
        os.close(fd)


def test_truncation_after_chdir_with_a_relative_path(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    old = os.getcwd()
    os.chdir(tmp_path / "a")
    try:
        with Writer("rec.bin") as w:
            w.write(Student(7, "seven", "m"))
        r = Reader("rec.bin")
        os.chdir(tmp_path)
        os.truncate(tmp_path / "a" / "rec.bin", 4)
        with pytest.raises(FileTooShortError):
            r.read()
    finally:
        os.chdir(old)


@pytest.mark.parametrize("size", [25, 26, 27])
def test_padding_cut_off_under_a_live_reader(size: int, tmp_path: Path) -> None:
    """Fields intact, padding cut: the live reader says what a fresh reader says."""
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(Student(7, "seven", "m"))
    r = Reader(path)
    os.truncate(path, size)
    with pytest.raises(FileTooShortError):
        Reader(path)
    time.sleep(SIZE_CHECK * 2)
    with pytest.raises(FileTooShortError):
        r.read()
    with pytest.raises(FileTooShortError):
        r.changed()


def _replace(path: Path, record: Student, how: str) -> None:
    if how == "rename":
        new = path.with_name("new.bin")
        with Writer(new) as w:
            w.write(record)
        os.rename(new, path)
    else:
        os.unlink(path)
        with Writer(path) as w:
            w.write(record)


@pytest.mark.parametrize("how", ["rename", "unlink"])
def test_a_writer_whose_file_was_replaced_says_so(how: str, tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    w = Writer(path)
    w.write(numbered(1))
    _replace(path, numbered(100), how)
    time.sleep(SIZE_CHECK * 2)
    with pytest.raises(FileReplacedError) as info:
        for n in range(2, 1000):
            w.write(numbered(n))
            time.sleep(SIZE_CHECK / 4)
    assert info.value.filename == str(path)
    assert "replaced" in str(info.value)
    with Reader(path) as r:  # the new file is untouched
        assert r.read() == numbered(100)


def test_a_writer_whose_file_was_unlinked_says_so(tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    w = Writer(path)
    w.write(numbered(1))
    os.unlink(path)
    time.sleep(SIZE_CHECK * 2)
    with pytest.raises(FileReplacedError):
        w.write(numbered(2))


@pytest.mark.parametrize("how", ["rename", "unlink"])
def test_a_reader_follows_a_replaced_file(how: str, tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(1))
    r = Reader(path)
    assert r.read() == numbered(1)
    assert r.reopened == 0
    _replace(path, numbered(100), how)
    deadline = time.monotonic() + 5
    while r.read() != numbered(100):
        assert time.monotonic() < deadline, "the reader never followed the new file"
        time.sleep(SIZE_CHECK / 2)
    assert r.reopened == 1
    with Writer(path) as w:
        w.write(numbered(101))
    assert r.wait_for_change(5) == numbered(101)


def test_a_waiting_reader_follows_a_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(1))
    r = Reader(path)
    _replace(path, numbered(100), "rename")
    assert r.wait_for_change(5) == numbered(100)
    assert r.reopened == 1


def test_follow_false_raises_instead(tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(1))
    r = Reader(path, follow=False)
    _replace(path, numbered(100), "rename")
    time.sleep(SIZE_CHECK * 2)
    with pytest.raises(FileReplacedError):
        r.read()


def test_cli_read_reports_a_replaced_file_once(tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(1))
    proc = subprocess.Popen([sys.executable, "-m", "mmapipc", "watch", str(path), "--timeout",
                             "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("id=1\t")
    _replace(path, numbered(100), "rename")
    line = proc.stdout.readline()
    with Writer(path) as w:
        w.write(numbered(101))
    line2 = proc.stdout.readline()
    out, err = proc.communicate(timeout=PATIENCE)
    assert line.startswith("id=100\t") and line2.startswith("id=101\t"), (line, line2, out)
    assert err.count("replaced") == 1, err
    assert "Traceback" not in err, err


# ---- nothing destroyed that is not ours ----------------------------------------------------

@root_only
def test_a_symlink_planted_in_a_sticky_directory_is_not_followed(open_dir: Path) -> None:
    tmp_path = open_dir
    tmp = tmp_path / "tmp"
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    victim = private / "rec"
    victim.write_bytes(b"precious data that is not a record, 40 bytes"[:28])
    os.chmod(victim, 0o600)
    before = victim.read_bytes()
    as_nobody(lambda: os.symlink(private, tmp / "planted"))
    with pytest.raises(SymlinkError) as info:
        Writer(tmp / "planted" / "rec", force=True)
    assert "planted" in str(info.value)
    assert victim.read_bytes() == before
    # the CLI says the same in one line
    proc = subprocess.run([sys.executable, "-m", "mmapipc", "write", str(tmp / "planted" / "rec"),
                           "--count", "1"], capture_output=True, text=True, timeout=PATIENCE,
                          check=False)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert victim.read_bytes() == before


@root_only
def test_a_symlink_of_the_directory_owner_is_followed(open_dir: Path) -> None:
    tmp_path = open_dir
    tmp = tmp_path / "tmp"
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp / "mine")  # root's own link, in root's sticky directory
    with Writer(tmp / "mine" / "rec") as w:
        w.write(numbered(1))
    assert (real / "rec").read_bytes() == numbered(1).to_bytes()[:25] + (
        real / "rec").read_bytes()[25:]


def test_symlinked_directories_elsewhere_keep_working(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "run")  # like /var/run -> /run
    with Writer(tmp_path / "run" / "rec") as w:
        w.write(numbered(1))
    with Reader(tmp_path / "run" / "rec") as r:
        assert r.read() == numbered(1)


def test_a_hard_linked_file_is_not_written(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"v" * 28)
    os.link(victim, tmp_path / "link")
    with pytest.raises(OSError) as info:
        Writer(tmp_path / "link")
    assert "hard link" in str(info.value)
    assert victim.read_bytes() == b"v" * 28
    with Writer(tmp_path / "link", force=True) as w:  # unless forced
        w.write(numbered(1))
    assert victim.read_bytes()[:4] == (1).to_bytes(4, sys.byteorder)


@root_only
def test_someone_elses_file_in_a_sticky_directory_is_not_written(open_dir: Path) -> None:
    tmp_path = open_dir
    tmp = tmp_path / "tmp"
    theirs = tmp / "theirs"

    def plant() -> None:
        theirs.write_bytes(b"t" * 28)
        os.chmod(theirs, 0o666)

    as_nobody(plant)
    with pytest.raises(OSError) as info:
        Writer(theirs)
    assert "sticky" in str(info.value)
    assert theirs.read_bytes() == b"t" * 28
    with Writer(theirs, force=True) as w:
        w.write(numbered(1))


# ---- faulthandler toggled from another thread ---------------------------------------------

TOGGLE_SCRIPT = """
import faulthandler, os, sys, threading, time
from mmapipc import FileTooShortError, Reader, Student, Writer
path = sys.argv[1]
with Writer(path) as w:
    w.write(Student(1, "one", "m"))
r = Reader(path)
os.truncate(path, 0)
stop = time.monotonic() + 2.0
def toggle():
    while time.monotonic() < stop:
        faulthandler.enable()
        faulthandler.disable()
t = threading.Thread(target=toggle)
t.start()
faults = 0
while time.monotonic() < stop:
    try:
        r.read()
    except FileTooShortError:
        faults += 1
t.join()
print(faults)
"""


def test_faulthandler_toggled_while_reads_fault(tmp_path: Path) -> None:
    proc = run_script(TOGGLE_SCRIPT, str(tmp_path / "rec.bin"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout) > 100
    assert "Fatal Python error" not in proc.stderr, proc.stderr[:2000]


# ---- codecs with bad lock offsets ----------------------------------------------------------

class _BadCodec:
    size = 28
    name = "bad"
    padding = ((25, 3),)
    lock_offsets: tuple[int, int] | None

    def __init__(self, lock: tuple[int, int]) -> None:
        self.lock_offsets = lock

    def encode(self, record: Student) -> bytes:
        return record.to_bytes()

    def decode(self, data: bytes) -> Student:
        return Student.from_bytes(data)


@pytest.mark.parametrize("lock", [(27, 29), (25, 27), (-2, 26), (26, 26), (0, 26), (25, 24)])
def test_bad_lock_offsets_are_refused(lock: tuple[int, int], tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Writer(tmp_path / "rec.bin", layout=_BadCodec(lock))
    assert not (tmp_path / "rec.bin").exists()


def test_a_sigbus_sent_by_tgkill_during_a_copy_is_not_hidden(tmp_path: Path) -> None:
    """Only a fault of a guarded copy inside its mapping is ours: a SIGBUS sent to a thread
    that is copying (tgkill, as pthread_kill sends it) kills the process as it would have."""
    script = """
import signal, sys, threading, time
from mmapipc import Layout, Reader, Writer
lay = Layout.from_c("struct huge { int head; char blob[4194304]; int tail; };", "struct huge")
with Writer(sys.argv[1], layout=lay) as w:
    w.write(lay.Record(head=1, blob="x" * 4000000, tail=1))
r = Reader(sys.argv[1], layout=lay)
def reads():
    while True:
        r.raw_bytes()
t = threading.Thread(target=reads, daemon=True)
t.start()
time.sleep(0.1)
print("sending", flush=True)
for _ in range(1000):
    signal.pthread_kill(t.ident, signal.SIGBUS)
    time.sleep(0.001)
print("survived", flush=True)
"""
    proc = run_script(script, str(tmp_path / "rec.bin"))
    assert proc.stdout.split() == ["sending"], (proc.stdout, proc.stderr[-1000:])
    assert proc.returncode == -signal.SIGBUS
