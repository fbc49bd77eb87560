"""Hostile tests of the waiter's flag: a notifying writer wakes only when a waiter marked
its futex word 0xA7, so every way a waiter could sleep through a store, a reader could see
the flag, a truncation could kill the flagging process, or a writer could make needless
system calls is tried here, with writers and waiters in separate processes."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import NUMBERED_C, Build, as_nobody, numbered, root_only, start_ready

import mmapipc.mapping
from mmapipc import Layout, Reader, Student, Writer
from mmapipc._ffi import lib
from mmapipc.errors import FileTooShortError

PATIENCE = 60.0
STRACE = shutil.which("strace") or "/usr/bin/strace"
MARKER = 25
WAITED = lib.MMAPIPC_WAITED_MARKER
NOTIFY = lib.MMAPIPC_NOTIFY_MARKER
RELOOK = lib.MMAPIPC_RELOOK_NS / 1e9

NUMBERED_PY = """
import json, random, sys, time
from mmapipc import Reader, Student, Writer
def numbered(n):
    return Student(n, f"n{n % 100000:05d}" + "abcdefghijklm"[: n % 14], "mf"[n % 2])
"""

# Stores numbered records 1..N at random moments: at once, in bursts, after short gaps.
# Prints how many gaps between two stores were long enough for a waiter to look again
# by itself (a relook that is no miss).
RANDOM_WRITER = NUMBERED_PY + """
path, last, seed, notify = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
rng = random.Random(seed)
long_gaps, before = 0, time.monotonic()
with Writer(path, notify=notify) as w:
    n = 1
    while n <= last:
        for _ in range(rng.choice((1, 1, 1, 2, 5))):
            if n <= last:
                w.write(numbered(n))
                now = time.monotonic()
                long_gaps += now - before > 0.1
                before = now
                n += 1
        time.sleep(rng.random() * 0.006)
print(json.dumps({"long_gaps": long_gaps}), flush=True)
"""

# Waits for every change up to record N; checks each record whole and the ids rising.
# Slices of 5 s: a sleep no store ends shows as a relook (the first slice of a wait, 50 ms
# by default, would end it first and hide it).
WAITER = NUMBERED_PY + """
import mmapipc.mapping
mmapipc.mapping._WAIT_SLICE_NS = 5 * 10**9
path, last = sys.argv[1], int(sys.argv[2])
with Reader(path) as r:
    print("ready", flush=True)
    seen, prev, base, bad = 0, r.read().id, None, []
    while prev < last:
        rec = r.wait_for_change(10)
        if base is None:
            base = r.stats["relooks"]   # the writer runs: from here on, stores keep coming
        if rec != numbered(rec.id) or rec.id <= prev:
            bad.append(repr(rec))
        data = r.read_bytes()  # may load a later record: wait for changes after that one
        if data[25:28] != bytes(3):
            bad.append("lock bytes " + data[25:28].hex())
        prev = max(rec.id, r.read().id)
        seen += 1
    print(json.dumps({"relooks": r.stats["relooks"] - base, "sleeps": r.stats["sleeps"],
                      "seen": seen, "bad": bad[:5]}), flush=True)
"""


def _result(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 0, (proc.returncode, err)
    return dict(json.loads(out.strip().splitlines()[-1]))


def _wait_for_flag(path: Path) -> None:
    deadline = time.monotonic() + PATIENCE
    while path.read_bytes()[MARKER] != WAITED:
        assert time.monotonic() < deadline, "no waiter said it sleeps"
        time.sleep(0.002)


@pytest.fixture()
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=10)


# ---- 1. a waiter never sleeps through a store --------------------------------------------


@pytest.mark.parametrize("notify", [True, False], ids=["notifying", "then-quiet"])
def test_waiters_in_processes_never_sleep_through_random_stores(
        tmp_path: Path, notify: bool, procs: list[subprocess.Popen[str]]) -> None:
    """Three waiting processes, a writer in a fourth storing 400 records at random moments
    from the instant they sleep: each sees only whole records, in order, and none of their
    futex sleeps ends by the 0.2 s look-again (a store slept through) while stores keep
    coming.  "then-quiet": every other writer is notify=False, over the waiters' 0xA7."""
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(0))
    last = 400
    waiters = [start_ready([sys.executable, "-c", WAITER, str(path), str(last)]) for _ in range(3)]
    procs.extend(waiters)
    _wait_for_flag(path)
    if notify:
        writers = [subprocess.Popen([sys.executable, "-c", RANDOM_WRITER, str(path), str(last),
                                     "11", "1"], stdout=subprocess.PIPE, text=True)]
    else:  # two writers taking turns: a notifying one, then a quiet one, over and over
        script = NUMBERED_PY + """
path, last = sys.argv[1], int(sys.argv[2])
loud, quiet = Writer(path), Writer(path, notify=False)
rng = random.Random(5)
for n in range(1, last + 1):
    (loud if n % 2 else quiet).write(numbered(n))
    time.sleep(rng.random() * 0.004)
print(json.dumps({"long_gaps": 0}), flush=True)
"""
        writers = [subprocess.Popen([sys.executable, "-c", script, str(path), str(last)],
                                    stdout=subprocess.PIPE, text=True)]
    procs.extend(writers)
    long_gaps = sum(int(str(_result(w)["long_gaps"])) for w in writers)
    for waiter in waiters:
        got = _result(waiter)
        assert got["bad"] == [], got
        assert int(str(got["relooks"])) <= long_gaps, got
        assert int(str(got["sleeps"])) > 0, got


# Says each record it sees at once (one line), so that the next store lands at a random
# moment of its next look: before, during or after it compares the fields and flags.
ECHO_WAITER = NUMBERED_PY + """
import mmapipc.mapping
mmapipc.mapping._WAIT_SLICE_NS = 5 * 10**9
path, last = sys.argv[1], int(sys.argv[2])
with Reader(path) as r:
    print("ready", flush=True)
    prev = r.read().id
    while prev < last:
        rec = r.wait_for_change(10)
        print(rec.id, r.stats["relooks"], flush=True)
        prev = rec.id
    print(json.dumps({"relooks": r.stats["relooks"], "sleeps": r.stats["sleeps"]}),
          flush=True)
"""


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_each_lone_store_wakes_the_waiter_wherever_it_lands(
        tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    """500 rounds of one store, each made as the waiter in another process returns the one
    before (plus 0 to 300 us): it lands anywhere in the waiter's next look, compare, flag
    and sleep, and is the last store for a while.  A store the waiter slept through would
    wait for its 0.2 s look-again: no round may need it."""
    path = tmp_path / "rec.bin"
    w = Writer(path)
    w.write(numbered(0))
    last = 500
    waiter = start_ready([sys.executable, "-c", ECHO_WAITER, str(path), str(last)])
    procs.append(waiter)
    assert waiter.stdout is not None
    rng = random.Random(43)
    for n in range(1, last + 1):
        _spin(rng.random() * 0.0003 if n > 1 else 0.0)
        w.write(numbered(n))
        line = waiter.stdout.readline()
        if not line:  # the waiter died: say why
            pytest.fail(f"the waiter exited at store {n}: {waiter.communicate()[1]!r}")
        seen, relooks = map(int, line.split())
        assert (seen, relooks) == (n, 0), f"store {n} slept through"
    w.close()
    got = json.loads(waiter.stdout.readline())  # (communicate() would miss what is buffered)
    assert waiter.wait(PATIENCE) == 0
    assert got["relooks"] == 0, got


def test_waiting_threads_never_sleep_through_stores(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Five threads, three with a Reader each and two sharing one, wait while a writer in
    another process stores at random moments.  With 5 s slices a sleep that ends by the
    0.2 s look-again shows in relooks: none while stores keep coming."""
    monkeypatch.setattr(mmapipc.mapping, "_WAIT_SLICE_NS", 5 * 10**9)
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(0))
    last = 300
    shared = Reader(path)
    readers = [Reader(path) for _ in range(3)] + [shared, shared]
    bad: list[str] = []
    base: dict[int, int] = {}

    def wait_all(i: int, r: Reader[Student]) -> None:
        prev = 0
        while prev < last:
            try:
                rec = r.wait_for_change(1.0)
            except TimeoutError:  # a shared Reader: the other thread may have had the last
                prev = r.read().id
                continue
            base.setdefault(min(i, 3), r.stats["relooks"])  # threads 3 and 4 share one
            if rec != numbered(rec.id) or rec.id < prev:
                bad.append(f"{i}: {rec!r} after {prev}")
            prev = rec.id

    threads = [threading.Thread(target=wait_all, args=(i, r)) for i, r in enumerate(readers)]
    for t in threads:
        t.start()
    _wait_for_flag(path)
    writer = subprocess.Popen([sys.executable, "-c", RANDOM_WRITER, str(path), str(last), "3",
                               "1"], stdout=subprocess.PIPE, text=True)
    out, _ = writer.communicate(timeout=PATIENCE)
    relooks = [r.stats["relooks"] for r in readers]  # while the writer stored
    long_gaps = json.loads(out)["long_gaps"]
    for t in threads:
        t.join(PATIENCE)
        assert not t.is_alive()
    assert bad == []
    for i, r in enumerate(readers[:4]):
        assert relooks[i] - base[i] <= long_gaps, (i, r.stats)
        assert r.stats["sleeps"] > 0
        r.close()


def test_a_quiet_writer_over_a_flagged_record_wakes_the_waiter(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """A notify=False Writer (marker 0xA5) storing over a record a waiter flagged finds
    0xA7 in its exchange: it wakes the sleeper at once, not after the 0.2 s look-again."""
    monkeypatch.setattr(mmapipc.mapping, "_WAIT_SLICE_NS", 5 * 10**9)
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(0))
    got = []
    with Reader(path) as r:
        for n in range(1, 6):
            with Writer(path) as loud:  # the record is a notifying writer's again
                loud.write(numbered(100 * n))
            assert r.read().id == 100 * n
            t = threading.Thread(target=lambda: got.append(r.wait_for_change(PATIENCE)))
            t.start()
            _wait_for_flag(path)
            with Writer(path, notify=False) as quiet:
                quiet.write(numbered(n))
            t.join(PATIENCE)
            assert path.read_bytes()[MARKER] == lib.MMAPIPC_SEQ_MARKER
        assert r.stats["relooks"] == 0, r.stats
    assert [s.id for s in got] == [1, 2, 3, 4, 5]


# ---- 2. no torn or stale record; the flag never shows --------------------------------------

C_LOADER = NUMBERED_C + r"""
/* mmapipc_rec_load until the record's id reaches LAST: counts records that are not
 * whole, that go back, or whose lock bytes are not zero. */
int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    int last = atoi(argv[2]);
    mmapipc_rec *r = open_stu(argv[1], 0);
    if (r == NULL)
        return 3;
    long reads = 0, bad = 0, back = 0;
    int prev = -1;
    struct STU got, want;
    printf("ready\n");
    fflush(stdout);
    while (prev < last) {
        if (mmapipc_rec_load(r, &got) != 0)
            return 4;
        reads++;
        numbered(&want, got.id);
        unsigned char *raw = (unsigned char *)&got;
        if (memcmp(&got, &want, 25) != 0 || raw[25] || raw[26] || raw[27])
            bad++;
        if (got.id < prev)
            back++;
        prev = got.id;
    }
    printf("{\"reads\": %ld, \"bad\": %ld, \"back\": %ld}\n", reads, bad, back);
    mmapipc_rec_close(r);
    return 0;
}
"""


def test_readers_of_every_kind_never_see_the_flag_or_a_torn_record(
        tmp_path: Path, cbuild: Build, procs: list[subprocess.Popen[str]]) -> None:
    """While waiters in three processes flag the word before each sleep and a writer
    stores, readers in this process (read, read_bytes, changed) and a C program on the
    header (mmapipc_rec_load) see only whole records, ids that never go back, and lock
    bytes that read as zeros; the raw bytes show the flag (it is really there)."""
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(0))
    last = 400
    waiters = [start_ready([sys.executable, "-c", WAITER, str(path), str(last)]) for _ in range(3)]
    loader = start_ready([str(cbuild("loader", C_LOADER)), str(path), str(last)])
    procs.extend([*waiters, loader])
    _wait_for_flag(path)
    writer = subprocess.Popen([sys.executable, "-c", RANDOM_WRITER, str(path), str(last), "17",
                               "1"], stdout=subprocess.PIPE, text=True)
    procs.append(writer)
    bad: list[object] = []
    flags_seen = 0
    with Reader(path) as r:
        prev = 0
        while prev < last:
            rec = r.read()
            data = r.read_bytes()
            raw = r.raw_bytes()
            flags_seen += raw[MARKER] == WAITED
            if rec != numbered(rec.id) or rec.id < prev or data[25:28] != bytes(3):
                bad.append((rec, data.hex()))
            if r.changed():
                r.read()
            prev = rec.id
    assert bad == []
    _result(writer)
    got = _result(loader)
    assert got["bad"] == 0 and got["back"] == 0, got
    for waiter in waiters:
        assert _result(waiter)["bad"] == []
    assert flags_seen > 0  # the waiters did flag while these reads went on


def test_the_flag_changes_no_field(tmp_path: Path) -> None:
    """The flag lives in the marker byte alone: sex (byte 24, in the same 32-bit word) and
    the sequence keep their values while a waiter sets and a store clears it."""
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        for sex in (b"m", b"f", b"\x00", b"\xa7", b"\xff"):
            w.write(Student(1, "x", sex))
            before = path.read_bytes()
            with Reader(path) as r:
                t = threading.Thread(target=lambda: r.wait_for_change(PATIENCE))
                t.start()
                _wait_for_flag(path)
                during = path.read_bytes()
                assert during[:25] == before[:25] and during[26:] == before[26:]
                w.write(numbered(2))
                t.join(PATIENCE)
                assert r.read() == numbered(2)


# ---- 3. nothing destroyed, no crash ------------------------------------------------------

SLEEPER = NUMBERED_PY + """
from mmapipc.errors import FileTooShortError
path = sys.argv[1]
with Reader(path) as r:
    print("ready", flush=True)
    t = time.monotonic()
    try:
        rec = r.wait_for_change(20)
        print(json.dumps({"got": rec.id, "reopened": r.reopened,
                          "after": time.monotonic() - t}), flush=True)
    except OSError as e:
        print(json.dumps({"error": type(e).__name__, "after": time.monotonic() - t}),
              flush=True)
"""


@pytest.mark.parametrize("size", [0, 10, 24])
def test_a_sleeping_waiter_sees_the_file_truncated(tmp_path: Path, size: int,
                                                   procs: list[subprocess.Popen[str]]) -> None:
    """Truncated under a waiter asleep on its futex (0xA7 set): the waiter reports the short
    file (no store wakes it: it finds out when it looks again), it does not die of SIGBUS."""
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(1))
    waiter = start_ready([sys.executable, "-c", SLEEPER, str(path)])
    procs.append(waiter)
    _wait_for_flag(path)
    os.truncate(path, size)
    got = _result(waiter)
    assert got.get("error") == FileTooShortError.__name__, got


def test_a_sleeping_waiter_follows_a_replaced_file(tmp_path: Path,
                                                   procs: list[subprocess.Popen[str]]) -> None:
    """A new file renamed over the path under a flagged, sleeping waiter: it follows it and
    returns the new record; the old file keeps its flag (nobody stores there any more)."""
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(1))
    waiter = start_ready([sys.executable, "-c", SLEEPER, str(path)])
    procs.append(waiter)
    _wait_for_flag(path)
    new = tmp_path / "new.bin"
    with Writer(new) as w:
        w.write(numbered(2))
    os.rename(new, path)
    got = _result(waiter)
    assert got.get("got") == 2 and got.get("reopened") == 1, got


CHURN = NUMBERED_PY + """
import os, threading
from mmapipc.errors import MmapipcError
path, rounds = sys.argv[1], int(sys.argv[2])
rng = random.Random(23)
stop = False
outcomes = {}

def wait_forever():
    with Reader(path) as r:
        while not stop:
            try:
                r.wait_for_change(rng.random() * 0.01)
                kind = "change"
            except (OSError, MmapipcError) as e:
                kind = type(e).__name__
            outcomes[kind] = outcomes.get(kind, 0) + 1

print("ready", flush=True)
waiters = [threading.Thread(target=wait_forever) for _ in range(4)]
for t in waiters:
    t.start()
sys.stdin.readline()
stop = True
for t in waiters:
    t.join()
print(json.dumps(outcomes), flush=True)
"""


def test_truncations_at_random_moments_kill_no_waiter(tmp_path: Path,
                                                      procs: list[subprocess.Popen[str]]
                                                      ) -> None:
    """The file truncated (0, 10, 24 bytes) and grown back at random moments, many times,
    while waiters in another process look, flag (a compare-and-swap through their writable
    mapping, which faults on a page past the end of the file) and sleep: they survive."""
    path = tmp_path / "rec.bin"
    w = Writer(path)
    w.write(numbered(0))
    churn = subprocess.Popen([sys.executable, "-c", CHURN, str(path), "0"], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    procs.append(churn)
    assert churn.stdout is not None and churn.stdout.readline().strip() == "ready"
    rng = random.Random(29)
    n = 0
    end = time.monotonic() + 1.5
    while time.monotonic() < end:  # at random moments
        n += 1
        try:
            w.write(numbered(n))
        except OSError:
            pass
        if rng.random() < 0.3:
            time.sleep(rng.random() * 0.003)
            os.truncate(path, rng.choice((0, 10, 24)))
            time.sleep(rng.random() * 0.003)
            os.truncate(path, 28)
        else:
            time.sleep(rng.random() * 0.002)
    end = time.monotonic() + 1.5
    while time.monotonic() < end and churn.poll() is None:  # as fast as it goes
        n += 1
        os.truncate(path, 0)
        os.truncate(path, 28)
        try:
            w.write(numbered(n))  # a notifying writer's record again: the waiters flag it
        except OSError:
            pass
        _spin(rng.random() * 0.00005)
    assert churn.poll() is None, churn.communicate()
    out, err = churn.communicate("\n", timeout=PATIENCE)
    w.close()
    assert churn.returncode == 0, (churn.returncode, err)
    outcomes = json.loads(out)
    assert outcomes.get("change", 0) > 0 and outcomes.get("FileTooShortError", 0) > 0, outcomes


@root_only
def test_a_waiter_that_may_not_write_sees_every_change_from_another_process(
        open_dir: Path) -> None:
    """A waiter that may not write the file never flags and never sleeps on the futex, and
    the writer (which then never wakes) still has each of its slow changes seen by it."""
    path = open_dir / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(0))
    os.chmod(path, 0o644)
    ready = open_dir / "tmp" / "ready"
    writer_script = NUMBERED_PY + """
import os
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
with Writer(sys.argv[1]) as w:
    for n in range(1, 31):
        time.sleep(0.01)
        w.write(numbered(n))
"""
    writer = subprocess.Popen([sys.executable, "-c", writer_script, str(path), str(ready)])

    def wait_as_nobody() -> None:
        with Reader(path) as r:
            ready.touch()
            ids = [r.wait_for_change(PATIENCE).id for _ in range(30)]
            assert ids == list(range(1, 31)), ids
            assert r.stats["sleeps"] == 0, r.stats
            assert Path(path).read_bytes()[MARKER] == NOTIFY

    try:
        as_nobody(wait_as_nobody)
    finally:
        ready.touch()
        assert writer.wait(PATIENCE) == 0


# ---- 4. system calls: none when nobody waits, one wake per store somebody waits for ----------


def _futex_wakes(log: Path) -> list[str]:
    """The shared FUTEX_WAKEs in an strace log (the interpreter's own are _PRIVATE)."""
    return [line for line in log.read_text().splitlines() if "FUTEX_WAKE," in line]


def test_a_killed_waiter_costs_one_wake_then_none(tmp_path: Path,
                                                  procs: list[subprocess.Popen[str]]) -> None:
    """A waiter killed in its sleep leaves 0xA7 behind: the next store makes one FUTEX_WAKE
    (waking nobody) and clears it; the 199 stores after it make no futex call at all."""
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(0))
    waiter = start_ready([sys.executable, "-c", SLEEPER, str(path)])
    procs.append(waiter)
    _wait_for_flag(path)
    waiter.kill()
    waiter.communicate(timeout=PATIENCE)
    assert path.read_bytes()[MARKER] == WAITED
    log = tmp_path / "futex.log"
    script = NUMBERED_PY + """
with Writer(sys.argv[1]) as w:
    for n in range(1, 201):
        w.write(numbered(n))
"""
    subprocess.run([STRACE, "-f", "-e", "trace=futex", "-o", str(log), sys.executable, "-c",
                    script, str(path)], check=True, timeout=PATIENCE)
    assert len(_futex_wakes(log)) == 1, _futex_wakes(log)
    assert path.read_bytes()[MARKER] == NOTIFY


def test_stores_make_at_most_one_wake_each_and_only_while_someone_waits(
        tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    """Under strace: 100 stores with nobody waiting, no wake; then 100 stores 3 ms apart
    with three waiters asleep, at most one wake each (one FUTEX_WAKE wakes them all), and
    at least one; then the waiters gone, 100 more stores and no wake."""
    path = tmp_path / "rec.bin"
    log = tmp_path / "futex.log"
    with Writer(path) as w:
        w.write(numbered(0))
    script = NUMBERED_PY + """
with Writer(sys.argv[1]) as w:
    for n in range(1, 101):
        w.write(numbered(n))
    print("alone", flush=True)
    sys.stdin.readline()
    for n in range(101, 201):
        time.sleep(0.003)
        w.write(numbered(n))
    print("watched", flush=True)
    sys.stdin.readline()
    for n in range(201, 301):
        w.write(numbered(n))
"""
    writer = subprocess.Popen([STRACE, "-f", "-e", "trace=futex", "-o", str(log),
                               sys.executable, "-c", script, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    procs.append(writer)
    assert writer.stdin is not None and writer.stdout is not None
    assert writer.stdout.readline().strip() == "alone"
    assert _futex_wakes(log) == []
    waiters = [start_ready([sys.executable, "-c", WAITER, str(path), "200"]) for _ in range(3)]
    procs.extend(waiters)
    _wait_for_flag(path)
    writer.stdin.write("\n")
    writer.stdin.flush()
    assert writer.stdout.readline().strip() == "watched"
    for waiter in waiters:
        assert _result(waiter)["bad"] == []
    watched = len(_futex_wakes(log))
    assert 1 <= watched <= 100, watched
    # the last store may have been flagged by a waiter before it saw it and left
    writer.stdin.write("\n")
    writer.stdin.flush()
    assert writer.wait(PATIENCE) == 0
    assert len(_futex_wakes(log)) - watched <= 1


# ---- 5. the C library: the same, between C and Python peers -------------------------------

# mmapipc_rec_wait's futex calls go through this counter: a FUTEX_WAIT_BITSET that times
# out (with 10 s waits: a 200 ms slice that ran out) is a sleep no store ended; counted in
# a thread once it has seen its first change (the writer runs).
C_COUNTED = r"""
#include <stdarg.h>
#include <stdatomic.h>
long counted_syscall(long n, ...);
#define syscall counted_syscall
""" + NUMBERED_C + r"""
#undef syscall
#include <pthread.h>
extern long syscall(long n, ...);

static atomic_long sleeps, timeouts;
static _Thread_local int counting;   /* set once the writer runs: its first change seen */

long counted_syscall(long n, ...)
{
    va_list ap;
    long a[6];
    va_start(ap, n);
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    long rc = syscall(n, a[0], a[1], a[2], a[3], a[4], a[5]);
    if (n == SYS_futex && a[1] == FUTEX_WAIT_BITSET && counting) {
        atomic_fetch_add(&sleeps, 1);
        if (rc != 0 && errno == ETIMEDOUT)
            atomic_fetch_add(&timeouts, 1);
    }
    return rc;
}
"""

C_WAITERS = C_COUNTED + r"""
static const char *path;
static int last;
static atomic_long bad, started;

static void *wait_all(void *arg)
{
    (void)arg;
    mmapipc_rec *r = mmapipc_rec_open(path, MMAPIPC_STU_SIZE, MMAPIPC_STU_MARKER,
                                      MMAPIPC_STU_SEQ, 0);
    struct STU got, want;
    if (r == NULL || mmapipc_rec_load(r, &got) != 0) {
        atomic_fetch_add(&bad, 1000000);
        atomic_fetch_add(&started, 1);
        return NULL;
    }
    atomic_fetch_add(&started, 1);
    int prev = got.id;
    while (prev < last) {
        if (mmapipc_rec_wait(r, &got, 10000000000LL) != 1) {
            atomic_fetch_add(&bad, 1000);
            break;
        }
        counting = 1;
        numbered(&want, got.id);
        if (memcmp(&got, &want, sizeof got) != 0 || got.id <= prev)
            atomic_fetch_add(&bad, 1);
        prev = got.id;
    }
    mmapipc_rec_close(r);
    return NULL;
}

/* THREADS threads, each with its own handle, wait for every change up to LAST. */
int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    path = argv[1];
    last = atoi(argv[2]);
    int n = atoi(argv[3]);
    pthread_t t[16];
    for (int i = 0; i < n && i < 16; i++)
        pthread_create(&t[i], NULL, wait_all, NULL);
    while (atomic_load(&started) < n)
        usleep(1000);
    printf("ready\n");
    fflush(stdout);
    for (int i = 0; i < n && i < 16; i++)
        pthread_join(t[i], NULL);
    printf("{\"bad\": %ld, \"sleeps\": %ld, \"timeouts\": %ld}\n", atomic_load(&bad),
           atomic_load(&sleeps), atomic_load(&timeouts));
    return 0;
}
"""

C_WRITER = NUMBERED_C + r"""
#include <time.h>
/* Stores numbered 1..LAST at random moments (bursts, gaps up to 6 ms) once told to on
 * stdin; prints how many gaps were over 50 ms (a waiter's own look-again is no miss). */
int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    int last = atoi(argv[2]);
    mmapipc_rec *r = open_stu(argv[1], MMAPIPC_REC_WRITE);
    struct STU s;
    if (r == NULL)
        return 3;
    printf("ready\n");
    fflush(stdout);
    if (getchar() == EOF)
        return 4;
    srand(31);
    long long_gaps = 0;
    int64_t before = mmapipc_rec__now_ns();
    for (int n = 1; n <= last;) {
        int burst = rand() % 4 == 0 ? 1 + rand() % 5 : 1;
        for (int k = 0; k < burst && n <= last; k++, n++) {
            numbered(&s, n);
            if (mmapipc_rec_store(r, &s) != 0)
                return 5;
            int64_t now = mmapipc_rec__now_ns();
            long_gaps += now - before > 50000000;
            before = now;
        }
        struct timespec ts = {0, (long)(rand() % 6000) * 1000};
        nanosleep(&ts, NULL);
    }
    printf("{\"long_gaps\": %ld}\n", long_gaps);
    mmapipc_rec_close(r);
    return 0;
}
"""


def _go(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()


@pytest.mark.parametrize("writer_kind", ["python", "c"])
@pytest.mark.parametrize("waiter_kind", ["python", "c"])
def test_c_and_python_peers_never_sleep_through_a_store(
        tmp_path: Path, cbuild: Build, writer_kind: str, waiter_kind: str,
        procs: list[subprocess.Popen[str]]) -> None:
    """A writer (Python Writer or mmapipc_rec_store) stores 300 records at random moments
    while waiters (three Python processes, or a C program of three threads on
    mmapipc_rec_wait) sleep on the record: each sees whole records in order and no sleep
    ends by running out while stores keep coming."""
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(0))
    last = 300
    if waiter_kind == "python":
        waiters = [start_ready([sys.executable, "-c", WAITER, str(path), str(last)])
                   for _ in range(3)]
    else:
        waiters = [start_ready([str(cbuild("waiters", C_WAITERS)), str(path), str(last), "3"])]
    procs.extend(waiters)
    _wait_for_flag(path)
    if writer_kind == "python":
        writer = subprocess.Popen([sys.executable, "-c", RANDOM_WRITER, str(path), str(last),
                                   "41", "1"], stdout=subprocess.PIPE, text=True)
    else:
        writer = subprocess.Popen([str(cbuild("writer", C_WRITER)), str(path), str(last)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        _go(writer)
    procs.append(writer)
    long_gaps = int(str(_result(writer)["long_gaps"]))
    for waiter in waiters:
        got = _result(waiter)
        if waiter_kind == "python":
            assert got["bad"] == [] and int(str(got["relooks"])) <= long_gaps, got
        else:
            assert got["bad"] == 0 and int(str(got["timeouts"])) <= long_gaps, got
            assert int(str(got["sleeps"])) > 0, got


def test_a_c_writer_nobody_waits_for_makes_no_futex_call(tmp_path: Path, cbuild: Build) -> None:
    """mmapipc_rec_store, 300 stores with nobody waiting: no futex call at all (strace)."""
    path = tmp_path / "rec.bin"
    log = tmp_path / "futex.log"
    exe = cbuild("writer", C_WRITER)
    proc = subprocess.run([STRACE, "-f", "-e", "trace=futex", "-o", str(log), str(exe),
                           str(path), "300"], input="\n", capture_output=True, text=True,
                          timeout=PATIENCE, check=True)
    assert "long_gaps" in proc.stdout
    assert [line for line in log.read_text().splitlines() if "futex(" in line] == []
    assert path.read_bytes()[MARKER] == NOTIFY


# ---- 6. fork --------------------------------------------------------------------------------

FORKER = NUMBERED_PY + """
import os, signal, threading
path = sys.argv[1]
r = Reader(path)
stop = False

def wait_forever():
    while not stop:
        try:
            r.wait_for_change(0.05)
        except TimeoutError:
            pass

def read_forever():
    while not stop:
        r.read()

threads = [threading.Thread(target=wait_forever), threading.Thread(target=read_forever)]
for t in threads:
    t.start()
print("ready", flush=True)
rng = random.Random(37)
hung = failed = 0
for k in range(30):
    time.sleep(rng.random() * 0.01)
    pid = os.fork()
    if pid == 0:
        signal.alarm(2)   # a child that hangs dies of SIGALRM
        try:
            before = r.read().id
            rec = r.wait_for_change(5)
            ok = rec.id > before and rec == numbered(rec.id)
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        hung += 1
        break
    elif os.WEXITSTATUS(status) != 0:
        failed += 1
stop = True
for t in threads:
    t.join()
print(json.dumps({"hung": hung, "failed": failed}), flush=True)
"""


def test_children_of_a_waiting_process_keep_working(tmp_path: Path,
                                                    procs: list[subprocess.Popen[str]]) -> None:
    """A process whose threads wait on a Reader (flagging the record, sleeping) and read it
    forks at random moments, 30 times; each child reads and waits for the next change on
    the same Reader while the writer stores: it gets it, without hanging (on a lock that
    a thread of the parent held at the fork, and that no thread of the child lets go)."""
    path = tmp_path / "rec.bin"
    w = Writer(path)
    w.write(numbered(0))
    forker = start_ready([sys.executable, "-c", FORKER, str(path)])
    procs.append(forker)
    n = 0
    while forker.poll() is None:
        n += 1
        w.write(numbered(n))
        time.sleep(0.002)
    w.close()
    got = _result(forker)
    assert got == {"hung": 0, "failed": 0}, got


# ---- where the waiter cannot flag: no /proc, a read-only mount --------------------------------

UNSHARED_WAITER = NUMBERED_PY + """
path, last = sys.argv[1], int(sys.argv[2])
with Reader(path) as r:
    print("ready", flush=True)
    ids = []
    while not ids or ids[-1] < last:
        ids.append(r.wait_for_change(10).id)
    print(json.dumps({"ids": ids, "sleeps": r.stats["sleeps"]}), flush=True)
"""


@root_only
@pytest.mark.parametrize("where", ["no-proc", "read-only-mount"])
def test_a_waiter_that_cannot_flag_sees_every_slow_change(
        tmp_path: Path, where: str, procs: list[subprocess.Popen[str]]) -> None:
    """A waiter in a mount namespace without /proc (it cannot open its descriptor again),
    or that sees the file through a read-only bind mount (EROFS), never sleeps on the
    futex, polls, and sees each of a notifying writer's changes 20 ms apart; it leaves the
    marker alone."""
    unshare = shutil.which("unshare")
    assert unshare is not None, "util-linux unshare is needed"
    data = tmp_path / "data"
    data.mkdir()
    path = data / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(0))
    if where == "no-proc":
        setup, seen = "umount -l /proc", path
    else:
        view = tmp_path / "view"
        view.mkdir()
        setup = f"mount --bind {data} {view} && mount -o remount,ro,bind {view}"
        seen = view / "rec.bin"
    last = 20
    waiter = start_ready([unshare, "-m", "--propagation", "private", "sh", "-c",
                     f'{setup} && exec "$0" -c "$1" "$2" "$3"', sys.executable, UNSHARED_WAITER,
                     str(seen), str(last)])
    procs.append(waiter)
    with Writer(path) as w:
        for n in range(1, last + 1):
            time.sleep(0.02)
            w.write(numbered(n))
    got = _result(waiter)
    assert got["ids"] == list(range(1, last + 1)) and got["sleeps"] == 0, got
    assert path.read_bytes()[MARKER] == NOTIFY


EMFILE_WAITER = NUMBERED_PY + """
import os, resource
path = sys.argv[1]
with Reader(path) as r:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers = []
    try:
        while True:  # no descriptor left: opening the file again for the flag fails
            fillers.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    try:
        r.wait_for_change(0.05)
    except TimeoutError:
        pass
    for fd in fillers:
        os.close(fd)
    denied = r.stats["sleeps"]
    try:
        r.wait_for_change(0.3)
    except TimeoutError:
        pass
    print(json.dumps({"sleeps_while_out_of_descriptors": denied,
                      "sleeps_after": r.stats["sleeps"] - denied}), flush=True)
"""


def test_a_waiter_out_of_descriptors_for_a_moment_sleeps_again_later(tmp_path: Path) -> None:
    """A waiter that could not open its descriptor again for a passing reason (EMFILE: no
    descriptor left) polls meanwhile, and sleeps on the futex again once it can, rather
    than polling for the rest of the Reader's life as one that may not write the file."""
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(0))
    proc = subprocess.run([sys.executable, "-c", EMFILE_WAITER, str(path)], capture_output=True,
                          text=True, timeout=PATIENCE, check=False)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["sleeps_while_out_of_descriptors"] == 0, got
    assert got["sleeps_after"] > 0, got


def lone_rounds(r: Reader[Any], last: int, seen: list[float]) -> Iterator[int]:
    """Rounds 1..last of lone stores: a thread waits on r and notes each record's d in seen;
    each round starts once the store before it was seen, as the waiter goes back to sleep."""
    def wait_all() -> None:
        while not seen or seen[-1] < last:
            seen.append(r.wait_for_change(10).d)

    t = threading.Thread(target=wait_all)
    t.start()
    for n in range(1, last + 1):
        while len(seen) < n - 1:
            time.sleep(0)
        yield n
    t.join(PATIENCE)


def test_a_marker_outside_the_futex_word_means_a_wake_at_every_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A layout whose marker (11) lies outside the word of its sequence (12-15): no waiter
    can say it sleeps, so the writer wakes at every store and the waiter never writes the
    file; 200 lone stores at random moments each wake the sleeping waiter at once."""
    monkeypatch.setattr(mmapipc.mapping, "_WAIT_SLICE_NS", 5 * 10**9)
    layout = Layout.from_c("struct w { double d; short s; char c; };", "w")
    assert layout.lock_offsets == (11, 12)
    path = tmp_path / "rec.bin"
    w = Writer(path, layout=layout)
    w.write(layout.record(0.0, 0, b"a"))
    seen: list[float] = []
    with Reader(path, layout=layout) as r:
        rng = random.Random(47)
        for n in lone_rounds(r, 200, seen):
            _spin(rng.random() * 0.0003)
            w.write(layout.record(float(n), n, b"b"))
            assert path.read_bytes()[11] == NOTIFY
        assert r.stats["relooks"] == 0 and r.stats["sleeps"] > 0, r.stats
    w.close()
    assert seen[-1] == 200.0


@root_only
def test_a_c_waiter_that_may_not_write_polls_and_sees_whole_records(
        open_dir: Path, cbuild: Build) -> None:
    """mmapipc_rec_wait in a process that may not write the file (uid 65534): it never
    sleeps on the futex (it cannot say it is there), and sees whole records in order from a
    C writer storing at random moments."""
    path = open_dir / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(0))
    os.chmod(path, 0o644)
    writer_exe = cbuild("writer", C_WRITER)
    waiters = Path(shutil.copy(cbuild("waiters", C_WAITERS), open_dir / "waiters"))
    ready = open_dir / "tmp" / "ready"
    outcome: list[str] = []

    def write_when_ready() -> None:
        deadline = time.monotonic() + PATIENCE
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        outcome.append(subprocess.run([str(writer_exe), str(path), "200"], input="\n",
                                      capture_output=True, text=True, timeout=PATIENCE,
                                      check=True).stdout)

    def wait_as_nobody() -> None:
        proc = start_ready([str(waiters), str(path), "200", "1"])
        ready.touch()
        got = _result(proc)
        assert got["bad"] == 0 and got["sleeps"] == 0, got

    writer = threading.Thread(target=write_when_ready)
    writer.start()
    try:
        as_nobody(wait_as_nobody)
    finally:
        ready.touch()
        writer.join(PATIENCE)
    assert outcome and "long_gaps" in outcome[0]
    assert path.read_bytes()[MARKER] == NOTIFY


def test_the_flag_lands_in_the_right_page_of_a_large_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 5016-byte record whose lock sits at 5001-5003, in the second page: the waiter maps
    that page read-write and flags byte 5001, nothing else; each lone store wakes it."""
    monkeypatch.setattr(mmapipc.mapping, "_WAIT_SLICE_NS", 5 * 10**9)
    layout = Layout.from_c("struct big { char a[5000]; char c; double d; };", "big")
    assert layout.lock_offsets == (5001, 5002)
    path = tmp_path / "rec.bin"
    w = Writer(path, layout=layout)
    w.write(layout.record(b"z" * 4999, b"c", 0.0))
    stored = path.read_bytes()
    seen: list[float] = []
    with Reader(path, layout=layout) as r:
        for n in lone_rounds(r, 30, seen):
            if n % 10 == 0:  # asleep, flagged: only the marker byte differs
                deadline = time.monotonic() + PATIENCE
                while path.read_bytes()[5001] != WAITED:
                    assert time.monotonic() < deadline
                    time.sleep(0.001)
                flagged = path.read_bytes()
                assert flagged[:5001] == stored[:5001] and flagged[5002:] == stored[5002:]
            w.write(layout.record(b"z" * 4999, b"c", float(n)))
            stored = path.read_bytes()
        assert r.stats["relooks"] == 0 and r.stats["sleeps"] > 0, r.stats
    w.close()
    assert seen[-1] == 30.0


C_EMFILE_WAITER = C_COUNTED + r"""
#include <fcntl.h>
/* mmapipc_rec_wait with no descriptor left (50 ms), then with them back (300 ms): prints
 * the futex sleeps of each part. */
int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    mmapipc_rec *r = open_stu(argv[1], 0);
    struct STU s;
    static int fillers[1 << 20];
    int n = 0;
    if (r == NULL || mmapipc_rec_load(r, &s) != 0)
        return 3;
    counting = 1;
    while (n < (1 << 20) && (fillers[n] = open("/dev/null", O_RDONLY)) >= 0)
        n++;
    if (mmapipc_rec_wait(r, &s, 50000000LL) != 0)
        return 4;
    long before = atomic_load(&sleeps);
    while (n > 0)
        close(fillers[--n]);
    if (mmapipc_rec_wait(r, &s, 300000000LL) != 0)
        return 5;
    printf("{\"out_of_descriptors\": %ld, \"after\": %ld}\n", before,
           atomic_load(&sleeps) - before);
    mmapipc_rec_close(r);
    return 0;
}
"""


def test_a_c_waiter_out_of_descriptors_for_a_moment_sleeps_again_later(
        tmp_path: Path, cbuild: Build) -> None:
    """mmapipc_rec_wait, like the Python wait: a passing EMFILE makes it look, not give up
    sleeping on the futex for the handle's life."""
    path = tmp_path / "rec.bin"
    with Writer(path) as w:
        w.write(numbered(0))
    exe = cbuild("emfile", C_EMFILE_WAITER)
    proc = subprocess.run(["sh", "-c", 'ulimit -n 256 && exec "$0" "$1"', str(exe), str(path)],
                          capture_output=True, text=True, timeout=PATIENCE, check=False)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    got = json.loads(proc.stdout)
    assert got == {"out_of_descriptors": 0, "after": got["after"]} and got["after"] > 0, got
