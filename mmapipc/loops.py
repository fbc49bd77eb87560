"""The loops of mmap_w and mmap_r, plus watching: Writer and Reader driven over time.

These write only to the streams they are given (stdout and stderr by default).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import IO, Any, TypeVar, cast

from mmapipc.codec import RecordCodec
from mmapipc.errors import FileTooShortError, PathLike
from mmapipc.fields import LayoutRecord
from mmapipc.mapping import Reader, Writer
from mmapipc.record import INT32_MAX, INT32_MIN, Student

T = TypeVar("T")
Stream = IO[str] | IO[bytes]
Formatter = Callable[[Any], bytes]

DEFAULT_STUDENT = Student(10, "xiaoming", "m")

# The longest interval or timeout the loops take: a year is longer than any sensible wait
# and far inside what every clock and sleep can count.
MAX_SECONDS = 365 * 24 * 3600.0
# How often watch_loop tries a truncated file again.
RETRY_SECONDS = 0.05


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
    notify: Callable[[str], None] | None = None,
    format: Formatter | None = None,
    wait: bool = False,
    **reader_options: Any,
) -> int:
    """mmap_r's loop: print the record's line every interval; count times or forever.

    If the file is truncated under the mapping, says so once (a line on err, or a call
    of notify) and keeps trying at the same interval until it is long enough again.
    Returns the lines printed.
    """
    _check_loop_args(interval, count)
    out = sys.stdout if out is None else out
    say = _notifier(err, notify)
    printed = 0
    reader: Reader[Any] = Reader(path, wait=wait, **reader_options)
    format = format or cast("RecordCodec[Any]", reader.codec).line
    with reader:
        deadline = time.monotonic()
        broken = False
        followed = 0
        while count is None or printed < count:
            try:
                record = reader.read()
            except FileTooShortError as e:
                if not broken:
                    say(f"{e}; retrying every {interval:g} s")
                    broken = True
            else:
                if broken:
                    say(f"{path}: record is readable again")
                    broken = False
                followed = _say_if_followed(reader, followed, say)
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
    err: Stream | None = None,
    notify: Callable[[str], None] | None = None,
    format: Formatter | None = None,
    wait: bool = False,
    **reader_options: Any,
) -> int:
    """Print the current record, then every change once; stop after count lines or after
    timeout seconds with no change.  Returns the lines printed.

    A truncated file is handled as read_loop does: said once, then tried again (every
    RETRY_SECONDS) until it holds a record; the first record after that is printed only
    if it differs from the last one printed.
    """
    _check_count(count)
    if timeout is not None:
        _check_seconds("timeout", timeout)
    out = sys.stdout if out is None else out
    say = _notifier(err, notify)
    printed = followed = 0
    last: Any = None
    restarted = False
    reader: Reader[Any] = Reader(path, wait=wait, **reader_options)
    format = format or cast("RecordCodec[Any]", reader.codec).line
    with reader:
        while True:
            try:
                for record in reader.watch(timeout):
                    followed = _say_if_followed(reader, followed, say)
                    if restarted and printed and record == last:
                        restarted = False
                        continue  # the record printed before the truncation: no change
                    restarted = False
                    emit(out, format(record))
                    printed += 1
                    last = record
                    if count is not None and printed >= count:
                        return printed
                return printed
            except FileTooShortError as e:
                say(f"{e}; retrying every {RETRY_SECONDS:g} s")
            if not _until_readable(reader, timeout):
                return printed
            say(f"{path}: record is readable again")
            restarted = True


def _until_readable(reader: Reader[Any], timeout: float | None) -> bool:
    """Try a truncated file every RETRY_SECONDS until a read succeeds (True) or timeout
    seconds have gone by (False)."""
    end = None if timeout is None else time.monotonic() + timeout
    while end is None or time.monotonic() < end:
        time.sleep(RETRY_SECONDS)
        try:
            reader.read()
        except FileTooShortError:
            continue
        return True
    return False


def _notifier(err: Stream | None, notify: Callable[[str], None] | None) -> Callable[[str], None]:
    if notify is not None:
        return notify
    stream = sys.stderr if err is None else err
    return lambda message: emit(stream, (message + "\n").encode("utf-8", "surrogateescape"))


def _say_if_followed(reader: Reader[Any], followed: int, say: Callable[[str], None]) -> int:
    """Say once that the reader followed its path to a new file."""
    now = reader.reopened
    if now != followed:
        say(f"{reader.path}: file was replaced; reading the new one")
    return now


def _check_loop_args(interval: float, count: int | None) -> None:
    _check_seconds("interval", interval)
    _check_count(count)


def _check_seconds(name: str, value: float) -> None:
    """A number of seconds the loops can sleep: finite, >= 0 and at most MAX_SECONDS."""
    if not 0 <= value <= MAX_SECONDS:
        raise ValueError(f"{name} must be a number of seconds from 0 to {MAX_SECONDS:.0f},"
                         f" got {value}")


def _check_count(count: int | None) -> None:
    if count is not None and count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
