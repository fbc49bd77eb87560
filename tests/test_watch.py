"""Watching: wait_for_change, watch and `mmapipc watch`, against Python and C writers.

No timing assertions: every wait has a generous timeout, and what is checked is which
records were reported, in which order, and how often.
"""

from __future__ import annotations

import json
import os
import queue
import resource
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, start_cli

from mmapipc import Reader, Student, Writer

PATIENCE = 20.0  # seconds: only ever reached when something is broken
N = 12


def numbered(i: int, name: str = "watched") -> Student:
    return Student(i, name, "mf"[i % 2])


def fresh(path: Path, record: Student, seqlock: bool = True) -> None:
    with Writer[Student](path, seqlock=seqlock) as w:
        w.write(record)


class Lines:
    """The lines a background process prints, read by a thread, fetched with a timeout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.q: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.q.put(line)

    def next(self) -> bytes:
        try:
            return self.q.get(timeout=PATIENCE)
        except queue.Empty:
            err = self.proc.stderr.read() if self.proc.poll() is not None and \
                self.proc.stderr else b""
            raise AssertionError(f"no line from {self.proc.args!r}; stderr={err!r}") from None


def collect(feed: Iterator[Student], last_id: int) -> list[Student]:
    """Records from feed until one with id last_id (or the feed ends)."""
    got = []
    for s in feed:
        got.append(s)
        if s.id == last_id:
            break
    return got


# ---- wait_for_change -------------------------------------------------------------------


def test_wait_for_change_returns_the_next_differing_record(shared: Path) -> None:
    a, b, c = numbered(1), numbered(2), numbered(3)
    with Writer[Student](shared) as w, Reader[Student](shared) as r:
        w.write(a)
        assert r.read() == a
        w.write(b)  # already there when the wait starts
        assert r.wait_for_change(timeout=PATIENCE) == b
        # the last record returned is now b: a read gives the same object back
        assert r.read() == b

        def later() -> None:
            time.sleep(0.05)
            w.write(c)

        t = threading.Thread(target=later)
        t.start()
        try:
            assert r.wait_for_change(timeout=PATIENCE) == c
        finally:
            t.join()


def test_wait_for_change_times_out(shared: Path) -> None:
    fresh(shared, numbered(1))
    with Reader[Student](shared) as r:
        assert r.read() == numbered(1)
        with pytest.raises(TimeoutError):
            r.wait_for_change(timeout=0.05)
        with pytest.raises(TimeoutError):
            r.wait_for_change(timeout=0)
        # the reader still works after a timeout
        with Writer[Student](shared) as w:
            w.write(numbered(2))
        assert r.wait_for_change(timeout=0) == numbered(2)


def test_wait_for_change_after_a_read_waits_for_a_newer_record(shared: Path) -> None:
    """read() also counts as returning a record: the wait is for something after it."""
    with Writer[Student](shared) as w, Reader[Student](shared) as r:
        w.write(numbered(1))
        r.read()
        w.write(numbered(2))
        assert r.read() == numbered(2)
        with pytest.raises(TimeoutError):
            r.wait_for_change(timeout=0.05)


@pytest.mark.parametrize("seqlock", [True, False], ids=["seqlock", "plain"])
def test_the_same_record_written_again_is_not_a_change(shared: Path, seqlock: bool) -> None:
    a = numbered(1)
    with Writer[Student](shared, seqlock=seqlock) as w, Reader[Student](shared) as r:
        w.write(a)
        assert r.read() == a
        for _ in range(5):
            w.write(Student(a.id, a.name, a.sex))  # equal, not the same object
        with pytest.raises(TimeoutError):
            r.wait_for_change(timeout=0.05)
        # a change and back again before the reader looks is no change either
        w.write(numbered(2))
        w.write(a)
        with pytest.raises(TimeoutError):
            r.wait_for_change(timeout=0.05)
        w.write(numbered(3))
        assert r.wait_for_change(timeout=PATIENCE) == numbered(3)


def test_the_wait_releases_the_gil(shared: Path) -> None:
    """Another thread runs Python while one waits: if the wait held the GIL, the write
    below could not happen until the wait had timed out."""
    fresh(shared, numbered(1))
    waiting = threading.Event()
    result: list[Any] = []
    with Reader[Student](shared) as r:
        r.read()

        def waiter() -> None:
            waiting.set()
            try:
                result.append(r.wait_for_change(timeout=PATIENCE))
            except TimeoutError as e:
                result.append(e)

        t = threading.Thread(target=waiter)
        t.start()
        assert waiting.wait(PATIENCE)
        time.sleep(0.1)  # let the waiter enter the C wait
        with Writer[Student](shared) as w:
            w.write(numbered(2))
        t.join(PATIENCE + 5)
    assert result == [numbered(2)]


def test_waiting_on_a_closed_reader_is_a_clean_error(shared: Path) -> None:
    fresh(shared, numbered(1))
    r = Reader[Student](shared)
    r.close()
    with pytest.raises(ValueError, match="closed"):
        r.wait_for_change(timeout=1)
    with pytest.raises(ValueError, match="closed"):
        list(r.watch(timeout=1))


@pytest.mark.parametrize(
    "options",
    [{"max_gap": -1.0}, {"max_gap": 2e-3, "idle_gap": 1e-3}, {"max_gap": 0.0},
     {"idle_after": float("nan")}, {"idle_gap": float("inf")}, {"max_gap": 1e300},
     {"wait_timeout": float("nan"), "wait": True}],
)
def test_bad_wait_parameters_are_refused(shared: Path, options: dict[str, Any]) -> None:
    fresh(shared, numbered(1))
    with pytest.raises(ValueError, match=r"max_gap|idle_gap|idle_after|wait_timeout"):
        Reader[Student](shared, **options)


@pytest.mark.parametrize("timeout", [float("nan"), -1.0, 1e300])
def test_bad_timeouts_are_refused(shared: Path, timeout: float) -> None:
    fresh(shared, numbered(1))
    with Reader[Student](shared) as r, pytest.raises(ValueError, match="timeout"):
        r.wait_for_change(timeout)


def test_an_infinite_timeout_waits_until_a_change(shared: Path) -> None:
    fresh(shared, numbered(1))
    with Reader[Student](shared) as r:
        threading.Timer(0.1, lambda: fresh(shared, numbered(2))).start()
        assert r.wait_for_change(float("inf")) == numbered(2)


# ---- watch -----------------------------------------------------------------------------


def write_slowly(path: Path, records: list[Student], interval: float) -> threading.Thread:
    def run() -> None:
        with Writer[Student](path) as w:
            for s in records:
                time.sleep(interval)
                w.write(s)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize(
    "options",
    [{}, {"busy": True}, {"max_gap": 5e-3, "idle_gap": 5e-3, "predict": False}],
    ids=["default", "busy", "slow-polling"],
)
def test_watch_yields_the_current_record_then_each_change_once(
    shared: Path, options: dict[str, Any]
) -> None:
    fresh(shared, numbered(0, "start"))
    records = [numbered(i) for i in range(1, N + 1)]
    with Reader[Student](shared, **options) as r:
        feed = r.watch(timeout=PATIENCE)
        assert next(feed) == numbered(0, "start")
        writer = write_slowly(shared, records, 0.03)
        got = collect(feed, N)
        writer.join(PATIENCE)
        assert got == records  # all of them, in order, none twice
        # the writer is done: a new watch yields the current record once, then stops
        assert list(r.watch(timeout=0.1)) == [records[-1]]


def test_watch_sees_a_python_writer_in_another_process(shared: Path,
                                                        procs: list[Any]) -> None:
    fresh(shared, numbered(0, "start"))
    with Reader[Student](shared) as r:
        feed = r.watch(timeout=PATIENCE)
        assert next(feed).id == 0
        procs.append(start_cli("write", shared, "--id", "1", "--name", "other",
                               "--interval", "0.02", "--count", str(N)))
        got = collect(feed, N)
    assert [s.id for s in got] == list(range(1, N + 1))
    assert {(s.name, s.sex) for s in got} == {("other", "m")}
    assert procs[0].wait(PATIENCE) == 0


@pytest.mark.parametrize("busy", [False, True], ids=["default", "busy"])
def test_watch_sees_every_record_of_the_c_writer(
    shared: Path, peers: dict[str, Path], procs: list[Any], busy: bool
) -> None:
    """mmap_w memcpy's whole records with no lock, 40 ms apart: each one is seen once, in
    order, never torn.  A record may be missed only where the machine woke the reader later
    than max_gap (a late look, counted): that is the VM, not the design."""
    shared.write_bytes(Student(99, "before", "x").to_bytes())
    count = 30
    with Reader[Student](shared, busy=busy) as r:
        feed = r.watch(timeout=PATIENCE)
        assert next(feed) == Student(99, "before", "x")
        procs.append(subprocess.Popen(
            [str(peers["mmap_w"]), str(shared), str(count), "40", "cwatcher", "100", "f"]))
        got = collect(feed, 100 + count - 1)
        late = r.stats["late_polls"]
    ids = [s.id for s in got]
    assert ids == sorted(set(ids)) and ids[-1] == 100 + count - 1, ids
    missed = count - len(ids)
    assert missed == 0 or missed <= late, (ids, late)
    assert {(s.name, s.sex) for s in got} == {("cwatcher", "f")}
    assert procs[0].wait(PATIENCE) == 0


REPEATER = r"""
/* Store record A again and again, then B once, then A again and again. */
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

struct STU { int id; char name[20]; char sex; };

static void put(struct STU *mm, const struct STU *s, int times)
{
    struct timespec ts = {0, 2000000};
    for (int i = 0; i < times; i++) {
        memcpy(mm, s, sizeof *s);
        nanosleep(&ts, NULL);
    }
}

int main(int argc, char *argv[])
{
    struct STU a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    a.id = 1; strcpy(a.name, "again"); a.sex = 'a';
    b.id = 2; strcpy(b.name, "other"); b.sex = 'b';
    int fd = open(argv[1], O_RDWR);
    if (fd < 0 || argc < 2)
        return 1;
    struct STU *mm = mmap(NULL, sizeof a, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mm == MAP_FAILED)
        return 1;
    put(mm, &a, 50);
    put(mm, &b, 1);
    put(mm, &b, 25);
    put(mm, &a, 50);
    return 0;
}
"""


def test_a_c_writer_storing_the_same_record_again_is_not_a_change(
    shared: Path, build_c: Callable[[str, str], Path]
) -> None:
    exe = build_c("repeater", REPEATER)
    a, b = Student(1, "again", "a"), Student(2, "other", "b")
    shared.write_bytes(a.to_bytes())
    with Reader[Student](shared) as r:
        assert r.read() == a
        proc = subprocess.Popen([str(exe), str(shared)])
        try:
            # rewrites of a are no change: the first change is b, and b's rewrites are not
            assert r.wait_for_change(timeout=PATIENCE) == b
            assert r.wait_for_change(timeout=PATIENCE) == a
        finally:
            assert proc.wait(PATIENCE) == 0
        with pytest.raises(TimeoutError):
            r.wait_for_change(timeout=0.05)


# ---- mmapipc watch ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["c", "json", "busy"])
def test_cli_watch_prints_the_record_then_each_change(
    shared: Path, procs: list[Any], fmt: str
) -> None:
    first = numbered(0, "first")
    fresh(shared, first)
    changes = [numbered(i, "cli") for i in range(1, 5)]
    extra = {"c": [], "json": ["--json"], "busy": ["--busy"]}[fmt]
    proc = start_cli("watch", shared, "--count", str(1 + len(changes)),
                     "--timeout", str(PATIENCE), *extra)
    procs.append(proc)
    lines = Lines(proc)
    printed = [lines.next()]  # the watcher is waiting once it printed the current record
    with Writer[Student](shared) as w:
        for s in changes:
            w.write(s)
            printed.append(lines.next())  # each line before the next change
    assert proc.wait(PATIENCE) == 0  # --count reached: it stops by itself
    expected = [first, *changes]
    if fmt == "json":
        assert [json.loads(line) for line in printed] == [s.as_dict() for s in expected]
    else:
        assert printed == [s.c_line() for s in expected]


def test_cli_watch_lines_are_mmap_r_lines(shared: Path, peers: dict[str, Path],
                                          procs: list[Any]) -> None:
    """Each line of `mmapipc watch` is what the C mmap_r prints for that record."""
    fresh(shared, numbered(5, "c-format"))
    proc = start_cli("watch", shared, "--count", "1")
    procs.append(proc)
    out, _ = proc.communicate(timeout=PATIENCE)
    c = subprocess.run([str(peers["mmap_r"]), str(shared), "1"], capture_output=True,
                       timeout=PATIENCE, check=True)
    assert out == c.stdout == b"id=5\tname=c-format\tf\n"


def test_cli_watch_timeout_ends_quietly(shared: Path) -> None:
    fresh(shared, numbered(7))
    proc = run_cli("watch", shared, "--timeout", "0.1", timeout=PATIENCE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == numbered(7).c_line()
    assert proc.stderr == b""


# ---- memory ----------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_million_reads_and_writes_leave_memory_flat(shared: Path) -> None:
    """Reads of changed records (each decodes a new Student), waits that find a change,
    unchanged reads and writes: resident memory after a warm-up stays put."""
    a, b = numbered(1), numbered(2)
    with Writer[Student](shared) as w, Reader[Student](shared) as r:
        write, read, wait = w.write, r.read, r.wait_for_change

        def rounds(n: int) -> None:
            for _ in range(n):
                write(a)
                read()
                read()
                write(b)
                wait(0)

        rounds(50_000)  # warm-up: 100k writes, 150k reads
        before = _rss()
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        rounds(500_000)  # 1M writes, 1M reads, 500k waits
        after = _rss()
        assert r.read() == b
    assert after - before <= 1 << 20, f"resident memory grew by {after - before} bytes"
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert peak_after - peak_before <= 1 << 20, "peak resident memory grew"


def test_changed_says_whether_read_would_have_news(tmp_path: Path) -> None:
    """changed() is one C call: True when the fields in the file differ from the last
    record read() returned; the same fields stored again (by any writer) are no news."""
    path = tmp_path / "changed.bin"
    with Writer(path) as w, Reader(path) as r:
        w.write(Student(1, "a", "m"))
        assert r.changed() is True
        first = r.read()
        assert r.changed() is False
        w.write(Student(2, "b", "f"))
        assert r.changed() is True
        assert r.read() == Student(2, "b", "f")
        assert r.changed() is False
        last = r.read()
        w.write(Student(2, "b", "f"))  # the same fields again
        assert r.changed() is False
        assert r.read() is last  # ... and read() hands back the same record
        assert first != last
    plain = tmp_path / "plain.bin"
    with Writer(plain, seqlock=False) as w, Reader(plain) as r:
        w.write(Student(3, "c", "m"))
        r.read()
        w.write(Student(3, "c", "m"))
        assert r.changed() is False
        w.write(Student(4, "d", "m"))
        assert r.changed() is True
    with pytest.raises(ValueError):
        r.changed()


def test_a_learnt_period_does_not_hide_an_early_or_late_change(shared: Path) -> None:
    """After a writer has kept a steady period (the wait learns it and naps), changes that
    come early, late or irregularly are still each seen once, in order."""
    fresh(shared, numbered(0, "start"))
    steady = [0.02] * 12
    irregular = [0.004, 0.06, 0.007, 0.045, 0.002 + 0.03, 0.09]
    gaps = steady + irregular
    records = [numbered(i) for i in range(1, len(gaps) + 1)]

    def run() -> None:
        with Writer[Student](shared) as w:
            for gap, s in zip(gaps, records, strict=True):
                time.sleep(gap)
                w.write(s)

    with Reader[Student](shared) as r:
        feed = r.watch(timeout=PATIENCE)
        assert next(feed) == numbered(0, "start")
        writer = threading.Thread(target=run, daemon=True)
        writer.start()
        got = collect(feed, len(gaps))
        writer.join(PATIENCE)
        assert got == records
        assert r.stats["polls"] > len(gaps)


BURST_WRITER = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
struct STU { int id; char name[20]; char sex; };
/* A legacy writer (plain memcpy, nothing to wake a reader): 20 records 50 ms apart,
 * then 6 records 3 ms apart, on an absolute schedule. */
int main(int argc, char **argv)
{
    struct timespec t;
    struct STU s = {0, "burst", 'm'};
    int fd = open(argv[1], O_RDWR);
    struct STU *m = mmap(NULL, sizeof s, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (argc != 2 || fd < 0 || m == MAP_FAILED)
        return 2;
    clock_gettime(CLOCK_MONOTONIC, &t);
    for (int i = 1; i <= 26; i++) {
        long gap = i <= 20 ? 50000000L : 3000000L;
        t.tv_nsec += gap;
        if (t.tv_nsec >= 1000000000L) {
            t.tv_nsec -= 1000000000L;
            t.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
        s.id = i;
        memcpy(m, &s, sizeof s);
    }
    return 0;
}
"""


def test_a_burst_after_a_slow_period_is_seen_whole(shared: Path, build_c: Any) -> None:
    """A writer that stored every 50 ms for a second, then 6 records 3 ms apart: every one of
    them stayed longer than max_gap while the writer was active, so watch() sees each (a miss
    is allowed only where the machine woke the reader later than the bound, counted)."""
    exe = build_c("burst_writer", BURST_WRITER)
    fresh(shared, Student(0, "burst", "m"), seqlock=False)
    with Reader[Student](shared) as r:
        feed = r.watch(timeout=0.5)
        assert next(feed).id == 0
        writer = subprocess.Popen([str(exe), str(shared)])
        try:
            ids = [s.id for s in feed]
        finally:
            assert writer.wait(PATIENCE) == 0
        late = r.stats["late_polls"]
    assert ids == sorted(set(ids)) and ids[-1] == 26, ids
    assert len(ids) == 26 or 26 - len(ids) <= late, (ids, r.stats)


SLEEPY_WRITER = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
struct STU { int id; char name[20]; char sex; };
/* mmap_w's loop, faster: store a record (plain memcpy), then sleep GAP_NS; COUNT times. */
int main(int argc, char **argv)
{
    struct STU s = {0, "sleepy", 'm'};
    int fd = argc == 4 ? open(argv[1], O_RDWR) : -1;
    struct STU *m = mmap(NULL, sizeof s, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (fd < 0 || m == MAP_FAILED)
        return 2;
    long gap = atol(argv[3]);
    for (int i = 1; i <= atoi(argv[2]); i++) {
        struct timespec t = {gap / 1000000000L, gap % 1000000000L};
        s.id = i;
        memcpy(m, &s, sizeof s);
        nanosleep(&t, NULL);
    }
    return 0;
}
"""


def sleepy_writer(shared: Path, build_c: Any) -> Path:
    """SLEEPY_WRITER built, and shared holding record 0 as a legacy writer leaves it."""
    exe: Path = build_c("sleepy_writer", SLEEPY_WRITER)
    fresh(shared, Student(0, "sleepy", "m"), seqlock=False)
    return exe


@contextmanager
def watching_sleepy(shared: Path, build_c: Any, count: int,
                    gap_ns: int) -> Iterator[Reader[Student]]:
    """A Reader on shared while SLEEPY_WRITER stores count records gap_ns apart; the
    writer must end well."""
    exe = sleepy_writer(shared, build_c)
    with Reader[Student](shared) as r:
        writer = subprocess.Popen([str(exe), str(shared), str(count), str(gap_ns)])
        try:
            yield r
        finally:
            assert writer.wait(PATIENCE) == 0


def test_a_slow_writer_is_met_ready_even_after_a_read_between_waits(
        shared: Path, build_c: Any) -> None:
    """A legacy writer that sleeps 0.5 s after each store: once its period is learnt, the
    wait hands back (readied) just before each change is due so that the change is taken
    warm.  A change taken by read() between two waits still counts in the period learnt:
    the changes after it are met ready too (not taken for a writer twice as slow)."""
    with watching_sleepy(shared, build_c, 10, 500_000_000) as r:
        ids = [r.wait_for_change(PATIENCE).id for _ in range(5)]
        time.sleep(0.75)             # change 6 lands meanwhile: read() takes it
        ids += [r.read().id, r.wait_for_change(PATIENCE).id]
        before = r.stats["readied"]  # from here on, the period learnt says
        ids += [r.wait_for_change(PATIENCE).id for _ in range(3)]
        stats = r.stats
    assert ids == list(range(1, 11)), ids
    assert stats["readied"] > before, stats


def test_a_child_of_fork_waits_for_a_change_not_for_the_record_it_has(shared: Path) -> None:
    """A Reader used in a child of fork(): its first wait waits for a change, as its
    parent's would, instead of taking the record it already has for one."""
    fresh(shared, numbered(1))
    with Reader[Student](shared) as r:
        assert r.read() == numbered(1)
        pid = os.fork()
        if pid == 0:  # the child: exit 0 on TimeoutError, 3 if the old record came back
            code = 4
            try:
                r.wait_for_change(timeout=0.3)
                code = 3
            except TimeoutError:
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_fourth_change_of_a_slow_writer_is_met_ready(shared: Path, build_c: Any) -> None:
    """mmap_w's first changes are found by looks idle_gap apart.  The third is looked for
    closely where the first two say it lands, so that the fourth's window is narrow enough
    to be spun through, with the wait handing back to Python just before it (readied)."""
    with watching_sleepy(shared, build_c, 4, 1_000_000_000) as r:
        ids = [r.wait_for_change(PATIENCE).id for _ in range(3)]
        before = r.stats["readied"]
        ids.append(r.wait_for_change(PATIENCE).id)
        stats = r.stats
    assert ids == [1, 2, 3, 4], ids
    assert stats["readied"] > before, stats
