"""A busy wait alone in its process hands back to Python every MMAPIPC_WARM_NS to take the
path of a change (a read, a decode): what it must not cost, whatever lands meanwhile."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_watch import PATIENCE

from mmapipc import Reader, Student

WARM = r"""
import json, sys, threading, time
from pathlib import Path
from mmapipc import Reader, Student
path, threaded = Path(sys.argv[1]), sys.argv[2] == "threaded"
done = threading.Event()
if threaded:   # another thread, idle: a hand-back would make it give up the GIL
    threading.Thread(target=done.wait, daemon=True).start()
with Reader[Student](path, busy=True) as r:
    decodes, decode = 0, r._decode
    def counting(data):
        global decodes
        decodes += 1
        return decode(data)
    r._decode = counting
    t0 = time.monotonic()
    try:
        r.wait_for_change(timeout=0.2)
    except TimeoutError:
        pass
    waited = time.monotonic() - t0
    still = r.read()
    path.write_bytes(Student(2, "moved", "f").to_bytes())
    moved = r.wait_for_change(timeout=20)
    print(json.dumps({"decodes": decodes, "waited": waited, "readied": r.stats["readied"],
                      "still": still.id, "moved": [moved.id, moved.name]}))
done.set()
"""


@pytest.mark.parametrize("threaded", [False, True], ids=["alone", "threaded"])
def test_a_busy_wait_alone_keeps_the_path_of_a_change_warm(shared: Path,
                                                           threaded: bool) -> None:
    """A busy wait alone in its process hands back to Python every MMAPIPC_WARM_NS between
    changes to take the path of a change (a read, a decode), which a millisecond of
    spinning in C leaves cold on a shared machine; with another thread it does not (the
    thread would give up the GIL each time).  Neither is a change nor a timeout."""
    shared.write_bytes(Student(1, "still", "m").to_bytes())
    out = subprocess.run([sys.executable, "-c", WARM, str(shared),
                          "threaded" if threaded else "alone"],
                         capture_output=True, text=True, timeout=PATIENCE)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert 0.2 <= got["waited"] < 0.2 + PATIENCE / 10, got
    assert (got["still"], got["moved"], got["readied"]) == (1, [2, "moved"], 0), got
    if threaded:
        assert got["decodes"] == 1, got  # the change (the record was decoded on opening)
    else:  # one every 50 us at most; a slow machine lends the core out, so ask a tenth
        assert got["decodes"] >= 0.2 / 50e-6 / 10, got


INTERRUPTED = r"""
import json, random, signal, sys, time
from pathlib import Path
from typing import Any
from mmapipc import Reader, Student
path = Path(sys.argv[1])
signal.signal(signal.SIGALRM, signal.default_int_handler)   # a Ctrl-C, at a chosen time
interrupted = returned = 0
with Reader[Student](path, busy=True) as r:
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, random.uniform(60e-6, 400e-6))
                r.wait_for_change(timeout=0.005)
                returned += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except KeyboardInterrupt:
            interrupted += 1
        except TimeoutError:
            pass
print(json.dumps({"interrupted": interrupted, "returned": returned}))
"""


def test_a_ctrl_c_during_the_hand_back_leaves_no_change_behind(shared: Path) -> None:
    """Ctrl-C lands wherever the busy wait is, the hand-back's read() included: the record
    never changes, so no wait after the KeyboardInterrupt may return it as a change."""
    shared.write_bytes(Student(1, "still", "m").to_bytes())
    out = subprocess.run([sys.executable, "-c", INTERRUPTED, str(shared)],
                         capture_output=True, text=True, timeout=PATIENCE)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["interrupted"] >= 100 and got["returned"] == 0, got


def test_an_interrupt_in_read_forgets_only_a_record_it_did_not_return(shared: Path) -> None:
    """An exception just after a load that found nothing new (a signal handler's) leaves
    the Reader waiting for a change; one while a new record is decoded leaves that record
    to be returned by the next wait."""
    shared.write_bytes(Student(1, "still", "m").to_bytes())
    with Reader[Student](shared, busy=True) as r:
        load = r._load

        def interrupted_load(ch: object, out: object) -> int:
            load(ch, out)
            raise KeyboardInterrupt

        r._load = interrupted_load
        try:
            r.read()
        except KeyboardInterrupt:
            pass
        r._load = load
        try:
            got = r.wait_for_change(timeout=0.05)
            raise AssertionError(f"an unchanged record came back as a change: {got}")
        except TimeoutError:
            pass
        decode = r._decode

        def interrupted_decode(data: bytes) -> Student:
            raise KeyboardInterrupt

        shared.write_bytes(Student(2, "moved", "f").to_bytes())
        r._decode = interrupted_decode
        try:
            r.read()
        except KeyboardInterrupt:
            pass
        r._decode = decode
        assert r.wait_for_change(timeout=PATIENCE) == Student(2, "moved", "f")


FRAME_H = r"""
struct sample { short level; char flags; };
struct frame { int id; struct sample samples[4096]; };
"""

PAIRS_WRITER = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "frame.h"
static void nap(long ns)
{
    struct timespec t = {ns / 1000000000L, ns % 1000000000L};
    nanosleep(&t, NULL);
}
/* A legacy writer (plain memcpy) of a 16 KiB frame: PAIRS times, frame 2k+1, then frame
 * 2k+2 2 ms later (each stays longer than max_gap), then 30 ms of silence. */
int main(int argc, char **argv)
{
    static struct frame f;
    int fd = argc == 3 ? open(argv[1], O_RDWR) : -1;
    struct frame *m = mmap(NULL, sizeof f, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (fd < 0 || m == MAP_FAILED)
        return 2;
    nap(30000000L);
    for (int k = 0; k < atoi(argv[2]); k++) {
        f.id = 2 * k + 1;
        memcpy(m, &f, sizeof f);
        nap(2000000L);
        f.id = 2 * k + 2;
        memcpy(m, &f, sizeof f);
        nap(30000000L);
    }
    return 0;
}
"""

FRAMES = r"""
import json, subprocess, sys
from pathlib import Path
from typing import Any
from mmapipc import Layout, Reader
header, path, writer = sys.argv[1:4]
layout = Layout.from_file(header, "struct frame")
Path(path).write_bytes(bytes(layout.size))
with Reader(path, layout=layout, busy=True) as r:
    w = subprocess.Popen([writer, path, "12"])
    ids = [frame.id for frame in r.watch(timeout=0.3)]
    assert w.wait() == 0
print(json.dumps(ids))
"""


def test_a_slow_decode_does_not_hide_a_change_behind_a_hand_back(
        tmp_path: Path, build_c: Any) -> None:
    """A 16 KiB frame of 4096 small structs takes milliseconds to decode in Python: a
    hand-back that decodes it would leave the record unlooked at for longer than max_gap,
    and a frame that stays 2 ms would go unseen.  A busy wait on such a record spins."""
    header = tmp_path / "frame.h"
    header.write_text(FRAME_H)
    writer = build_c("pairs_writer", f'#include "{header}"\n'
                     + PAIRS_WRITER.replace('#include "frame.h"\n', ""))
    out = subprocess.run([sys.executable, "-c", FRAMES, str(header), str(tmp_path / "frame"),
                          str(writer)], capture_output=True, text=True, timeout=PATIENCE)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == list(range(25))


JOINED = r"""
import json, signal, sys, threading, time
from pathlib import Path
from mmapipc import Reader, Student
done, started, decodes = threading.Event(), [], []
def start_a_thread(signum, frame):   # a signal handler that starts a thread, idle
    started.append(time.monotonic())
    threading.Thread(target=done.wait, daemon=True).start()
signal.signal(signal.SIGALRM, start_a_thread)
with Reader[Student](Path(sys.argv[1]), busy=True) as r:
    decode = r._decode
    def counting(data):
        decodes.append(time.monotonic())
        return decode(data)
    r._decode = counting
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    try:
        r.wait_for_change(timeout=0.8)
    except TimeoutError:
        pass
done.set()
print(json.dumps({"before": sum(t < started[0] for t in decodes),
                  "after": [t - started[0] for t in decodes if t >= started[0]]}))
"""


def test_a_thread_started_during_a_busy_wait_ends_its_hand_backs(shared: Path) -> None:
    """A thread started while a busy wait runs (by a signal handler) would have to give
    up the GIL at every hand-back: the wait stops handing back within a slice or so, not
    at the next change."""
    shared.write_bytes(Student(1, "still", "m").to_bytes())
    out = subprocess.run([sys.executable, "-c", JOINED, str(shared)],
                         capture_output=True, text=True, timeout=PATIENCE)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["before"] > 0, got   # alone, it handed back
    assert all(t < 0.3 for t in got["after"]), (len(got["after"]), max(got["after"]))


CUT_SHORT = r"""
import json, sys
from pathlib import Path
from mmapipc import Reader, Student
path = Path(sys.argv[1])
moved = Student(2, "moved", "f")
with Reader[Student](path, busy=True) as r:
    load, decode, decoded, loads = r._load, r._decode, [], []
    def storing_load(ch, out):   # the change lands just as the first hand-back reads
        if not loads:
            path.write_bytes(moved.to_bytes())
        loads.append(1)
        return load(ch, out)
    def interrupted_decode(data):   # a Ctrl-C while the moved record is decoded again
        decoded.append(data)
        if decoded.count(moved.to_bytes()) == 2:
            raise KeyboardInterrupt
        return decode(data)
    r._load, r._decode = storing_load, interrupted_decode
    try:
        got = [r.wait_for_change(timeout=5).id]
    except KeyboardInterrupt:
        got = ["interrupted"]
    r._load, r._decode = load, decode
    try:
        got.append(r.wait_for_change(timeout=0.1).id)
    except TimeoutError:
        got.append("timeout")
print(json.dumps(got))
"""


def test_a_change_taken_by_a_hand_back_is_returned_even_after_a_ctrl_c(shared: Path) -> None:
    """A change that a hand-back's read() takes, then a Ctrl-C during the rest of the
    hand-back: the next wait returns that change (it was never returned), rather than
    waiting for the one after it."""
    shared.write_bytes(Student(1, "still", "m").to_bytes())
    out = subprocess.run([sys.executable, "-c", CUT_SHORT, str(shared)],
                         capture_output=True, text=True, timeout=PATIENCE)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert 2 in got, got
