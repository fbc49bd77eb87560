"""Writer and Reader in one process, the file's bytes, and the loops of mmap_w and mmap_r."""

from __future__ import annotations

import io
import itertools
import json
import os
import stat
import struct
import sys
from pathlib import Path

import pytest

import mmapipc
from mmapipc import RECORD_SIZE, Reader, Student, Writer, read_loop, write_loop
from mmapipc.loops import json_line, next_student

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
MARKER = 0xA6  # a sequence lock, and a writer that wakes its waiters


def file_bytes(path: Path) -> bytes:
    return path.read_bytes()


def seq_of(data: bytes) -> int:
    """The writer's 16-bit sequence, native-endian, in padding bytes 26-27."""
    return int.from_bytes(data[26:28], sys.byteorder)


def test_contract_names() -> None:
    assert mmapipc.RECORD_SIZE == RECORD_SIZE == 28
    for name in ("Student", "Writer", "Reader", "write_loop", "read_loop"):
        assert name in mmapipc.__all__ and hasattr(mmapipc, name)


def test_context_managers_and_idempotent_close(shared: Path) -> None:
    with Writer[Student](shared) as w:
        assert isinstance(w, Writer) and not w.closed
        w.write(Student(1, "a", "m"))
        with Reader[Student](shared) as r:
            assert isinstance(r, Reader) and not r.closed
            assert r.read() == Student(1, "a", "m")
        assert r.closed
    assert w.closed
    w.close()
    w.close()
    r.close()
    r.close()
    assert w.closed and r.closed


def test_context_manager_closes_on_error(shared: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with Writer[Student](shared) as w:
            w.write(Student(1, "a", "m"))
            raise RuntimeError("boom")
    assert w.closed
    with pytest.raises(RuntimeError, match="boom"):
        with Reader[Student](shared) as r:
            raise RuntimeError("boom")
    assert r.closed


def test_use_after_close_raises_value_error(shared: Path) -> None:
    w = Writer[Student](shared)
    w.write(Student(1, "a", "m"))
    r = Reader[Student](shared)
    w.close()
    r.close()
    with pytest.raises(ValueError, match="closed"):
        w.write(Student(2, "a", "m"))
    with pytest.raises(ValueError, match="closed"):
        w.write_bytes(bytes(RECORD_SIZE))
    with pytest.raises(ValueError, match="closed"):
        w.flush()
    with pytest.raises(ValueError, match="closed"):
        r.read()
    with pytest.raises(ValueError, match="closed"):
        r.raw_bytes()
    with pytest.raises(ValueError, match="closed"):
        r.wait_for_change(timeout=0)
    assert Student.from_bytes(file_bytes(shared)) == Student(1, "a", "m")


def test_file_after_a_python_write(shared: Path) -> None:
    """28 bytes: int32 id at 0, NUL-filled name at 4, sex at 24 (seqlock=False: zero pad)."""
    old = os.umask(0)
    try:
        with Writer[Student](shared, seqlock=False) as w:
            w.write(Student(-123456, "xiaoming", "m"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o664  # mmap_w's mode
    data = file_bytes(shared)
    assert len(data) == 28
    assert struct.unpack("=i20sc3x", data) == (-123456, b"xiaoming" + bytes(12), b"m")
    assert data[0:4] == (-123456).to_bytes(4, sys.byteorder, signed=True)
    assert data[4:24] == b"xiaoming".ljust(20, b"\0")
    assert data[24:25] == b"m"
    assert data[25:28] == b"\0\0\0"


def test_plain_writer_zeroes_padding_left_by_a_seqlock_writer(shared: Path) -> None:
    with Writer[Student](shared) as w:
        w.write(Student(1, "a", "m"))
    assert file_bytes(shared)[25] == MARKER
    with Writer[Student](shared, seqlock=False) as w:
        w.write(Student(2, "bb", "f"))
    assert file_bytes(shared) == Student(2, "bb", "f").to_bytes()


def test_seqlock_in_the_padding(shared: Path) -> None:
    """The default Writer keeps a sequence lock in the padding, which C readers ignore:
    byte 25 holds the marker 0xA5 and bytes 26-27 a native-endian 16-bit sequence that is
    even between writes and grows by 2 per write (odd while a write is in progress).
    A new Writer on the same file carries on from the sequence it finds.
    """
    seqs = []
    with Writer[Student](shared) as w:
        for i in range(5):
            w.write(Student(i, "n", "m"))
            data = file_bytes(shared)
            assert data[25] == MARKER
            assert data[:25] == Student(i, "n", "m").to_bytes()[:25]
            seqs.append(seq_of(data))
    assert all(s % 2 == 0 for s in seqs)
    assert [b - a for a, b in itertools.pairwise(seqs)] == [2, 2, 2, 2]
    with Writer[Student](shared) as w:
        w.write(Student(9, "n", "m"))
    assert seq_of(file_bytes(shared)) == (seqs[-1] + 2) % 65536
    with Reader[Student](shared) as r:
        assert r.read() == Student(9, "n", "m")  # the lock bytes are not part of the record
        assert r.read_bytes() == Student(9, "n", "m").to_bytes()
        assert r.raw_bytes() == file_bytes(shared)


def test_seqlock_wraps_at_16_bits(shared: Path) -> None:
    """The sequence wraps modulo 65536 and stays even."""
    rec = Student(1, "n", "m")
    with Writer[Student](shared) as w:
        w.write(rec)
        start = seq_of(file_bytes(shared))
        n = 32770
        for _ in range(n):
            w.write(rec)
    end = seq_of(file_bytes(shared))
    assert end == (start + 2 * n) % 65536 and end % 2 == 0


def test_reader_sees_each_write(shared: Path) -> None:
    with Writer[Student](shared) as w, Reader[Student](shared) as r:
        for i, name in enumerate(["a", "\u5c0f\u660e", "x" * 19, "caf\udce9"]):
            s = Student(i - 2, name, "f")
            w.write(s)
            got = r.read()
            assert got == s and got.name == name and got.id == i - 2
        with pytest.raises(TimeoutError):
            r.wait_for_change(timeout=0.01)
        w.write(Student(100, "z", "m"))
        assert r.wait_for_change(timeout=5) == Student(100, "z", "m")


def test_write_bytes_checks_length(shared: Path) -> None:
    with Writer[Student](shared, seqlock=False) as w:
        with pytest.raises(ValueError, match="28"):
            w.write_bytes(bytes(27))
        raw = struct.pack("=i20sc3x", 5, b"caf\xe9\xff", b"\xfe")
        w.write_bytes(raw)
    assert file_bytes(shared) == raw
    with Reader[Student](shared) as r:
        s = r.read()
    assert s.name_bytes == b"caf\xe9\xff" and s.sex_byte == b"\xfe" and s.id == 5


def test_write_loop_with_count(shared: Path) -> None:
    last = write_loop(shared, Student(1, "loop", "m"), interval=0.01, count=3)
    assert last == Student(3, "loop", "m")
    assert Student.from_bytes(file_bytes(shared)) == last
    assert len(file_bytes(shared)) == 28


def test_write_loop_default_record(shared: Path) -> None:
    assert write_loop(shared, count=1) == Student(10, "xiaoming", "m")
    assert file_bytes(shared)[:25] == Student(10, "xiaoming", "m").to_bytes()[:25]


def test_int32_wraparound() -> None:
    assert next_student(Student(INT32_MAX, "a", "m")) == Student(INT32_MIN, "a", "m")
    assert next_student(Student(-1, "a", "m")) == Student(0, "a", "m")
    assert next_student(Student(41, "a", "m")) == Student(42, "a", "m")


def test_write_loop_wraps_like_c_int(shared: Path) -> None:
    """mmap_w's id++ on an int: 2147483646, 2147483647, -2147483648, -2147483647."""
    written: list[int] = []

    def step(s: Student) -> Student:
        written.append(s.id)
        return next_student(s)

    last = write_loop(shared, Student(INT32_MAX - 1, "w", "m"), interval=0, count=4, step=step)
    assert written == [INT32_MAX - 1, INT32_MAX, INT32_MIN, INT32_MIN + 1]
    assert last.id == INT32_MIN + 1
    assert file_bytes(shared)[:4] == struct.pack("=i", INT32_MIN + 1)
    last = write_loop(shared, Student(INT32_MAX, "w", "m"), interval=0, count=2)
    assert last.id == INT32_MIN
    assert file_bytes(shared)[:4] == struct.pack("=i", INT32_MIN)


def test_read_loop_bytes_out(shared: Path) -> None:
    with Writer[Student](shared) as w:
        w.write(Student(7, b"caf\xe9\xff", "f"))
        out = io.BytesIO()
        assert read_loop(shared, interval=0.01, count=3, out=out) == 3
    assert out.getvalue() == b"id=7\tname=caf\xe9\xff\tf\n" * 3


def test_read_loop_text_out(shared: Path) -> None:
    write_loop(shared, Student(8, "\u5c0f\u660e", "m"), count=1)
    out = io.StringIO()
    assert read_loop(shared, interval=0.01, count=2, out=out) == 2
    assert out.getvalue() == "id=8\tname=\u5c0f\u660e\tm\n" * 2


def test_read_loop_json(shared: Path) -> None:
    write_loop(shared, Student(9, "caf\udce9", "m"), count=1)
    out = io.BytesIO()
    assert read_loop(shared, interval=0, count=2, out=out, format=json_line) == 2
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows == [{"id": 9, "name": "caf\udce9", "sex": "m"}] * 2


@pytest.mark.parametrize(("interval", "count"), [(-1.0, 1), (float("nan"), 1), (0.0, 0)])
def test_loops_reject_bad_arguments(shared: Path, interval: float, count: int) -> None:
    with pytest.raises(ValueError):
        write_loop(shared, interval=interval, count=count)
    assert not shared.exists()
    Writer(shared).close()
    with pytest.raises(ValueError):
        read_loop(shared, interval=interval, count=count, out=io.BytesIO())


def test_errors_carry_errno_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError) as info:
        Reader(missing)
    assert info.value.filename == str(missing)
    with pytest.raises(FileNotFoundError) as info:
        Writer(tmp_path / "no" / "such")
    assert info.value.filename == str(tmp_path / "no" / "such")
    with pytest.raises(IsADirectoryError):
        Writer(tmp_path)
    with pytest.raises(OSError) as dir_info:
        Reader(tmp_path)
    assert dir_info.value.filename == str(tmp_path)
    short = tmp_path / "short"
    short.write_bytes(b"x")
    with pytest.raises(mmapipc.FileTooShortError):
        Reader(short)
    long = tmp_path / "long"
    long.write_bytes(bytes(100))
    with pytest.raises(mmapipc.WouldShrinkError):
        Writer(long)
    assert long.stat().st_size == 100
    Writer(long, force=True).close()
    assert long.stat().st_size == 28
