"""The demo: C and Python lines shown live, and Ctrl-C or SIGTERM ends it all at once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import read_line

LINE = re.compile(r"^ *\d+\.\d\ds  (?P<label>.+?) *: (?P<text>.*)\n$")
LABELS = {"Python write -> Python read", "Python write -> C mmap_r", "C mmap_w -> Python read"}


def _default_signals() -> None:
    # Started from a background job of a shell, the tests inherit SIGINT ignored, and so
    # would the demo (Python then never raises KeyboardInterrupt): as a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "mmapipc", "demo", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, start_new_session=True, preexec_fn=_default_signals)


def _header(p: subprocess.Popen[bytes]) -> Path:
    """Read the three header lines; return the demo's scratch directory."""
    head = b"".join(read_line(p, timeout=60) for _ in range(3)).decode()
    found = re.search(r"files in (\S+)\)", head)
    assert found, head
    return Path(found.group(1))


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children(pid: int) -> dict[int, str]:
    """The children of pid, each with its start time (to tell it from a reused pid)."""
    kids = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and int(fields[1]) == pid:
                kids[int(entry.name)] = fields[19]
    return kids


def _running(pid: int, started: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


def test_c_and_python_lines_arrive_live_with_side_and_time(cc: str) -> None:
    """Every pairing's lines appear while the demo runs, the C mmap_r's too (not in one
    burst at its exit), each prefixed with the time and its pairing."""
    p = _start("--seconds", "30")
    try:
        _header(p)
        seen: dict[str, list[str]] = {}
        while any(len(seen.get(label, [])) < 2 for label in LABELS):
            line = read_line(p, timeout=60).decode()
            m = LINE.match(line)
            assert m, f"not a prefixed reader line: {line!r}"
            assert m["label"] in LABELS, line
            assert m["text"].startswith("id="), line
            seen.setdefault(m["label"], []).append(m["text"])
        assert p.poll() is None, "the lines came only when the demo ended"
        c_ids = [int(t.split()[0].removeprefix("id=")) for t in seen["Python write -> C mmap_r"]]
        assert c_ids == sorted(c_ids) and c_ids[0] >= 100, c_ids
    finally:
        _stop(p)


def _stop(p: subprocess.Popen[bytes]) -> None:
    """End the demo as a user would (SIGTERM: it stops its children and removes its files),
    then anything left in its process group (its own session)."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def _interrupt(sig: signal.Signals) -> None:
    p = _start("--seconds", "60")
    try:
        scratch = _header(p)
        read_line(p, timeout=60)  # a reader is running
        kids = _children(p.pid)
        assert len(kids) >= 2, kids
        sent = time.monotonic()
        p.send_signal(sig)
        status = p.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        if p.poll() is None:
            _stop(p)
    # A generous functional bound (the demo itself takes well under 0.5 s): not a benchmark.
    assert took < 2.0, f"the demo took {took:.2f} s to stop"
    assert p.stderr is not None
    err = p.stderr.read().decode()
    assert status == 128 + sig, (status, err)
    time.sleep(0.1)
    alive = [k for k, started in kids.items() if _running(k, started)]
    assert alive == [], f"children left running: {alive}"
    assert not scratch.exists(), f"{scratch} left behind"
    assert "Traceback" not in err, err

def test_ctrl_c_stops_the_demo_its_children_and_removes_its_files(cc: str) -> None:
    _interrupt(signal.SIGINT)


def test_sigterm_stops_the_demo_its_children_and_removes_its_files(cc: str) -> None:
    _interrupt(signal.SIGTERM)


def test_a_cc_that_is_not_found_is_named() -> None:
    """CC is honoured: one that does not exist is said, not quietly replaced by cc."""
    env = {**os.environ, "CC": "nosuchcc-mmapipc"}
    p = _start("--seconds", "0.5", env=env)
    out, err = p.communicate(timeout=60)
    text = out.decode()
    assert "CC=nosuchcc-mmapipc" in text and "not found" in text, text
    assert "C mmap_r" not in text, text
    assert p.returncode == 0, err
