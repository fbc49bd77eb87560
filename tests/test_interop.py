"""Python and C, as separate processes running at once on one MAP_SHARED file.

The C programs are the twins of mmap_w and mmap_r, compiled for this run.  Lines are
matched by id (never by position), since the processes are not in lockstep.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import read_line, start_cli

from mmapipc import Reader, Student, Writer

LINE = re.compile(rb"id=(-?\d+)\tname=(.*)\t(.)\n", re.S)
NAMES = {
    "ascii": b"xiaoming",
    "utf8": "\u5c0f\u660e".encode(),
    "not-utf8": b"caf\xe9\xff",
}
Procs = list[subprocess.Popen[bytes]]


def expected_line(id_: int, name: bytes, sex: bytes) -> bytes:
    """printf("id=%d\\tname=%s\\t%c\\n") for a name that has its NUL."""
    return b"id=" + str(id_).encode() + b"\tname=" + name + b"\t" + sex + b"\n"


def split_lines(out: bytes) -> list[bytes]:
    lines = out.splitlines(keepends=True)
    assert lines and all(line.endswith(b"\n") for line in lines), out
    return lines


def by_id(out: bytes) -> dict[int, set[bytes]]:
    """The lines of a reader's output, grouped by the id they show."""
    seen: dict[int, set[bytes]] = {}
    for line in split_lines(out):
        m = LINE.fullmatch(line)
        assert m, f"not mmap_r's line format: {line!r}"
        seen.setdefault(int(m.group(1)), set()).add(line)
    return seen


def ids_in_order(out: bytes) -> list[int]:
    return [int(m.group(1)) for m in map(LINE.fullmatch, split_lines(out)) if m]


def wait_for_record(path: Path, sex: bytes, timeout: float = 20) -> None:
    """Until the file holds a record that a writer has stored (its sex byte is set)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        if len(data) == 28 and data[24:25] == sex:
            return
        assert time.monotonic() < deadline, f"no record from the writer in {path}"
        time.sleep(0.01)


def finish(proc: subprocess.Popen[bytes], timeout: float = 30) -> bytes:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (proc.args, proc.returncode, err)
    assert err == b"", err
    return out


def c_writer(peers: dict[str, Path], path: Path, name: bytes, id_: int, sex: bytes,
             interval_ms: int, count: int = 0) -> subprocess.Popen[bytes]:
    args: list[str | bytes] = [
        str(peers["mmap_w"]), str(path), str(count), str(interval_ms), name, str(id_), sex,
    ]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def c_reader(peers: dict[str, Path], path: Path, count: int,
             interval_ms: int) -> subprocess.Popen[bytes]:
    """mmap_r with a COUNT, so that its block-buffered stdout is flushed when it exits."""
    return subprocess.Popen(
        [str(peers["mmap_r"]), str(path), str(count), str(interval_ms)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def compare_readers(py_out: bytes, c_out: bytes, name: bytes, sex: bytes) -> None:
    """Both outputs are mmap_r's lines for this record; the same id prints the same bytes."""
    py, c = by_id(py_out), by_id(c_out)
    for seen in (py, c):
        for id_, lines in seen.items():
            assert lines == {expected_line(id_, name, sex)}
    common = sorted(set(py) & set(c))
    assert common, f"the readers saw no id in common: python {sorted(py)}, C {sorted(c)}"
    for id_ in common:
        assert py[id_] == c[id_]
    for out in (py_out, c_out):
        order = ids_in_order(out)
        assert order == sorted(order), "ids went backwards"


@pytest.mark.parametrize("name", list(NAMES.values()), ids=list(NAMES))
def test_c_writer_read_by_cli_and_by_c_reader(
    peers: dict[str, Path], shared: Path, procs: Procs, name: bytes
) -> None:
    """mmap_w runs; `mmapipc read` and mmap_r read it at once and print identical bytes."""
    writer = c_writer(peers, shared, name, 1000, b"f", interval_ms=200)
    procs.append(writer)
    wait_for_record(shared, b"f")
    py = start_cli("read", shared, "--interval", "0.05", "--count", "20")
    procs.append(py)
    head = read_line(py)  # the Python reader is running: start the C one beside it
    c = c_reader(peers, shared, count=10, interval_ms=50)
    procs.append(c)
    c_out = finish(c)
    py_out = head + finish(py)
    assert writer.poll() is None, "the C writer must run during the whole read"
    compare_readers(py_out, c_out, name, b"f")
    assert len(by_id(py_out)) >= 2, "the Python reader should see the writer's id move"
    assert min(by_id(py_out)) >= 1000


@pytest.mark.parametrize("name", list(NAMES.values()), ids=list(NAMES))
def test_c_writer_read_by_reader_in_process(
    peers: dict[str, Path], shared: Path, procs: Procs, name: bytes
) -> None:
    writer = c_writer(peers, shared, name, -20, b"x", interval_ms=50)
    procs.append(writer)
    wait_for_record(shared, b"x")
    with Reader[Student](shared) as r:
        first = r.read()
        changed = r.wait_for_change(timeout=20)
        later = [r.read() for _ in range(3)]
    assert writer.poll() is None
    for s in (first, changed, *later):
        assert s.name_bytes == name and s.sex_byte == b"x"
        assert s.name == name.decode("utf-8", "surrogateescape")
        assert s.id >= -20
    assert changed.id > first.id
    assert [s.id for s in later] == sorted(s.id for s in later)
    assert later[0].id >= changed.id


@pytest.mark.parametrize("name", list(NAMES.values()), ids=list(NAMES))
def test_c_writer_read_as_json(
    peers: dict[str, Path], shared: Path, procs: Procs, name: bytes
) -> None:
    writer = c_writer(peers, shared, name, 7, b"f", interval_ms=50)
    procs.append(writer)
    wait_for_record(shared, b"f")
    out = finish(start_cli("read", shared, "--json", "--count", "4", "--interval", "0.05"))
    assert writer.poll() is None
    rows = [json.loads(line) for line in split_lines(out)]
    assert len(rows) == 4
    for row in rows:
        assert set(row) == {"id", "name", "sex"}
        assert isinstance(row["id"], int) and row["id"] >= 7
        assert row["name"] == name.decode("utf-8", "surrogateescape")
        assert row["name"].encode("utf-8", "surrogateescape") == name
        assert row["sex"] == "f"
    ids = [row["id"] for row in rows]
    assert ids == sorted(ids)


@pytest.mark.parametrize("name", list(NAMES.values()), ids=list(NAMES))
def test_cli_writer_read_by_c_reader_and_by_cli(
    peers: dict[str, Path], shared: Path, procs: Procs, name: bytes
) -> None:
    """`mmapipc write` runs; mmap_r and `mmapipc read` read it at once, byte for byte."""
    writer = start_cli("write", shared, "--id", "500", "--name", name, "--sex", "w",
                       "--interval", "0.2")
    procs.append(writer)
    wait_for_record(shared, b"w")
    py = start_cli("read", shared, "--interval", "0.05", "--count", "20")
    procs.append(py)
    head = read_line(py)
    c = c_reader(peers, shared, count=10, interval_ms=50)
    procs.append(c)
    c_out = finish(c)
    py_out = head + finish(py)
    assert writer.poll() is None, "the Python writer must run during the whole read"
    compare_readers(py_out, c_out, name, b"w")
    assert min(by_id(c_out)) >= 500


@pytest.mark.parametrize("name", list(NAMES.values()), ids=list(NAMES))
def test_writer_in_process_read_by_c_reader(
    peers: dict[str, Path], shared: Path, procs: Procs, name: bytes
) -> None:
    """Writer stores a new record every 20 ms while mmap_r prints 8 lines, 50 ms apart."""
    with Writer[Student](shared) as w:
        i = 1
        w.write(Student(i, name, "q"))
        c = c_reader(peers, shared, count=8, interval_ms=50)
        procs.append(c)
        while c.poll() is None:
            i += 1
            w.write(Student(i, name, "q"))
            time.sleep(0.02)
    out = finish(c)
    seen = by_id(out)
    assert sum(len(lines) for lines in seen.values()) <= 8
    assert len(split_lines(out)) == 8
    for id_, lines in seen.items():
        assert 1 <= id_ <= i
        assert lines == {expected_line(id_, name, b"q")}
    assert len(seen) >= 2, "mmap_r should see the records change while it runs"
    order = ids_in_order(out)
    assert order == sorted(order)


def test_full_name_from_c_writer(peers: dict[str, Path], shared: Path, procs: Procs) -> None:
    """A 20-byte name has no NUL: mmap_r's %s runs on into sex; `mmapipc read` does too."""
    name = b"ABCDEFGHIJKLMNOPQRST"
    writer = c_writer(peers, shared, name, 3, b"z", interval_ms=5000, count=2)
    procs.append(writer)
    wait_for_record(shared, b"z")
    # %s goes on through non-zero padding too (see the next test); this twin zeroes it.
    assert shared.read_bytes()[25:] == b"\0\0\0", "mmap_w's padding is not zero here"
    py = start_cli("read", shared, "--count", "1")
    c = c_reader(peers, shared, count=1, interval_ms=0)
    procs.extend([py, c])
    py_out, c_out = finish(py), finish(c)
    assert writer.poll() is None
    assert c_out == py_out == b"id=3\tname=" + name + b"z\tz\n"


def test_full_name_with_garbage_padding(peers: dict[str, Path], shared: Path) -> None:
    """The original mmap_w left stack garbage in the padding (seen: 9f 27 2e)."""
    raw = (5).to_bytes(4, sys.byteorder) + b"A" * 20 + b"z" + b"\x9f\x27\x2e"
    with Writer[Student](shared, seqlock=False) as w:
        w.write_bytes(raw)
    c_out = finish(c_reader(peers, shared, count=1, interval_ms=0))
    py_out = finish(start_cli("read", shared, "--count", "1"))
    assert c_out == b"id=5\tname=" + b"A" * 20 + b"z\x9f\x27\x2e\tz\n"
    assert py_out == c_out
