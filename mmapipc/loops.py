"""The loops of mmap_w and mmap_r, plus watching: Writer and Reader driven over time.

These write only to the streams they are given (stdout and stderr by default).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import IO, Any, TypeVar, cast

from mmapipc.errors import FileTooShortError, PathLike
from mmapipc.fields import LayoutRecord
from mmapipc.mapping import Reader, Writer
from mmapipc.record import INT32_MAX, INT32_MIN, Student

T = TypeVar("T")
Stream = IO[str] | IO[bytes]
Formatter = Callable[[Any], bytes]

DEFAULT_STUDENT = Student(10, "xiaoming", "m")


def next_student(s: Student) -> Student:
    """mmap_w's step: id + 1, wrapping around at the int32 limit as C's int does."""
    nxt = s.id + 1 if s.id < INT32_MAX else INT32_MIN
    return s.replace(id=nxt)


def json_line(record: LayoutRecord) -> bytes:
    """One JSON Lines record of any layout (nested structs as objects, arrays as lists)."""
    return (json.dumps(LayoutRecord.as_dict(record)) + "\n").encode("utf-8")


def emit(out: Stream, data: bytes) -> None:
    """Write bytes to a binary or text stream and flush, so a pipe sees every line now."""
    buffer = getattr(out, "buffer", None)
    if buffer is not None:
        out.flush()
        buffer.write(data)
        buffer.flush()
        return
    try:
        cast("IO[bytes]", out).write(data)
    except TypeError:
        cast("IO[str]", out).write(data.decode("utf-8", "surrogateescape"))
    out.flush()


def _sleep_until(deadline: float) -> float:
    """Sleep until deadline; return it, or now if already late (no catching up in bursts)."""
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)
        return deadline
    return time.monotonic()


def write_loop(
    path: PathLike,
    first: Any = DEFAULT_STUDENT,
    interval: float = 1.0,
    count: int | None = None,
    *,
    step: Callable[[Any], Any] = next_student,
    sync: bool = False,
    **writer_options: Any,
) -> Any:
    """mmap_w's loop: write the record, step it (id + 1), sleep; count times or forever.

    Returns the last record written.
    """
    _check_loop_args(interval, count)
    record = first
    last = first
    writer: Writer[Any] = Writer(path, **writer_options)
    with writer:
        n = 0
        deadline = time.monotonic()
        while count is None or n < count:
            writer.write(record)
            if sync:
                writer.flush()
            last = record
            n += 1
            record = step(record)
            if count is not None and n >= count:
                break
            deadline = _sleep_until(deadline + interval)
    return last


def read_loop(
    path: PathLike,
    interval: float = 2.0,
    count: int | None = None,
    out: Stream | None = None,
    *,
    err: Stream | None = None,
    format: Formatter | None = None,
    wait: bool = False,
    **reader_options: Any,
) -> int:
    """mmap_r's loop: print the record's line every interval; count times or forever.

    If the file is truncated under the mapping, says so once on err and keeps trying
    at the same interval until it is long enough again.  Returns the lines printed.
    """
    _check_loop_args(interval, count)
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    printed = 0
    reader: Reader[Any] = Reader(path, wait=wait, **reader_options)
    format = format or reader.codec.line
    with reader:
        deadline = time.monotonic()
        broken = False
        while count is None or printed < count:
            try:
                record = reader.read()
            except FileTooShortError as e:
                if not broken:
                    emit(err, f"{e}; retrying every {interval:g} s\n".encode())
                    broken = True
            else:
                if broken:
                    emit(err, f"{path}: record is readable again\n".encode())
                    broken = False
                emit(out, format(record))
                printed += 1
                if count is not None and printed >= count:
                    break
            deadline = _sleep_until(deadline + interval)
    return printed


def watch_loop(
    path: PathLike,
    count: int | None = None,
    timeout: float | None = None,
    out: Stream | None = None,
    *,
    format: Formatter | None = None,
    wait: bool = False,
    **reader_options: Any,
) -> int:
    """Print the current record, then every change once; stop after count lines or after
    timeout seconds with no change.  Returns the lines printed."""
    if count is not None and count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must not be negative, got {timeout}")
    out = sys.stdout if out is None else out
    printed = 0
    reader: Reader[Any] = Reader(path, wait=wait, **reader_options)
    format = format or reader.codec.line
    with reader:
        for record in reader.watch(timeout):
            emit(out, format(record))
            printed += 1
            if count is not None and printed >= count:
                break
    return printed


def _check_loop_args(interval: float, count: int | None) -> None:
    if not interval >= 0:
        raise ValueError(f"interval must be a number of seconds >= 0, got {interval}")
    if count is not None and count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
