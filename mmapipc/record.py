"""struct STU as an immutable Python record, encoded to and from its 28 C bytes.

Pure encoding: nothing here knows about files or mappings.  The layout is checked
against the C compiler's (through cffi) when this module is imported.
"""

from __future__ import annotations

import struct
from typing import Any, Optional, Protocol, Tuple, TypeVar, Union

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
    lock_offsets: Optional[Tuple[int, int]]  # (marker, seq) padding offsets, if any

    def encode(self, record: T) -> bytes: ...

    def decode(self, data: bytes) -> T: ...


def _encode_text(value: Union[str, bytes], field: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise TypeError(f"{field} must be str or bytes, not {type(value).__name__}")


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class Student:
    """One struct STU: id (int32), name (at most 19 UTF-8 bytes), sex (one byte); immutable."""

    __slots__ = ("_bytes", "_name_bytes", "_sex_byte", "id", "name", "sex")

    id: int
    name: str
    sex: str
    _bytes: bytes
    _name_bytes: bytes
    _sex_byte: bytes

    def __init__(self, id: int, name: Union[str, bytes], sex: Union[str, bytes]) -> None:
        if isinstance(id, bool) or not isinstance(id, int):
            raise TypeError(f"id must be an int, not {type(id).__name__}")
        if not INT32_MIN <= id <= INT32_MAX:
            raise ValueError(f"id must be in the int32 range {INT32_MIN}..{INT32_MAX}, got {id}")
        name_b = _encode_text(name, "name")
        if b"\0" in name_b:
            raise ValueError("name must not contain a NUL byte")
        if len(name_b) > NAME_MAX:
            raise ValueError(
                f"name must be at most {NAME_MAX} bytes in UTF-8 (the C field is"
                f" {NAME_SIZE} with its NUL), got {len(name_b)}"
            )
        sex_b = _encode_text(sex, "sex")
        if len(sex_b) != 1:
            raise ValueError(f"sex must be exactly one byte, got {len(sex_b)}")
        self._set(id, name_b, sex_b, _STU.pack(id, name_b, sex_b))

    def _set(self, id: int, name_b: bytes, sex_b: bytes, data: bytes) -> None:
        setter = object.__setattr__
        setter(self, "id", id)
        setter(self, "_name_bytes", name_b)
        setter(self, "_sex_byte", sex_b)
        setter(self, "name", _decode_text(name_b))
        setter(self, "sex", _decode_text(sex_b))
        setter(self, "_bytes", data)

    @classmethod
    def from_bytes(cls, data: Union[bytes, bytearray, memoryview]) -> Student:
        """Decode any 28 bytes as mmap_r sees them: name up to its first NUL, padding ignored."""
        if len(data) != RECORD_SIZE:
            raise ValueError(f"a record is {RECORD_SIZE} bytes, got {len(data)}")
        id_, name_raw, sex_b = _STU.unpack(data)
        nul = name_raw.find(b"\0")
        name_b = name_raw if nul < 0 else name_raw[:nul]
        self = cls.__new__(cls)
        # Canonical bytes: the fields as decoded, the name zero-filled, zero padding.
        canonical = _STU.pack(id_, name_b, sex_b)
        self._set(id_, name_b, sex_b, canonical)
        return self

    def to_bytes(self) -> bytes:
        """The 28 bytes of the C struct: int32 id at 0, name + NUL at 4, sex at 24, zero pad."""
        return self._bytes

    @property
    def name_bytes(self) -> bytes:
        """The raw name bytes, up to (not including) the first NUL."""
        return self._name_bytes

    @property
    def sex_byte(self) -> bytes:
        """The raw sex byte."""
        return self._sex_byte

    def replace(self, **changes: Any) -> Student:
        """A copy with some fields changed (validated like the constructor)."""
        fields = {"id": self.id, "name": self._name_bytes, "sex": self._sex_byte}
        fields.update(changes)
        return Student(**fields)

    def c_line(self) -> bytes:
        """mmap_r's line, byte for byte: printf("id=%d\\tname=%s\\t%c\\n")."""
        name = self._name_bytes
        if len(name) == NAME_SIZE and self._sex_byte != b"\0":
            name += self._sex_byte  # %s runs on past a full name into sex, as in C
        return b"id=%d\tname=%s\t%c\n" % (self.id, name, self._sex_byte[0])

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (text as str, undecodable bytes as surrogates)."""
        return {"id": self.id, "name": self.name, "sex": self.sex}

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("Student is immutable; use replace()")

    def __delattr__(self, key: str) -> None:
        raise AttributeError("Student is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Student):
            return NotImplemented
        return self._bytes == other._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __repr__(self) -> str:
        return f"Student(id={self.id!r}, name={self.name!r}, sex={self.sex!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Student.from_bytes, (self._bytes,))


class StudentCodec:
    """The codec of struct STU; the seq lock lives in its three padding bytes."""

    size = RECORD_SIZE
    lock_offsets: Optional[Tuple[int, int]] = (PADDING[0], PADDING[0] + 1)
    name = "struct STU"

    def encode(self, record: Student) -> bytes:
        if type(record) is Student:
            return record._bytes
        if not isinstance(record, Student):
            raise TypeError(f"expected a Student, not {type(record).__name__}")
        return record._bytes

    def decode(self, data: bytes) -> Student:
        return Student.from_bytes(data)


STUDENT = StudentCodec()
