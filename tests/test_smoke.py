"""Smoke test of the C layer: the compiled core agrees with Python on struct STU."""

from __future__ import annotations

import sys
from pathlib import Path

from mmapipc._ffi import ffi, lib
from mmapipc.record import OFFSETS, RECORD_SIZE, Student


def test_layout_from_the_compiler() -> None:
    assert ffi.sizeof("struct STU") == RECORD_SIZE == 28
    for field, offset in OFFSETS.items():
        assert ffi.offsetof("struct STU", field) == offset


def test_constants_filled_in_by_the_compiler() -> None:
    codes = [lib.MMAPIPC_EOS, lib.MMAPIPC_ENOTREG, lib.MMAPIPC_ESHRINK, lib.MMAPIPC_ESHORT,
             lib.MMAPIPC_EBUS, lib.MMAPIPC_EUNSTABLE, lib.MMAPIPC_ETIMEDOUT,
             lib.MMAPIPC_EINTR, lib.MMAPIPC_EREPLACED, lib.MMAPIPC_ELINKS]
    assert len(set(codes)) == len(codes) and all(c < 0 for c in codes)


def test_core_round_trip(tmp_path: Path) -> None:
    """Open, store and load through the raw C API."""
    path = str(tmp_path / "f").encode()
    w = ffi.gc(lib.mmapipc_new(RECORD_SIZE, 25, 26), lib.mmapipc_free)
    assert lib.mmapipc_guard_install() == 0
    assert lib.mmapipc_open(w, path, lib.MMAPIPC_WRITE) == 0
    data = Student(7, "core", "x").to_bytes()
    assert lib.mmapipc_store(w, data) == 0
    r = ffi.gc(lib.mmapipc_new(RECORD_SIZE, 25, 26), lib.mmapipc_free)
    out = ffi.new("char[]", RECORD_SIZE)
    assert lib.mmapipc_open(r, path, 0) == 0
    assert lib.mmapipc_load(r, out) == 1
    assert ffi.buffer(out)[:] == data
    assert lib.mmapipc_load(r, out) == 0  # unchanged
    assert lib.mmapipc_close(r) == 0 and lib.mmapipc_close(r) == 0
    assert lib.mmapipc_load(r, out) == lib.MMAPIPC_EOS  # closed: EBADF
    assert lib.mmapipc_close(w) == 0


def test_core_refuses_lock_offsets_that_cannot_hold_the_lock() -> None:
    for marker, seq in [(27, 26), (25, 27), (26, 26), (25, 24), (-1, 26), (28, 26)]:
        assert lib.mmapipc_new(RECORD_SIZE, marker, seq) == ffi.NULL, (marker, seq)
    ch = lib.mmapipc_new(RECORD_SIZE, -1, -1)
    assert ch != ffi.NULL
    lib.mmapipc_free(ch)


class _SeqThenMarker:
    """struct STU's codec with the lock bytes the other way round: seq at 25-26 would be
    unaligned, so use a 32-byte record with padding 24..31: seq at 26, marker at 28."""

    size: int = 32
    lock_offsets: tuple[int, int] | None = (28, 26)
    padding = ((24, 8),)

    def encode(self, record: bytes) -> bytes:
        return record

    def decode(self, data: bytes) -> bytes:
        return data


def test_lock_bytes_in_either_order(tmp_path: Path) -> None:
    """The core copies around the marker and sequence wherever they lie in the padding."""
    from mmapipc import Reader, Writer

    codec = _SeqThenMarker()
    record = bytes(range(1, 25)) + bytes(8)
    path = tmp_path / "f"
    with Writer(path, layout=codec) as w, Reader(path, layout=codec) as r:
        w.write(record)
        raw = path.read_bytes()
        assert raw[:24] == record[:24]
        assert raw[28] == lib.MMAPIPC_NOTIFY_MARKER
        seq = int.from_bytes(raw[26:28], sys.byteorder)
        assert seq % 2 == 0 and seq > 0
        assert r.read() == record
        before = r.stats
        w.write(bytes(range(2, 26)) + bytes(8))
        assert r.read() == bytes(range(2, 26)) + bytes(8)
        after = r.stats
        assert after["seqlock_reads"] > before["seqlock_reads"]
        assert after["fallback_reads"] == before["fallback_reads"]


def test_a_writers_channel_holds_no_reader_buffers_and_refuses_reads(tmp_path: Path) -> None:
    """Only a reader keeps copies of the record (three record sizes); a writer's channel
    refuses the reader's calls with EBADF instead of touching buffers it does not have."""
    import errno

    w = ffi.gc(lib.mmapipc_new(RECORD_SIZE, 25, 26), lib.mmapipc_free)
    assert lib.mmapipc_open(w, str(tmp_path / "f").encode(), lib.MMAPIPC_WRITE) == 0
    out = ffi.new("char[]", RECORD_SIZE)
    for rc in (lib.mmapipc_load(w, out), lib.mmapipc_poll(w), lib.mmapipc_wait(w, 1000, 0)):
        assert rc == lib.MMAPIPC_EOS
    assert ffi.errno == errno.EBADF
    assert lib.mmapipc_load_raw(w, out) == 0  # a raw copy needs no buffer of ours
