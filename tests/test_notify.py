"""Notifying writers: an mmapipc Writer wakes the Readers waiting on its record (a futex on
the word that holds the sequence), so a waiter sleeps until a store instead of polling."""

from __future__ import annotations

import json
import mmap
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import as_nobody, root_only

import mmapipc.mapping
from mmapipc import Reader, Student, Writer
from mmapipc._ffi import lib

PATIENCE = 60.0
STRACE = shutil.which("strace") or "/usr/bin/strace"


def numbered(n: int) -> Student:
    return Student(n, f"notified{n}", "mf"[n % 2])


def test_a_notifying_writer_says_so_in_the_padding(tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(1))
    assert path.read_bytes()[25] == lib.MMAPIPC_NOTIFY_MARKER
    with Writer(path, notify=False) as w:
        w.write(numbered(2))
    assert path.read_bytes()[25] == lib.MMAPIPC_SEQ_MARKER
    with Reader(path) as r:
        assert r.read() == numbered(2)


def test_an_idle_waiter_sleeps_on_the_futex(tmp_path: Path) -> None:
    """Waiting on a notifying writer's record sleeps on its futex, looking again every
    0.2 s (a legacy writer that takes over wakes nobody) or at a slice's end (50 ms in a
    process of several threads): a few looks a second, not the hundred of idle polling."""
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(1))
    with Reader(path) as r, pytest.raises(TimeoutError):
        r.wait_for_change(1.0)
    assert r.stats["sleeps"] >= 4, r.stats
    assert r.stats["polls"] <= 2 * r.stats["sleeps"] + 2, r.stats
    assert r.stats["polls"] <= 50, r.stats


# Alone in its process: waits FIRST seconds, prints its stats, then waits 30 s for a change
# that never comes and says when Ctrl-C ended that wait.
ALONE_WAITER = """
import json, sys, time
from mmapipc import Reader
with Reader(sys.argv[1], busy=sys.argv[2] == "busy") as r:
    try:
        r.wait_for_change(float(sys.argv[3]))
    except TimeoutError:
        pass
    print(json.dumps(r.stats), flush=True)
    try:
        r.wait_for_change(30)
    except KeyboardInterrupt:
        print("interrupted", time.monotonic(), flush=True)
"""


def _interrupt_alone_waiter(path: Path, busy: bool,
                            first: float) -> tuple[dict[str, int], list[str], int | None]:
    """Run ALONE_WAITER; SIGINT it 0.3 s into its long wait (well past the first slice):
    its stats, its last line split (["interrupted", seconds after the signal] if Ctrl-C
    got through) and its exit status (None: it had to be killed)."""
    proc = subprocess.Popen([sys.executable, "-c", ALONE_WAITER, str(path),
                             "busy" if busy else "sleep", str(first)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    code = None
    try:
        stats = json.loads(proc.stdout.readline())
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        line = proc.stdout.readline().split()
        if line:
            line[1:] = [str(float(line[1]) - sent)]
            code = proc.wait(PATIENCE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(PATIENCE)
    return stats, line, code


def test_an_idle_waiter_alone_in_its_process_stays_in_c(tmp_path: Path) -> None:
    """A process of one thread takes Ctrl-C in the waiting thread itself, so its wait
    needs no 50 ms slices after the first: an idle second is five futex sleeps and a few
    looks, and SIGINT still ends it at once."""
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(1))
    stats, line, code = _interrupt_alone_waiter(path, busy=False, first=1.0)
    assert 4 <= stats["sleeps"] <= 8 and stats["polls"] <= 10, stats
    assert code == 0
    assert line and line[0] == "interrupted" and float(line[1]) < 0.1, line


@pytest.mark.parametrize("busy", [False, True])
def test_ctrl_c_ends_a_long_wait_alone_in_its_process(busy: bool, tmp_path: Path) -> None:
    """Alone in its process a wait stays in C, where only a system call that a signal
    interrupts lets Ctrl-C through: a busy wait makes none, so it keeps its slices."""
    path = tmp_path / "rec.bin"
    path.write_bytes(numbered(1).to_bytes())  # a legacy record: the wait polls (or spins)
    _, line, _ = _interrupt_alone_waiter(path, busy, first=0.2)
    assert line and line[0] == "interrupted" and float(line[1]) < 1.0, line


# Alone in its process: a timer's signal (its handler raises) at a random moment after the
# first slice, ROUNDS times; prints how long after each signal its wait ended.
TIMED_OUT = """
import json, random, signal, sys, time
from mmapipc import Reader
class Stop(Exception):
    pass
def stop(*_):
    raise Stop
signal.signal(signal.SIGALRM, stop)
late = []
with Reader(sys.argv[1], max_gap=1e-3, idle_gap=float(sys.argv[2])) as r:
    for _ in range(int(sys.argv[3])):
        delay = random.uniform(0.06, 0.09)
        start = time.monotonic()
        try:
            signal.setitimer(signal.ITIMER_REAL, delay)
            r.wait_for_change(5)
        except Stop:
            late.append(time.monotonic() - start - delay)
print(json.dumps(late))
"""


@pytest.mark.parametrize("idle_gap,notifying", [(1e-3, False), (10e-3, False), (10e-3, True)],
                         ids=["polling-1ms", "polling-10ms", "futex"])
def test_a_timers_signal_ends_a_wait_alone_at_once(tmp_path: Path, idle_gap: float,
                                                   notifying: bool) -> None:
    """A timer's signal often comes with the wait's own wake-up, just after its sleep
    ended: then no sleep is cut short.  A wait alone in its process, which stays in C,
    must still end at once (it ended at its timeout: 6 of 40 at idle_gap=1 ms, 1 of 40 at
    10 ms, alarms 60-90 ms into a wait).  The same on a notifying writer's futex."""
    path = tmp_path / "rec.bin"
    if notifying:
        with Writer(path) as w:
            w.write(numbered(1))
    else:
        path.write_bytes(numbered(1).to_bytes())  # a legacy record: the wait polls
    out = subprocess.run([sys.executable, "-c", TIMED_OUT, str(path), str(idle_gap), "30"],
                         capture_output=True, text=True, timeout=PATIENCE)
    assert out.returncode == 0, out.stderr
    late = json.loads(out.stdout)
    assert len(late) == 30 and max(late) < 0.05, sorted(late)[-5:]


def test_a_waiter_never_sleeps_through_a_store(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer in another process stores at random moments; with 5 s slices a store slept
    through would show as a wait of seconds: every record is seen well before that."""
    monkeypatch.setattr(mmapipc.mapping, "_WAIT_SLICE_NS", 5 * 10**9)
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(0))
    script = """
import random, sys, time
from mmapipc import Student, Writer
random.seed(7)
with Writer(sys.argv[1]) as w:
    for n in range(1, 301):
        time.sleep(random.random() * 0.004)
        w.write(Student(n, f"notified{n}", "mf"[n % 2]))
"""
    with Reader(path) as r:
        writer = subprocess.Popen([sys.executable, "-c", script, str(path)])
        worst, last, relooks = 0.0, 0, -1
        while last < 300:
            t = time.monotonic()
            rec = r.wait_for_change(PATIENCE)
            worst = max(worst, time.monotonic() - t)
            assert rec.id > last and rec == numbered(rec.id)
            last = rec.id
            if relooks < 0:  # the writer is running: from here on, it stores every 4 ms
                relooks = r.stats["relooks"]
        assert writer.wait(PATIENCE) == 0
        assert r.stats["sleeps"] > 0
        # a store slept through leaves the waiter asleep until it looks again by itself
        assert r.stats["relooks"] == relooks, r.stats
    assert worst < 2.0, worst


def test_a_write_nobody_waits_for_makes_no_system_call(tmp_path: Path) -> None:
    """300 notifying writes with nobody waiting make no FUTEX_WAKE (strace says); a waiter
    then marks the record 0xA7 as it goes to sleep, and the next write wakes it, once."""
    path = tmp_path / "rec.bin"
    log = tmp_path / "futex.log"
    script = """
import sys
from mmapipc import Student, Writer
with Writer(sys.argv[1]) as w:
    for n in range(1, 301):
        w.write(Student(n, "quiet", "m"))
    print("stored", flush=True)
    sys.stdin.readline()  # meanwhile a waiter goes to sleep on the record
    w.write(Student(301, "woken", "f"))
"""
    proc = subprocess.Popen([STRACE, "-f", "-e", "trace=futex", "-o", str(log),
                             sys.executable, "-c", script, str(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "stored"
    got: list[Student] = []
    with Reader(path) as r:
        assert r.read().id == 300
        waiter = threading.Thread(target=lambda: got.append(r.wait_for_change(PATIENCE)))
        waiter.start()
        deadline = time.monotonic() + PATIENCE
        while path.read_bytes()[25] != lib.MMAPIPC_WAITED_MARKER:
            assert time.monotonic() < deadline, "the waiter never said it sleeps"
            time.sleep(0.01)
        proc.stdin.write("\n")
        proc.stdin.flush()
        waiter.join(PATIENCE)
        assert r.stats["sleeps"] > 0
    assert proc.wait(PATIENCE) == 0
    assert [s.id for s in got] == [301]
    wakes = [line for line in log.read_text().splitlines() if "FUTEX_WAKE," in line]
    assert len(wakes) == 1, wakes  # shared futex wakes; the interpreter's own are _PRIVATE
    assert path.read_bytes()[25] == lib.MMAPIPC_NOTIFY_MARKER


@root_only
def test_a_waiter_that_may_not_write_the_file_looks_instead(open_dir: Path) -> None:
    """A notifying writer wakes only waiters that marked the record; one that may not
    write the file cannot, so it never sleeps on the futex: it looks, as for a legacy
    writer, and still sees the change."""
    path = open_dir / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(1))
        os.chmod(path, 0o644)

        def later() -> None:
            time.sleep(0.3)
            w.write(numbered(2))

        def wait_as_nobody() -> None:
            with Reader(path) as r:
                assert r.wait_for_change(PATIENCE) == numbered(2)
                assert r.stats["sleeps"] == 0 and r.stats["polls"] > 1, r.stats

        writer = threading.Thread(target=later)
        writer.start()
        as_nobody(wait_as_nobody)
        writer.join()


def test_a_writer_that_dies_mid_store_leaves_no_waiter_asleep(tmp_path: Path) -> None:
    """The sequence left odd by a notifying writer that died: a wait still ends on time."""
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(1))
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 28) as m:
        seq = int.from_bytes(m[26:28], sys.byteorder)
        m[26:28] = (seq + 1).to_bytes(2, sys.byteorder)  # mid-store, and nobody wakes
    with Reader(path) as r:
        t = time.monotonic()
        with pytest.raises(TimeoutError):
            r.wait_for_change(0.3)
        assert time.monotonic() - t < 2.0


@pytest.mark.parametrize("first", ["notifying", "legacy"])
def test_the_wait_switches_when_the_writer_changes(first: str, tmp_path: Path) -> None:
    """A legacy writer (plain whole records) taking over from a notifying one, and back:
    every change that stays longer than MMAPIPC_RELOOK_NS (a waiter on the futex looks
    again at least that often, since a legacy writer wakes nobody) is seen."""
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(0))
    order = ["notifying", "legacy"] if first == "notifying" else ["legacy", "notifying"]
    plan = [(order[(n // 5) % 2], n) for n in range(1, 11)]  # switches at 5 and 10

    def write_all() -> None:
        for kind, n in plan:
            time.sleep(lib.MMAPIPC_RELOOK_NS / 1e9 + 0.01)
            if kind == "notifying":
                with Writer(path) as w:
                    w.write(numbered(n))
            else:
                fd = os.open(path, os.O_RDWR)
                os.pwrite(fd, numbered(n).to_bytes(), 0)
                os.close(fd)

    with Reader(path) as r:
        t = threading.Thread(target=write_all)
        t.start()
        got = [r.wait_for_change(PATIENCE).id for _ in range(10)]
        t.join()
    assert got == list(range(1, 11))
    assert r.stats["sleeps"] > 0


def test_random_stores_from_threads_are_each_seen_or_superseded(tmp_path: Path) -> None:
    """Many rounds: a store at a random moment while a thread waits; the wait returns it."""
    path = tmp_path / "rec.bin"
    w = Writer(path)
    w.write(numbered(0))
    r = Reader(path)
    rng = random.Random(3)
    for n in range(1, 201):
        timer = threading.Timer(rng.random() * 0.002, w.write, (numbered(n),))
        timer.start()
        assert r.wait_for_change(PATIENCE) == numbered(n)
        timer.join()
    w.close()
    r.close()
