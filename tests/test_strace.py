"""Under strace, our writer and reader make the system calls of the C twins on the file.

Only the calls on the shared file are compared: its open, then ftruncate, mmap and close
of the descriptor that open returned, and munmap of the address that mmap returned.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

STRACE = shutil.which("strace") or next(
    (p for p in ("/usr/bin/strace", "/usr/sbin/strace", "/usr/local/bin/strace")
     if os.access(p, os.X_OK)),
    None,
)
pytestmark = pytest.mark.skipif(
    STRACE is None, reason="strace cannot be found (install it to compare system calls)"
)

TRACED = "?open,openat,ftruncate,mmap,munmap,close"
CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\w+)")
# Open flags that we add to the C programs' flags, on purpose.
WRITER_EXTRA = {"O_CLOEXEC", "O_NOFOLLOW"}  # no descriptor leak; no writing through a link
READER_EXTRA = {"O_CLOEXEC", "O_NONBLOCK"}  # no descriptor leak; no hang on a FIFO


@dataclass(frozen=True)
class Call:
    pid: str
    name: str
    args: tuple[str, ...]
    result: str


def split_args(text: str) -> tuple[str, ...]:
    """Split strace's argument list at top-level commas (strings may hold commas)."""
    args, cur, quoted, escaped = [], "", False, False
    for ch in text:
        if quoted:
            cur += ch
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
            cur += ch
        elif ch == ",":
            args.append(cur.strip())
            cur = ""
        else:
            cur += ch
    args.append(cur.strip())
    return tuple(args)


def parse(trace: str) -> list[Call]:
    """strace -f output as calls, with <unfinished ...>/<... resumed> pieces joined."""
    pending: dict[str, str] = {}
    calls = []
    for raw in trace.splitlines():
        pid, _, rest = raw.partition(" ")
        rest = rest.strip()
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[: -len("<unfinished ...>")].rstrip()
            continue
        resumed = re.match(r"<\.\.\. \w+ resumed>(.*)$", rest)
        if resumed:
            rest = pending.pop(pid, "") + resumed.group(1)
        m = CALL.match(f"{pid} {rest}")
        if m:
            calls.append(Call(m.group(1), m.group(2), split_args(m.group(3)), m.group(4)))
    return calls


def flags(arg: str) -> frozenset[str]:
    return frozenset(arg.split("|"))


def opened_path(c: Call) -> str | None:
    if c.name == "openat":
        return c.args[1]
    if c.name == "open":
        return c.args[0]
    return None


def file_calls(calls: list[Call], path: Path) -> list[tuple[object, ...]]:
    """The calls on path, normalised: descriptor and address left out, flags as sets."""
    quoted = f'"{path}"'
    # The writer walks the path with O_PATH descriptors and opens the file relative to
    # its directory: openat(dirfd, "name", ...).
    named = f'"{path.name}"'
    opens = [i for i, c in enumerate(calls)
             if opened_path(c) == quoted
             or (opened_path(c) == named and "O_PATH" not in c.args[2])]
    assert len(opens) == 1, f"expected one open of {path}: {[calls[i] for i in opens]}"
    start = opens[0]
    op = calls[start]
    assert int(op.result) >= 0, f"open failed: {op}"
    fd, pid = op.result, op.pid
    rest = op.args[1:] if op.name == "openat" else op.args
    assert op.name in ("open", "openat")
    out: list[tuple[object, ...]] = [
        ("open", flags(rest[1]), rest[2] if len(rest) > 2 else None)
    ]
    addr = None
    closed = False
    for c in calls[start + 1:]:
        if c.pid != pid:
            continue
        if not closed and c.name == "ftruncate" and c.args[0] == fd:
            out.append(("ftruncate", c.args[1], c.result))
        elif not closed and c.name == "mmap" and c.args[4] == fd:
            addr = c.result
            out.append(("mmap", c.args[0], c.args[1], flags(c.args[2]), flags(c.args[3]),
                        c.args[5]))
        elif not closed and c.name == "close" and c.args[0] == fd:
            out.append(("close", c.result))
            closed = True
        elif addr is not None and c.name == "munmap" and c.args[0] == addr:
            out.append(("munmap", c.args[1], c.result))
    return out


def strace(tmp: Path, label: str, *cmd: str) -> list[Call]:
    assert STRACE is not None
    log = tmp / f"{label}.strace"
    proc = subprocess.run(
        [STRACE, "-f", "-qq", "-s", "4096", "-e", f"trace={TRACED}", "-o", str(log), *cmd],
        capture_output=True, timeout=60, cwd=tmp, check=False,
    )
    assert proc.returncode == 0, (cmd, proc.returncode, proc.stderr)
    return parse(log.read_text(errors="replace"))


PY = [sys.executable, "-m", "mmapipc"]


def kept_descriptor(py: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """Our calls after the open, with the descriptor's close put back where the originals
    make it: we keep it until after munmap, to ask the file whether it was truncated."""
    rest = py[1:]
    assert [c[0] for c in rest[-2:]] == ["munmap", "close"], rest
    return [*rest[:-2], rest[-1], rest[-2]]


def without(call: tuple[object, ...], extra: set[str]) -> tuple[object, ...]:
    name, fl, mode = call
    assert isinstance(fl, frozenset)
    return (name, fl - extra, mode)


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-file"])
def test_writer_calls_match_mmap_w(peers: dict[str, Path], tmp_path: Path, existing: bool) -> None:
    c_file, py_file = tmp_path / "c.bin", tmp_path / "py.bin"
    if existing:
        for f in (c_file, py_file):
            f.write_bytes(bytes(28))
    c = file_calls(strace(tmp_path, "c", str(peers["mmap_w"]), str(c_file), "1"), c_file)
    py = file_calls(strace(tmp_path, "py", *PY, "write", str(py_file), "--count", "1"), py_file)

    # What mmap_w does (the seed's program): checked so the comparison means something.
    assert c == [
        ("open", {"O_RDWR", "O_CREAT"}, "0664"),
        ("ftruncate", "28", "0"),
        ("mmap", "NULL", "28", {"PROT_READ", "PROT_WRITE"}, {"MAP_SHARED"}, "0"),
        ("close", "0"),
        ("munmap", "28", "0"),
    ]
    open_flags = py[0][1]
    assert isinstance(open_flags, frozenset)
    assert "O_CLOEXEC" in open_flags
    assert open_flags - flags("O_RDWR|O_CREAT") <= WRITER_EXTRA, open_flags
    assert [without(py[0], WRITER_EXTRA), *kept_descriptor(py)] == c


def test_reader_calls_match_mmap_r(peers: dict[str, Path], tmp_path: Path) -> None:
    shared = tmp_path / "shared.bin"
    subprocess.run([str(peers["mmap_w"]), str(shared), "1"], check=True, capture_output=True)
    c = file_calls(strace(tmp_path, "c", str(peers["mmap_r"]), str(shared), "1"), shared)
    py = file_calls(strace(tmp_path, "py", *PY, "read", str(shared), "--count", "1"), shared)

    assert c == [
        ("open", {"O_RDONLY"}, None),
        ("mmap", "NULL", "28", {"PROT_READ"}, {"MAP_SHARED"}, "0"),
        ("close", "0"),
        ("munmap", "28", "0"),
    ]
    open_flags = py[0][1]
    assert isinstance(open_flags, frozenset)
    assert "O_CLOEXEC" in open_flags
    assert open_flags - flags("O_RDONLY") <= READER_EXTRA, open_flags
    assert [without(py[0], READER_EXTRA), *kept_descriptor(py)] == c


def test_parse_joins_interrupted_calls() -> None:
    trace = (
        '12  openat(AT_FDCWD, "/a, b", O_RDONLY <unfinished ...>\n'
        "13  close(4)                          = 0\n"
        "12  <... openat resumed>)             = 5\n"
        "12  mmap(NULL, 28, PROT_READ, MAP_SHARED, 5, 0) = 0x7f00\n"
        "12  openat(AT_FDCWD, \"/x\", O_RDONLY) = -1 ENOENT (No such file or directory)\n"
    )
    calls = parse(trace)
    assert [c.name for c in calls] == ["close", "openat", "mmap", "openat"]
    assert calls[1] == Call("12", "openat", ("AT_FDCWD", '"/a, b"', "O_RDONLY"), "5")
    assert calls[3].result == "-1"
