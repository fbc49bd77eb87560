"""A busy wait alone in its process hands back to Python every MMAPIPC_WARM_NS to take the
path of a change (a read, a decode): what it must not cost, whatever lands meanwhile."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_watch import PATIENCE

from mmapipc import Reader, Student

INTERRUPTED = r"""
import json, random, signal, sys, time
from pathlib import Path
from mmapipc import Reader, Student
path = Path(sys.argv[1])
signal.signal(signal.SIGALRM, signal.default_int_handler)   # a Ctrl-C, at a chosen time
interrupted = returned = 0
with Reader[Student](path, busy=True) as r:
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        try:
            signal.setitimer(signal.ITIMER_REAL, random.uniform(60e-6, 400e-6))
            r.wait_for_change(timeout=0.005)
            returned += 1
        except KeyboardInterrupt:
            interrupted += 1
        except TimeoutError:
            pass
        signal.setitimer(signal.ITIMER_REAL, 0)
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
