"""struct STU as an immutable Python record, encoded to and from its 28 C bytes.

Pure encoding: nothing here knows about files or mappings.  The layout is checked
against the C compiler's (through cffi) when this module is imported.
"""

from __future__ import annotations

import struct
from typing import Any, Protocol, TypeVar

from mmapipc._ffi import ffi

T = TypeVar("T")

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
NAME_SIZE = 20
NAME_MAX = NAME_SIZE - 1  # room for the NUL that mmap_r's %s needs

# Python's own view of the layout: native-endian int32, 20 name bytes, one sex byte, 3 pad.
_STU = struct.Struct("=i20sc3x")
RECORD_SIZE: int = _STU.size
OFFSETS = {"id": 0, "name": 4, "sex": 24}
PADDING = (25, 3)  # offset and length of the trailing padding


def _check_layout() -> None:
    """Refuse to run if the C compiler lays struct STU out differently from _STU."""
    c_size = ffi.sizeof("struct STU")
    if c_size != RECORD_SIZE:
        raise ImportError(f"struct STU is {c_size} bytes in C, {RECORD_SIZE} in Python")
    for field, offset in OFFSETS.items():
        c_off = ffi.offsetof("struct STU", field)
        if c_off != offset:
            raise ImportError(f"struct STU.{field} is at {c_off} in C, {offset} in Python")


_check_layout()


class Codec(Protocol[T]):
    """What a mapping needs to know about a record type: its size and how to code it."""

    size: int
    lock_offsets: tuple[int, int] | None  # (marker, seq) padding offsets, if any

    def encode(self, record: T) -> bytes: ...

    def decode(self, data: bytes) -> T: ...


def encode_text(value: str | bytes, field: str) -> bytes:
    """Text as C bytes: UTF-8, with undecodable bytes (surrogates) given back as they were."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise TypeError(f"{field} must be str or bytes, not {type(value).__name__}")


def decode_text(raw: bytes) -> str:
    """C bytes as text, losslessly: bytes that are not UTF-8 become surrogates."""
    return raw.decode("utf-8", "surrogateescape")


_unpack = _STU.unpack
_pack = _STU.pack
_new = object.__new__
_setattr = object.__setattr__


class Student:
    """One struct STU: id (int32), name (at most 19 UTF-8 bytes), sex (one byte); immutable."""

    # One slot holding (id, name, sex, name_bytes, sex_byte, canonical bytes, tail): building
    # a record is then one attribute store, which keeps decoding in a reader's loop cheap.
    # tail is what C's %s prints after a name that fills all 20 bytes (sex, then padding,
    # up to a NUL); it is empty otherwise and plays no part in equality.
    __slots__ = ("_v",)
    _v: tuple[int, str, str, bytes, bytes, bytes, bytes]

    def __init__(self, id: int, name: str | bytes, sex: str | bytes) -> None:
        if isinstance(id, bool) or not isinstance(id, int):
            raise TypeError(f"id must be an int, not {type(id).__name__}")
        if not INT32_MIN <= id <= INT32_MAX:
            raise ValueError(f"id must be in the int32 range {INT32_MIN}..{INT32_MAX}, got {id}")
        name_b = encode_text(name, "name")
        if 0 in name_b:
            raise ValueError("name must not contain a NUL byte")
        if len(name_b) > NAME_MAX:
            raise ValueError(
                f"name must be at most {NAME_MAX} bytes in UTF-8 (the C field is"
                f" {NAME_SIZE} with its NUL), got {len(name_b)}"
            )
        sex_b = encode_text(sex, "sex")
        if len(sex_b) != 1:
            raise ValueError(f"sex must be exactly one byte, got {len(sex_b)}")
        _setattr(
            self,
            "_v",
            (
                id,
                decode_text(name_b),
                decode_text(sex_b),
                name_b,
                sex_b,
                _pack(id, name_b, sex_b),
                b"",
            ),
        )

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Student:
        """Decode any 28 bytes as mmap_r sees them: name up to its first NUL, padding ignored."""
        try:
            id_, name_raw, sex_b = _unpack(data)
        except struct.error:
            raise ValueError(f"a record is {RECORD_SIZE} bytes, got {len(data)}") from None
        name_b = name_raw.rstrip(b"\0")
        tail = b""
        if 0 in name_b:  # bytes after the name's first NUL are not part of it
            name_b = name_b[: name_b.index(b"\0")]
        elif len(name_b) == NAME_SIZE:  # no NUL: C's %s runs on into sex and the padding
            tail = bytes(data[OFFSETS["sex"] :]).split(b"\0", 1)[0]
        # Canonical bytes: the fields as decoded, the name zero-filled, zero padding.
        canonical = _pack(id_, name_b, sex_b)
        self = _new(cls)
        _setattr(
            self,
            "_v",
            (
                id_,
                name_b.decode("utf-8", "surrogateescape"),
                sex_b.decode("utf-8", "surrogateescape"),
                name_b,
                sex_b,
                canonical,
                tail,
            ),
        )
        return self

    @property
    def id(self) -> int:
        """The int32 id."""
        return self._v[0]

    @property
    def name(self) -> str:
        """The name as text (bytes that are not UTF-8 as surrogates)."""
        return self._v[1]

    @property
    def sex(self) -> str:
        """The sex byte as text."""
        return self._v[2]

    @property
    def name_bytes(self) -> bytes:
        """The raw name bytes, up to (not including) the first NUL."""
        return self._v[3]

    @property
    def sex_byte(self) -> bytes:
        """The raw sex byte."""
        return self._v[4]

    def to_bytes(self) -> bytes:
        """The 28 bytes of the C struct: int32 id at 0, name + NUL at 4, sex at 24, zero pad."""
        return self._v[5]

    def replace(self, **changes: Any) -> Student:
        """A copy with some fields changed (validated like the constructor)."""
        v = self._v
        fields: dict[str, Any] = {"id": v[0], "name": v[3], "sex": v[4]}
        fields.update(changes)
        return Student(**fields)

    def c_line(self) -> bytes:
        """mmap_r's line, byte for byte: printf("id=%d\\tname=%s\\t%c\\n").

        A name that fills all 20 bytes has no NUL, so C's %s runs on into sex and the
        padding up to the first NUL; the line does the same with the bytes that were read.
        """
        v = self._v
        return b"id=%d\tname=%s\t%c\n" % (v[0], v[3] + v[6], v[4][0])

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (text as str, undecodable bytes as surrogates)."""
        return {"id": self._v[0], "name": self._v[1], "sex": self._v[2]}

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("Student is immutable; use replace()")

    def __delattr__(self, key: str) -> None:
        raise AttributeError("Student is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Student):
            return NotImplemented
        return self._v[5] == other._v[5]

    def __hash__(self) -> int:
        return hash(self._v[5])

    def __repr__(self) -> str:
        return f"Student(id={self.id!r}, name={self.name!r}, sex={self.sex!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Student.from_bytes, (self._v[5],))


class StudentCodec:
    """The codec of struct STU; the seq lock lives in its three padding bytes."""

    decode = staticmethod(Student.from_bytes)

    size = RECORD_SIZE
    lock_offsets: tuple[int, int] | None = (PADDING[0], PADDING[0] + 1)
    padding = (PADDING,)
    name = "struct STU"

    def encode(self, record: Student) -> bytes:
        if not isinstance(record, Student):
            raise TypeError(f"expected a Student, not {type(record).__name__}")
        return record._v[5]



STUDENT = StudentCodec()
