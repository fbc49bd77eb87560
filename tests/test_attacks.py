"""Attacks on the guarantees that once got through: paths whose checks and open disagree,
a check raced by another user, a path that turned into a symlink loop, records lost to an
exception, a sequence value remembered as stuck for ever, fork() with another thread
inside a call, and bad numbers that escaped as OverflowError.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import as_nobody, root_only, run_script

import mmapipc.mapping
from mmapipc import FileReplacedError, Layout, Reader, Student, SymlinkError, Writer
from mmapipc.mapping import SIZE_CHECK
from mmapipc.record import STUDENT

# ---- paths: what is checked must be what is opened -----------------------------------------

def test_dotdot_after_a_symlinked_directory_names_what_the_kernel_names(tmp_path: Path) -> None:
    """other/link/../rec is real/rec to the kernel (.. of link's target), not other/rec."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    os.symlink(tmp_path / "real" / "sub", tmp_path / "other" / "link")
    path = tmp_path / "other" / "link" / ".." / "rec"
    with Writer(path) as w:
        w.write(Student(1, "one", "m"))
    assert (tmp_path / "real" / "rec").exists()
    assert not (tmp_path / "other" / "rec").exists()


def test_a_trailing_slash_is_not_dropped(tmp_path: Path) -> None:
    """rec/ names a directory to the kernel: no file rec is created."""
    with pytest.raises(OSError):
        Writer(str(tmp_path / "rec") + "/")
    assert not (tmp_path / "rec").exists()


@root_only
def test_a_planted_symlink_behind_a_missing_dotdot_component_is_not_followed(
        open_dir: Path) -> None:
    """tmp/missing/../planted/rec: the walk stops at the missing name, the open (after a
    lexical abspath) goes through the planted link."""
    victim = open_dir / "victim"
    victim.mkdir()
    as_nobody(lambda: os.symlink(victim, open_dir / "tmp" / "planted"))
    with pytest.raises(OSError):
        Writer(open_dir / "tmp" / "missing" / ".." / "planted" / "rec")
    assert os.listdir(victim) == []


@root_only
def test_a_planted_symlink_behind_a_followed_last_symlink_is_not_followed(
        open_dir: Path) -> None:
    """follow_symlinks=True: the last link's target must be walked too."""
    victim = open_dir / "victim"
    victim.mkdir()
    as_nobody(lambda: os.symlink(victim, open_dir / "tmp" / "planted"))
    os.symlink(open_dir / "tmp" / "planted" / "rec", open_dir / "mine")
    with pytest.raises(SymlinkError):
        Writer(open_dir / "mine", follow_symlinks=True)
    assert os.listdir(victim) == []


def _race_after_check(monkeypatch: pytest.MonkeyPatch, attack: Callable[[], None]) -> None:
    """Run attack (as another user) at the last moment before the C open, after everything
    the Python side does: a check made anywhere before the open could be raced there."""
    real = mmapipc.mapping.install_fault_guard

    def then_attacked() -> None:
        real()
        as_nobody(attack)

    monkeypatch.setattr(mmapipc.mapping, "install_fault_guard", then_attacked)


@root_only
def test_a_directory_swapped_for_a_planted_symlink_after_the_check(
        open_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = open_dir / "tmp"
    victim = open_dir / "victim"
    victim.mkdir()
    as_nobody(lambda: os.mkdir(tmp / "d"))

    def swap() -> None:
        os.rename(tmp / "d", tmp / "gone")
        os.symlink(victim, tmp / "d")

    _race_after_check(monkeypatch, swap)
    with pytest.raises(OSError):
        Writer(tmp / "d" / "rec")
    assert os.listdir(victim) == []


@root_only
def test_someone_elses_file_created_after_the_check_is_not_written(
        open_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = open_dir / "tmp" / "theirs"

    def plant() -> None:
        theirs.write_bytes(b"t" * 28)
        os.chmod(theirs, 0o666)

    _race_after_check(monkeypatch, plant)
    with pytest.raises(OSError):
        Writer(theirs)
    assert theirs.read_bytes() == b"t" * 28


# ---- replacement ---------------------------------------------------------------------------

def test_a_writer_whose_path_became_a_symlink_loop_says_so(tmp_path: Path) -> None:
    """The path no longer names the file (stat fails with ELOOP): FileReplacedError."""
    path = tmp_path / "rec.bin"
    w = Writer(path)
    w.write(Student(1, "one", "m"))
    os.symlink("rec.bin", tmp_path / "loop")
    os.rename(tmp_path / "loop", path)
    time.sleep(SIZE_CHECK * 2)
    with pytest.raises(FileReplacedError):
        for n in range(10):
            w.write(Student(2 + n, "two", "m"))
            time.sleep(SIZE_CHECK)
    w.close()


# ---- stale records -------------------------------------------------------------------------

class _Interrupted(Exception):
    pass


class _InterruptOnce:
    """STU's codec; decode is interrupted once, as a signal handler that raises can do
    between the C copy and the decoded record (SIGINT, an alarm() timeout...)."""

    size = STUDENT.size
    name = STUDENT.name
    padding = STUDENT.padding
    lock_offsets = STUDENT.lock_offsets
    armed = False

    def encode(self, record: Student) -> bytes:
        return STUDENT.encode(record)

    def decode(self, data: bytes) -> Student:
        if self.armed:
            self.armed = False
            raise _Interrupted()
        return STUDENT.decode(data)


def test_a_record_lost_to_an_exception_is_not_replaced_by_a_stale_one(tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    w = Writer(path)
    w.write(Student(1, "one", "m"))
    codec = _InterruptOnce()
    r: Reader[Student] = Reader(path, layout=codec)
    assert r.read().id == 1
    w.write(Student(2, "two", "f"))
    codec.armed = True
    with pytest.raises(_Interrupted):
        r.read()
    assert r.read().id == 2  # the file holds 2; 1 is stale


def test_a_stuck_sequence_seen_again_later_is_waited_for(tmp_path: Path) -> None:
    """A writer died mid-store at sequence 5; the reader read by agreement.  The restarted
    writer's sequence comes round to 5 again (32768 stores later) while it is preempted
    mid-store: that is a live store, to be waited for, not the old stuck one."""
    path = tmp_path / "rec.bin"
    a = Student(1, "a" * 19, "m").to_bytes()
    b = Student(2, "b" * 19, "f").to_bytes()

    def raw(fields: bytes, seq: int) -> None:
        data = bytearray(fields)
        data[25] = 0xA5
        data[26:28] = seq.to_bytes(2, sys.byteorder)
        with open(path, "r+b" if path.exists() else "wb") as f:
            f.write(data)

    raw(a, 5)
    r = Reader(path)  # waits for the stuck store, then reads by agreement
    assert r.read().id == 1
    with Writer(path) as w:
        for n in range(32767):  # 6, 8, ... 65534, 0, 2, 4
            w.write(Student(3 + n % 2, "c", "m"))
    assert r.read().id in (3, 4)
    raw(b[:12] + a[12:], 5)  # the next store, preempted half way

    def finish() -> None:
        time.sleep(0.1)
        raw(b, 6)

    t = threading.Thread(target=finish)
    t.start()
    rec = r.read()
    t.join()
    assert rec.to_bytes()[:25] == b[:25], rec


def test_two_writers_storing_at_once_never_tear_a_record(tmp_path: Path) -> None:
    """Two Writers of one file (two threads here; two processes alike) store at the same
    time: the sequence must not go even while either is still copying.  (A struct with no
    three padding bytes has no sequence lock, and then nothing keeps two writers apart.)"""
    ints = 4096
    lay = Layout.from_c(f"struct big {{ int head; int data[{ints}]; int tail; char c; }};",
                        "struct big")
    assert lay.lock_offsets is not None
    path = tmp_path / "rec.bin"
    writers = [Writer(path, layout=lay), Writer(path, layout=lay)]
    recs = [lay.Record(head=k, data=[k] * ints, tail=k) for k in range(1, 5)]
    writers[0].write(recs[0])
    r = Reader(path, layout=lay)
    stop = time.monotonic() + 1.0

    def store(w: Writer[Any], mine: list[Any]) -> None:
        n = 0
        while time.monotonic() < stop:
            w.write(mine[n % 2])
            n += 1

    threads = [threading.Thread(target=store, args=(writers[k], recs[2 * k:2 * k + 2]))
               for k in range(2)]
    for t in threads:
        t.start()
    torn = 0
    while time.monotonic() < stop:
        rec = r.read()
        torn += len({rec.head, rec.tail, rec.data[0], rec.data[ints // 2], rec.data[-1]}) > 1
    for t in threads:
        t.join()
    assert torn == 0


def test_read_bytes_zeroes_the_lock_bytes_however_the_copy_was_trusted(tmp_path: Path) -> None:
    """A record read by agreement (here: a fresh reader at sequence 0, after a wrap) keeps
    the marker and sequence in read_bytes(), unlike one read through the lock."""
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        for n in range(32768):  # the sequence wraps to 0
            w.write(Student(n, "n", "m"))
    with Reader(path) as r:
        assert r.read_bytes()[25:] == b"\0\0\0"


# ---- fork() while another thread is inside a call ------------------------------------------

FORK_SCRIPT = """
import faulthandler, os, signal, sys, threading, time
from mmapipc import Reader, Student, Writer
path = sys.argv[1]
with Writer(path) as w:
    w.write(Student(1, "one", "m"))
r = Reader(path)
# A store in progress (odd sequence) with new fields: read() waits for it, inside the
# channel's mutex and inside a guarded copy, for up to STUCK_WAIT.
data = bytearray(Student(2, "two", "f").to_bytes())
data[25] = 0xA5
data[26:28] = (7).to_bytes(2, sys.byteorder)
with open(path, "r+b") as f:
    f.write(data)
threading.Thread(target=r.read, daemon=True).start()
time.sleep(0.05)
pid = os.fork()
if pid == 0:
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    if sys.argv[2] == "read":
        r.raw_bytes()
    else:
        faulthandler.enable()
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("hung" if os.WIFSIGNALED(status) else "ok")
"""


@pytest.mark.parametrize("what", ["read", "faulthandler"])
def test_a_child_forked_while_another_thread_is_inside_a_call_does_not_hang(
        what: str, tmp_path: Path) -> None:
    """The channel's mutex (read) or the count of guarded copies (faulthandler.enable)
    is inherited from a thread that does not exist in the child."""
    proc = run_script(FORK_SCRIPT, str(tmp_path / "rec.bin"), what)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ok"], proc.stdout


# ---- bad numbers ---------------------------------------------------------------------------

HUGE = 10**400


@pytest.mark.parametrize("call", ["timeout", "max_gap", "idle_gap", "idle_after", "wait_timeout"])
def test_an_integer_too_large_for_a_float_is_a_valueerror(call: str, tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    Writer(path).close()
    r = Reader(path)
    with pytest.raises(ValueError):
        if call == "timeout":
            r.wait_for_change(HUGE)
        else:
            kwargs: dict[str, Any] = {call: HUGE}
            if call == "wait_timeout":
                kwargs["wait"] = True
            Reader(path, **kwargs)


class _Sized:
    name = "sized"
    padding = ()
    lock_offsets = None

    def __init__(self, size: int) -> None:
        self.size = size

    def encode(self, record: bytes) -> bytes:
        return record

    def decode(self, data: bytes) -> bytes:
        return data


@pytest.mark.parametrize("size", [-1, 2**64])
@pytest.mark.parametrize("kind", ["Reader", "Writer"])
def test_a_codec_size_out_of_range_is_a_valueerror(kind: str, size: int, tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    cls: Any = Reader if kind == "Reader" else Writer
    with pytest.raises(ValueError):
        cls(path, layout=_Sized(size))
    assert not path.exists()


def test_a_max_gap_below_a_nanosecond_is_not_silently_ignored(tmp_path: Path) -> None:
    """max_gap rounds to 0 ns, which the C core refuses: the refusal is dropped unseen."""
    path = tmp_path / "rec.bin"
    Writer(path).close()
    with pytest.raises(ValueError):
        Reader(path, max_gap=1e-10, idle_gap=1e-10)



PADDING_SCRIPT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from mmapipc import Writer

class Huge:
    size = 28
    name = "huge"
    padding = ((25, 2**62),)
    lock_offsets = (25, 26)

    def encode(self, record):
        return record

    def decode(self, data):
        return data

try:
    Writer(sys.argv[1], layout=Huge())
except (ValueError, TypeError, OSError):
    print("refused")
"""


def test_a_codec_with_padding_past_the_record_is_refused_without_exhausting_memory(
        tmp_path: Path) -> None:
    """The padding holes are checked as intervals, not enumerated byte by byte."""
    proc = run_script(PADDING_SCRIPT, str(tmp_path / "rec.bin"))
    assert proc.stdout.split() == ["refused"], proc.stderr[-1000:]


LYING_LENGTH_SCRIPT = """
import sys
from mmapipc import Layout, Writer
lay = Layout.from_c("struct huge { int head; char blob[8388608]; int tail; };", "struct huge")

class Liar(bytes):
    def __len__(self):
        return lay.size

class Codec:
    size = lay.size
    name = "liar"
    padding = lay.padding
    lock_offsets = lay.lock_offsets

    def encode(self, record):
        return Liar(b"x")

    def decode(self, data):
        return data

w = Writer(sys.argv[1], layout=Codec())
try:
    w.write(None)
except (ValueError, TypeError, OSError):
    print("refused")
"""


def test_an_encode_whose_result_lies_about_its_length_is_refused(tmp_path: Path) -> None:
    """len() of a bytes subclass is whatever it says: the store must go by the real size
    of the buffer, or it copies past a 1-byte object (here into unmapped memory)."""
    proc = run_script(LYING_LENGTH_SCRIPT, str(tmp_path / "rec.bin"))
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-1000:])
    assert proc.stdout.split() == ["refused"]
