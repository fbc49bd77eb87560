"""Smoke test of the C layer: the compiled core agrees with Python on struct STU."""

from __future__ import annotations

from pathlib import Path

from mmapipc._ffi import ffi, lib
from mmapipc.record import OFFSETS, RECORD_SIZE, Student


def test_layout_from_the_compiler() -> None:
    assert ffi.sizeof("struct STU") == RECORD_SIZE == 28
    for field, offset in OFFSETS.items():
        assert ffi.offsetof("struct STU", field) == offset


def test_constants_filled_in_by_the_compiler() -> None:
    codes = [lib.MMAPIPC_EOS, lib.MMAPIPC_ENOTREG, lib.MMAPIPC_ESHRINK, lib.MMAPIPC_ESHORT,
             lib.MMAPIPC_EBUS, lib.MMAPIPC_EUNSTABLE, lib.MMAPIPC_ETIMEDOUT]
    assert len(set(codes)) == len(codes) and all(c < 0 for c in codes)


def test_core_round_trip(tmp_path: Path) -> None:
    """Open, store and load through the raw C API."""
    path = ffi.new("char[]", str(tmp_path / "f").encode())
    w = ffi.new("struct mmapipc_channel *")
    bufs = ffi.new("unsigned char[]", 4 * RECORD_SIZE)
    w.size, w.marker_off, w.seq_off, w.seqlock = RECORD_SIZE, 25, 26, 1
    w.src, w.copy, w.scratch = bufs, bufs + 28, bufs + 56
    assert lib.mmapipc_guard_install() == 0
    assert lib.mmapipc_open(w, path, lib.MMAPIPC_WRITE) == 0
    data = Student(7, "core", "x").to_bytes()
    ffi.memmove(w.src, data, RECORD_SIZE)
    assert lib.mmapipc_store(w) == 0
    r = ffi.new("struct mmapipc_channel *")
    rbufs = ffi.new("unsigned char[]", 4 * RECORD_SIZE)
    r.size, r.marker_off, r.seq_off = RECORD_SIZE, 25, 26
    r.copy, r.scratch = rbufs, rbufs + 28
    r.stuck_ns, r.unstable_ns = 10**7, 10**9
    assert lib.mmapipc_open(r, path, 0) == 0
    assert lib.mmapipc_load(r) == 1
    assert bytes(ffi.buffer(r.copy, RECORD_SIZE)) == data
    assert lib.mmapipc_load(r) == 0  # unchanged
    assert lib.mmapipc_close(r) == 0 and lib.mmapipc_close(r) == 0
    assert lib.mmapipc_close(w) == 0
