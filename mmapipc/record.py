"""struct STU as a layout like any other, and Student, the record class of that layout.

Pure encoding: nothing here knows about files or mappings.  The layout comes from the
compiled core (cffi's sizeof and offsetof of the struct the C programs use); importing
this module never runs a compiler.  Student keeps mmap_r's view of the bytes: the name
up to its first NUL, and what C's %s prints after a name that fills all 20 bytes.
"""

from __future__ import annotations

import struct
from typing import Any

from mmapipc._ffi import ffi
from mmapipc.codec import Codec, RecordCodec
from mmapipc.fields import (
    CharNode,
    IntNode,
    LayoutRecord,
    StructNode,
    TextNode,
    decode_text,
    encode_text,
)
from mmapipc.layout import Layout

__all__ = ["NAME_MAX", "NAME_SIZE", "OFFSETS", "PADDING", "RECORD_SIZE", "STUDENT", "Codec",
           "RecordCodec", "Student", "StudentLayout", "decode_text", "encode_text"]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
NAME_SIZE = 20
NAME_MAX = NAME_SIZE - 1  # room for the NUL that mmap_r's %s needs

# Python's own view of the layout: native-endian int32, 20 name bytes, one sex byte, 3 pad.
_STU = struct.Struct("=i20sc3x")
RECORD_SIZE: int = _STU.size
OFFSETS = {"id": 0, "name": 4, "sex": 24}
PADDING = (25, 3)  # offset and length of the trailing padding
DECLARATION = "struct STU { int id; char name[20]; char sex; };"


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


class _SexNode(CharNode):
    """STU's sex: exactly one byte, the NUL byte included (mmap_r prints it with %c)."""

    def check(self, value: Any, path: str) -> Any:
        raw = encode_text(value, path)
        if len(raw) != 1:
            raise ValueError(f"{path} must be exactly one byte, got {len(raw)}")
        return decode_text(raw)

    def flatten(self, value: Any, out: list[Any]) -> None:
        out.append(value.encode("utf-8", "surrogateescape"))

    def build(self, vals: Any, i: int) -> tuple[Any, int]:
        return decode_text(vals[i]), i + 1

    def zero(self) -> Any:
        return "\0"


_unpack = _STU.unpack
_pack = _STU.pack
_new = object.__new__
_set_values = LayoutRecord.__dict__["__mmapipc_values__"].__set__
_set_bytes = LayoutRecord.__dict__["__mmapipc_bytes__"].__set__


class Student(LayoutRecord):
    """One struct STU: id (int32), name (at most 19 UTF-8 bytes), sex (one byte); immutable.

    The record class of the STU layout (``STUDENT``): equal by its canonical bytes,
    with replace, as_dict, to_bytes and from_bytes like every layout's records.
    """

    # _tail is what C's %s prints after a name that fills all 20 bytes (sex, then
    # padding, up to a NUL); unset otherwise, and no part of equality.
    __slots__ = ("_tail",)

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
        _set_values(self, (int(id), decode_text(name_b), decode_text(sex_b)))
        _set_bytes(self, _pack(id, name_b, sex_b))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Student:
        """Decode any 28 bytes as mmap_r sees them: name up to its first NUL, padding ignored."""
        return _decode(data)

    @property
    def id(self) -> int:
        """The int32 id."""
        value: int = self.__mmapipc_values__[0]
        return value

    @property
    def name(self) -> str:
        """The name as text (bytes that are not UTF-8 as surrogates)."""
        value: str = self.__mmapipc_values__[1]
        return value

    @property
    def sex(self) -> str:
        """The sex byte as text."""
        value: str = self.__mmapipc_values__[2]
        return value

    @property
    def name_bytes(self) -> bytes:
        """The raw name bytes, up to (not including) the first NUL."""
        return self.__mmapipc_values__[1].encode("utf-8", "surrogateescape")  # type: ignore[no-any-return]

    @property
    def sex_byte(self) -> bytes:
        """The raw sex byte."""
        return self.__mmapipc_values__[2].encode("utf-8", "surrogateescape")  # type: ignore[no-any-return]

    def to_bytes(self) -> bytes:
        """The 28 bytes of the C struct: int32 id at 0, name + NUL at 4, sex at 24, zero pad."""
        try:
            return self.__mmapipc_bytes__  # type: ignore[return-value]
        except AttributeError:
            v = self.__mmapipc_values__
            data = _pack(v[0], v[1].encode("utf-8", "surrogateescape"),
                         v[2].encode("utf-8", "surrogateescape"))
            _set_bytes(self, data)
            return data

    def replace(self, **changes: Any) -> Student:
        """A copy with some fields changed (validated like the constructor)."""
        v = self.__mmapipc_values__
        fields: dict[str, Any] = {"id": v[0], "name": v[1], "sex": v[2]}
        fields.update(changes)
        return Student(**fields)

    def c_line(self) -> bytes:
        """mmap_r's line, byte for byte: printf("id=%d\\tname=%s\\t%c\\n").

        A name that fills all 20 bytes has no NUL, so C's %s runs on into sex and the
        padding up to the first NUL; the line does the same with the bytes that were read.
        """
        v = self.__mmapipc_values__
        tail: bytes = getattr(self, "_tail", b"")
        return b"id=%d\tname=%s\t%c\n" % (v[0], v[1].encode("utf-8", "surrogateescape") + tail,
                                          v[2].encode("utf-8", "surrogateescape")[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Student):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        v = self.__mmapipc_values__
        return f"Student(id={v[0]!r}, name={v[1]!r}, sex={v[2]!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Student.from_bytes, (self.to_bytes(),))


_ROOT = StructNode("struct STU", RECORD_SIZE,
                   [("id", OFFSETS["id"], IntNode("int", 4, True)),
                    ("name", OFFSETS["name"], TextNode(NAME_SIZE)),
                    ("sex", OFFSETS["sex"], _SexNode())],
                   "Student", record_class=Student)


_unpack_fast = struct.Struct("=i20sB3x").unpack  # sex as a number: an index into _SEXES
_SEXES = tuple(bytes([b]).decode("utf-8", "surrogateescape") for b in range(256))
_set_tail = Student.__dict__["_tail"].__set__


def _decode(data: bytes | bytearray | memoryview, _unpack: Any = _unpack_fast,
            _make: Any = _new, _set: Any = _set_values, _sexes: Any = _SEXES,
            _student: Any = Student) -> Student:
    """Student.from_bytes, as one function: what a Reader calls for every changed record.

    The defaults bind what it uses as locals (positional defaults are the cheapest to
    fill): never pass them.
    """
    try:
        id_, raw, sex = _unpack(data)
    except struct.error:
        raise ValueError(f"a record is {RECORD_SIZE} bytes, got {len(data)}") from None
    name, nul, _ = raw.partition(b"\0")  # the name ends at its first NUL
    self: Student = _make(_student)
    if not nul:  # no NUL at all: C's %s runs on into sex and the padding
        _set_tail(self, bytes(data[OFFSETS["sex"]:]).split(b"\0", 1)[0])
    _set(self, (id_, name.decode("utf-8", "surrogateescape"), _sexes[sex]))
    return self


def _encoder(generic: Any) -> Any:
    """STU's encode as one function: a Writer calls it for every record."""

    def encode(record: Any, _student: Any = Student) -> bytes:
        if type(record) is _student:
            try:
                return record.__mmapipc_bytes__  # type: ignore[no-any-return]
            except AttributeError:  # decoded, not yet packed
                return record.to_bytes()  # type: ignore[no-any-return]
        if isinstance(record, Student):
            return record.to_bytes()
        if isinstance(record, LayoutRecord):
            raise TypeError(f"expected a Student, not {type(record).__name__}")
        return generic(record)  # type: ignore[no-any-return]

    return encode


class StudentLayout(Layout):
    """The layout of struct STU, whose records are Students; the seq lock lives in its
    three padding bytes.  Its line is mmap_r's, its dump shows the fields by name."""

    def __init__(self) -> None:
        super().__init__("struct STU", _ROOT, int(ffi.alignof("struct STU")), DECLARATION,
                         "<struct STU>", origin="cffi")
        self.zero = Student(10, "xiaoming", "m")  # what a template is tried on
        self.decode = _decode  # type: ignore[method-assign]
        self.encode = _encoder(super().encode)  # type: ignore[method-assign]

    def decode(self, data: bytes) -> Student:
        """A Student from any 28 bytes (replaced by the plain function on the instance)."""
        return _decode(data)

    def encode(self, record: Any) -> bytes:
        """The 28 bytes of a Student (or of a dict of its fields)."""
        data: bytes = _encoder(super().encode)(record)
        return data

    def laid_out_by(self) -> str:
        return "laid out by the compiled core (cffi's sizeof and offsetof)"

    def line(self, record: Any) -> bytes:
        """mmap_r's line."""
        line: bytes = record.c_line()
        return line

    def dump(self, record: Any, raw: bytes) -> bytes:
        """The record decoded, then its bytes in hex by field with their offsets."""
        spans = [("id", OFFSETS["id"], 4), ("name", OFFSETS["name"], 20),
                 ("sex", OFFSETS["sex"], 1), ("padding", PADDING[0], PADDING[1])]
        lines = [f"id={record.id}\tname={record.name!r}\tsex={record.sex!r}",
                 f"{'offset':>6}  {'field':<8} bytes"]
        for field, off, size in spans:
            lines.append(f"{off:>6}  {field:<8} {raw[off:off + size].hex(' ')}")
        lines.append(f"{RECORD_SIZE:>6}  (size)")
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


STUDENT = StudentLayout()
"""The codec of struct STU (the default of Writer and Reader)."""
