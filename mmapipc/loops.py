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
from mmapipc.fields import LayoutRecord, record_fields, record_pairs
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


def c_line(record: Any) -> bytes:
    """mmap_r's line for a Student; field=value pairs for a record of any layout."""
    if isinstance(record, LayoutRecord):
        return field_line(record)
    return bytes(record.c_line())


def _plain(record: Any) -> dict[str, Any]:
    if isinstance(record, LayoutRecord):
        return LayoutRecord.as_dict(record)  # even if a field is named as_dict
    result: dict[str, Any] = record.as_dict()
    return result


def json_line(record: Any) -> bytes:
    """One JSON Lines record (nested structs as objects, arrays as lists)."""
    return (json.dumps(_plain(record)) + "\n").encode("utf-8")


def field_line(record: Any) -> bytes:
    """'field=value' pairs separated by tabs: nested as a.b=..., arrays as a=1,2,3."""
    if isinstance(record, LayoutRecord):
        pairs = record_pairs(record)
    else:
        pairs = [f"{k}={v}" for k, v in record.as_dict().items()]
    return ("\t".join(pairs) + "\n").encode("utf-8", "surrogateescape")


def format_line(template: str, sample: Any = None) -> Formatter:
    """A formatter from a str.format template over the record's fields: '{id}',
    '{pos.x}' (a member of a nested struct), '{vals[0]}', '{parts[1].x:.2f}'.

    With a sample record the template is tried on it first, so that a bad template
    fails with ValueError before any record is read.
    """

    def fields(record: Any) -> dict[str, Any]:
        return record_fields(record) if isinstance(record, LayoutRecord) else _plain(record)

    def fmt(record: Any) -> bytes:
        return (template.format_map(fields(record)) + "\n").encode("utf-8",
                                                                   "surrogateescape")

    if sample is not None:
        try:
            fmt(sample)
        except KeyError as e:
            raise ValueError(f"bad --format {template!r}: unknown field {e.args[0]!r}"
                             ) from None
        except AttributeError as e:
            name = getattr(e, "name", None)
            what = f"unknown field {name!r}" if name else str(e)
            raise ValueError(f"bad --format {template!r}: {what}") from None
        except (IndexError, ValueError, TypeError) as e:
            raise ValueError(f"bad --format {template!r}: {e}") from None
    return fmt


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
    format: Formatter = c_line,
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
    with reader:
        deadline = time.monotonic()
        broken = False
        followed = 0
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
                followed = _say_if_followed(reader, followed, err)
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
    format: Formatter = c_line,
    wait: bool = False,
    **reader_options: Any,
) -> int:
    """Print the current record, then every change once; stop after count lines or after
    timeout seconds with no change.  A replaced file is followed and said once on err.
    Returns the lines printed."""
    if count is not None and count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must not be negative, got {timeout}")
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    printed = followed = 0
    reader: Reader[Any] = Reader(path, wait=wait, **reader_options)
    with reader:
        for record in reader.watch(timeout):
            followed = _say_if_followed(reader, followed, err)
            emit(out, format(record))
            printed += 1
            if count is not None and printed >= count:
                break
    return printed


def _say_if_followed(reader: Reader[Any], followed: int, err: Stream) -> int:
    """Say once on err that the reader followed its path to a new file."""
    now = reader.reopened
    if now != followed:
        emit(err, f"{reader.path}: file was replaced; reading the new one\n".encode())
    return now


def _check_loop_args(interval: float, count: int | None) -> None:
    if not interval >= 0:
        raise ValueError(f"interval must be a number of seconds >= 0, got {interval}")
    if count is not None and count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
