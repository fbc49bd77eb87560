"""mmapipc demo: writers and readers in separate processes, Python and C, talking at once."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mmapipc.peers import CompilerError, build_peer, find_compiler
from mmapipc.record import RECORD_SIZE

WRITE_INTERVAL = 0.5
READ_INTERVAL = 1.0
PY = [sys.executable, "-m", "mmapipc"]


@dataclass
class Pairing:
    """One writer process and one reader process on one file."""

    label: str
    writer: list[str]
    reader: list[str]
    path: Path
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    output_gone: bool = False


def _wait_for_record(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if path.stat().st_size >= RECORD_SIZE:
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    return False


def _last_line(err: bytes) -> str:
    """The last line a child said on stderr (its error, not a whole traceback)."""
    lines = err.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else "(nothing on stderr)"


def _run(p: Pairing, out: IO[str], lock: threading.Lock) -> None:
    # Children run in the scratch directory with a safe path, so `python -m mmapipc` finds
    # the installed package even when the demo is started from a source checkout.
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    writer = subprocess.Popen(p.writer, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              cwd=p.path.parent, env=env)
    try:
        if not _wait_for_record(p.path, 5.0):
            p.problems.append("the writer did not create its record")
            return
        reader = subprocess.Popen(p.reader, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  cwd=p.path.parent, env=env)
        assert reader.stdout is not None
        for raw_bytes in reader.stdout:  # lines as they come (the C reader's at its exit)
            raw = raw_bytes.decode("utf-8", "backslashreplace").rstrip("\n")
            p.lines.append(raw)
            with lock:
                try:
                    out.write(f"  [{p.label}] {raw.expandtabs(2)}\n")
                    out.flush()
                except BrokenPipeError:
                    p.output_gone = True
        _, rerr = reader.communicate(timeout=60)
        if reader.returncode != 0:
            p.problems.append(f"reader exited {reader.returncode}: {_last_line(rerr)}")
    finally:
        try:
            _, err = writer.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            writer.kill()
            _, err = writer.communicate()
        if writer.returncode not in (0, None):
            p.problems.append(f"writer exited {writer.returncode}: {_last_line(err)}")


def _pairings(tmp: Path, seconds: float, cdir: Path | None) -> list[Pairing]:
    writes = max(2, round(seconds / WRITE_INTERVAL))
    reads = max(1, round(seconds / READ_INTERVAL))
    w_args = ["--interval", str(WRITE_INTERVAL), "--count", str(writes)]
    r_args = ["--interval", str(READ_INTERVAL), "--count", str(reads)]
    ms_w, ms_r = str(int(WRITE_INTERVAL * 1000)), str(int(READ_INTERVAL * 1000))
    f1, f2, f3 = tmp / "py-py.shared", tmp / "py-c.shared", tmp / "c-py.shared"
    result = [
        Pairing(
            "python write -> python read",
            [*PY, "write", str(f1), *w_args],
            [*PY, "read", str(f1), *r_args],
            f1,
        ),
    ]
    if cdir is not None:
        mmap_w, mmap_r = str(cdir / "mmap_w"), str(cdir / "mmap_r")
        result.append(
            Pairing(
                "python write -> C mmap_r   ",
                [*PY, "write", str(f2), "--id", "100", *w_args],
                [mmap_r, str(f2), str(reads), ms_r],
                f2,
            )
        )
        result.append(
            Pairing(
                "C mmap_w -> python read    ",
                [mmap_w, str(f3), str(writes), ms_w, "xiaoming", "1000"],
                [*PY, "read", str(f3), *r_args],
                f3,
            )
        )
    return result


def run_demo(seconds: float, out: IO[str]) -> int:
    """Run the pairings side by side for about `seconds`; 0 if every reader heard its writer."""
    with tempfile.TemporaryDirectory(prefix="mmapipc-demo-") as name:
        tmp = Path(name)
        cdir: Path | None = tmp / "bin"
        cc = find_compiler()
        note = ""
        try:
            if cc is None:
                raise CompilerError("no C compiler found")
            os.mkdir(tmp / "bin")
            build_peer("mmap_w", tmp / "bin", cc)
            build_peer("mmap_r", tmp / "bin", cc)
            note = f"C twins of mmap_w and mmap_r built with {cc}"
        except CompilerError as e:
            cdir = None
            note = f"{e}: showing Python to Python only"
        pairings = _pairings(tmp, seconds, cdir)
        out.write(
            f"mmapipc demo: {len(pairings)} writer/reader pairs, separate processes, "
            f"{seconds:g} s each, side by side\n  ({note}; files in {tmp})\n"
            f"  writers write every {WRITE_INTERVAL:g} s with id+1, "
            f"readers print every {READ_INTERVAL:g} s, as mmap_r does\n"
        )
        out.flush()
        lock = threading.Lock()
        threads = [threading.Thread(target=_run, args=(p, out, lock)) for p in pairings]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if any(p.output_gone for p in pairings):
            raise BrokenPipeError(32, "Broken pipe")
        failed = [p for p in pairings if p.problems or not p.lines]
        for p in failed:
            for problem in p.problems or ["the reader printed nothing"]:
                out.write(f"mmapipc demo: [{p.label.strip()}] {problem}\n")
        if failed:
            return 1
        out.write("mmapipc demo: every reader printed its writer's records.\n")
        return 0
