"""The wait for a slow regular writer (a C program that sleeps after each store): handed
back once a window just before its change (readied), spun through only where that window
is, whatever cuts a sleep short."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from test_watch import PATIENCE, sleepy_writer

from mmapipc import Reader, Student
from mmapipc.errors import FileTooShortError

PERIOD_NS = 500_000_000   # the writer's sleep after each store: its windows are spun through
LEARN = 4                 # changes taken before the period is known
SPUN = 3000               # looks between two changes at idle_gap=10 ms without a spin (at
                          # a window 50 us apart, and across the period): < 1000; a spin's ~5000


ALONE = r"""
import json, resource, signal, subprocess, sys, time
from mmapipc import Reader, Student
exe, path, learn, measured, period, kick, idle_gap = sys.argv[1:]
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
gap = float(idle_gap)
with Reader[Student](path, idle_gap=gap, max_gap=min(gap, 0.001)) as r:
    writer = subprocess.Popen([exe, path, str(int(learn) + int(measured) + 1), period])
    ids = [r.wait_for_change(20).id for _ in range(int(learn))]
    if float(kick):
        signal.signal(signal.SIGALRM, lambda *a: None)
        signal.setitimer(signal.ITIMER_REAL, float(kick), float(kick))
    c0, t0, before = cpu(), time.monotonic(), r.stats["readied"]
    each = []   # per change: (looks, readied) since the change before
    for _ in range(int(measured)):
        polls, readied = r.stats["polls"], r.stats["readied"]
        ids.append(r.wait_for_change(20).id)
        each.append((r.stats["polls"] - polls, r.stats["readied"] - readied))
    share = (cpu() - c0) / (time.monotonic() - t0)
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    print(json.dumps({"ids": ids, "share": share, "readied": r.stats["readied"] - before,
                      "each": each,
                      "rc": writer.wait(20)}))
"""


def alone(build_c: Any, shared: Path, tmp_path: Path, measured: int, kick: float = 0,
          idle_gap: float = 0.01) -> Any:
    """Run a wait alone in its process (a Python child, Reader(idle_gap=idle_gap)) on
    SLEEPY_WRITER writing every PERIOD_NS; after LEARN changes, take measured more with
    SIGALRM every kick seconds (0: none)."""
    exe = sleepy_writer(shared, build_c)
    script = tmp_path / "alone.py"
    script.write_text(ALONE)
    out = subprocess.run([sys.executable, str(script), str(exe), str(shared), str(LEARN),
                          str(measured), str(PERIOD_NS), str(kick), str(idle_gap)],
                         capture_output=True, text=True, timeout=PATIENCE)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["ids"] == list(range(1, LEARN + measured + 1)) and got["rc"] == 0, got
    return got


def test_a_wait_alone_is_readied_once_each_window(
        shared: Path, build_c: Any, tmp_path: Path) -> None:
    """Each window spun through is met ready (MMAPIPC_DUE once, 0.5 ms before it).  The
    look before the window, planned by the bound in force (a look every idle_gap), may
    land inside those 0.5 ms: no room was left there to hand back, and the window was
    spun through cold (at any idle_gap, now and then; at idle_gap=0.5 ms, always); so
    was it when a wait carrying on (MMAPIPC_WAIT_RESUME) slept straight to its look."""
    got = alone(build_c, shared, tmp_path, 6, 0, 0.0005)
    assert got["readied"] >= 2, got   # 5-6 here; before, none could be: no room was left


def test_a_signal_cutting_the_ready_sleep_short_does_not_start_the_spin(
        shared: Path, build_c: Any, tmp_path: Path) -> None:
    """The hand-back before a window is planned up to idle_gap (0.1 s here) ahead; a
    signal whose handler returns (SIGALRM every 130 ms) cuts that sleep short.  The wait
    then goes on to spin through the window only: not from the signal on (the same for
    another thread waiting on the Reader meanwhile), which was ~100 times the looks of a
    window spun through."""
    got = alone(build_c, shared, tmp_path, 4, 0.13, 0.1)
    assert got["readied"] >= 1, got
    assert max(looks for looks, _ in got["each"]) < 10 * SPUN, got


INTERRUPTED = r"""
import json, signal, subprocess, sys, time
from mmapipc import Reader, Student
exe, path, learn, period = sys.argv[1:]

class Stop(Exception):
    pass

def stop(*_):
    raise Stop

signal.signal(signal.SIGALRM, stop)
with Reader[Student](path) as r:
    writer = subprocess.Popen([exe, path, learn, period])
    for _ in range(int(learn)):
        r.wait_for_change(20)
    before = r.stats["readied"]
    signal.setitimer(signal.ITIMER_REAL, int(period) / 1e9 - 0.0001)   # in the next window
    try:
        r.wait_for_change(20)
        got = "a change"
    except Stop:
        got = "stopped"
    print(json.dumps({"got": got, "readied": r.stats["readied"] - before,
                      "rc": writer.wait(20)}))
"""


def test_a_signal_during_a_spin_is_handled_when_the_window_ends(
        shared: Path, build_c: Any, tmp_path: Path) -> None:
    """A wait alone in its process, its writer gone after its last store: a signal (its
    handler raises) comes while the wait spins through the window where the next store was
    due.  The spin makes no system call the signal could cut short: the wait hands back
    when the window ends, so that the handler runs then, not a period later (at the next
    window's hand-back: a second one readied) or at the next change."""
    exe = sleepy_writer(shared, build_c)
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED)
    out = subprocess.run([sys.executable, str(script), str(exe), str(shared), str(LEARN + 2),
                          str(PERIOD_NS)], capture_output=True, text=True, timeout=PATIENCE)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["got"] == "stopped" and got["rc"] == 0 and got["readied"] <= 1, got


def test_a_file_truncated_while_the_wait_spins_is_a_clean_error(
        shared: Path, build_c: Any) -> None:
    """The writer stops after its fifth store and the file is cut to 0 bytes just before
    the sixth was due, while the wait spins through that window (readied): the wait ends
    with FileTooShortError, no SIGBUS, no record made of the zeros past the end."""
    exe = sleepy_writer(shared, build_c)
    with Reader[Student](shared) as r:
        writer = subprocess.Popen([str(exe), str(shared), str(LEARN + 1), str(PERIOD_NS)])
        try:
            ids = [r.wait_for_change(PATIENCE).id for _ in range(LEARN + 1)]
            cut = threading.Timer(PERIOD_NS / 1e9 - 0.0003, os.truncate, (shared, 0))
            cut.start()
            with pytest.raises(FileTooShortError):
                r.wait_for_change(PATIENCE)
            cut.join()
        finally:
            assert writer.wait(PATIENCE) == 0
    assert ids == list(range(1, LEARN + 2)), ids
