"""The Codec protocols: all that a mapping, a loop and the command line know of a record type.

``Codec`` is what a mapping needs (size, where the seq lock lives, bytes in and out);
``RecordCodec`` adds the text a loop and the command line print.  Every Layout is a
RecordCodec (struct STU's is ``mmapipc.record.STUDENT``, whose records are Students).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Codec(Protocol[T]):
    """What a mapping needs to know about a record type: its size and how to code it."""

    size: int
    lock_offsets: tuple[int, int] | None  # (marker, seq) padding offsets, if any

    def encode(self, record: T) -> bytes:
        """The record's bytes, exactly size of them, padding zero."""
        ...

    def decode(self, data: bytes) -> T:
        """A record from any size bytes (never raises for those)."""
        ...


class RecordCodec(Codec[T], Protocol[T]):
    """A Codec that also says how its records are shown: what loops and the CLI use."""

    name: str

    def line(self, record: T) -> bytes:
        """The record's default line of text (mmap_r's for struct STU), with its newline."""
        ...

    def json_line(self, record: T) -> bytes:
        """The record as one line of JSON."""
        ...

    def formatter(self, template: str) -> Callable[[T], bytes]:
        """Lines from a template over the fields, '{id} {pos.x:.2f}'; ValueError if bad."""
        ...

    def dump(self, record: T, raw: bytes) -> bytes:
        """The record decoded, then its raw bytes in hex by field."""
        ...
