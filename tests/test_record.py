"""Student: the 28 bytes of struct STU, their round trip, validation and mmap_r's line."""

from __future__ import annotations

import pickle
import random
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmapipc import RECORD_SIZE, Student

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
LAYOUT = struct.Struct("=i20sc3x")  # the layout gcc gives struct STU on x86-64 and arm64

ids = st.integers(INT32_MIN, INT32_MAX)
raw_names = st.binary(max_size=19).map(lambda b: b.replace(b"\0", b"\x01"))
text_names = st.text(
    st.characters(codec="utf-8", exclude_characters="\0"), max_size=19
).filter(lambda s: len(s.encode("utf-8")) <= 19)
names: st.SearchStrategy[str | bytes] = st.one_of(raw_names, text_names)
sexes: st.SearchStrategy[str | bytes] = st.one_of(
    st.binary(min_size=1, max_size=1), st.characters(codec="ascii")
)


def as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


@given(ids, names, sexes)
def test_round_trip(id_: int, name: str | bytes, sex: str | bytes) -> None:
    """Any valid Student -> 28 bytes -> the same Student, field by field."""
    s = Student(id_, name, sex)
    data = s.to_bytes()
    assert isinstance(data, bytes) and len(data) == RECORD_SIZE == 28
    back = Student.from_bytes(data)
    assert back == s and hash(back) == hash(s)
    assert (back.id, back.name_bytes, back.sex_byte) == (id_, as_bytes(name), as_bytes(sex))
    assert back.name == s.name and back.sex == s.sex
    if isinstance(name, str):
        assert back.name == name
    assert back.to_bytes() == data
    assert LAYOUT.unpack(data) == (id_, as_bytes(name).ljust(20, b"\0"), as_bytes(sex))
    assert data[25:] == b"\0\0\0"


@given(st.binary(min_size=RECORD_SIZE, max_size=RECORD_SIZE))
def test_from_any_28_bytes_is_canonical(data: bytes) -> None:
    """from_bytes never raises on 28 bytes; to_bytes gives them back canonical.

    Canonical: id and sex kept, the name kept up to its first NUL and zero-filled after
    it (all 20 bytes when there is no NUL), and the 3 padding bytes zero.
    """
    s = Student.from_bytes(data)
    id_, raw_name, sex = LAYOUT.unpack(data)
    name = raw_name.split(b"\0", 1)[0]
    assert (s.id, s.name_bytes, s.sex_byte) == (id_, name, sex)
    canon = s.to_bytes()
    assert len(canon) == RECORD_SIZE
    assert canon[0:4] == data[0:4]
    assert canon[4:4 + len(name)] == name
    assert canon[4 + len(name):24] == bytes(20 - len(name))
    assert canon[24:25] == data[24:25]
    assert canon[25:28] == b"\0\0\0"
    again = Student.from_bytes(canon)
    assert again == s and again.to_bytes() == canon
    assert Student.from_bytes(bytearray(data)) == s
    assert Student.from_bytes(memoryview(data)) == s


def test_from_bytes_ignores_padding_and_bytes_after_the_nul() -> None:
    a = LAYOUT.pack(5, b"ab\0garbage", b"m")[:25] + b"\x9f\x27\x2e"
    b = LAYOUT.pack(5, b"ab", b"m")
    assert a != b
    assert Student.from_bytes(a) == Student.from_bytes(b) == Student(5, "ab", "m")
    assert Student.from_bytes(a).to_bytes() == b


@pytest.mark.parametrize("size", [0, 27, 29, 56])
def test_from_bytes_wrong_length(size: int) -> None:
    with pytest.raises(ValueError, match="28"):
        Student.from_bytes(bytes(size))


def test_exact_layout() -> None:
    """id native-endian int32 at 0, name NUL-filled at 4, sex at 24, zero padding at 25."""
    data = Student(0x01020304, "xiaoming", "m").to_bytes()
    assert data == (
        (0x01020304).to_bytes(4, sys.byteorder) + b"xiaoming" + bytes(12) + b"m" + bytes(3)
    )
    assert LAYOUT.unpack(data) == (0x01020304, b"xiaoming" + bytes(12), b"m")
    neg = Student(-2, b"\xff" * 19, b"\x00").to_bytes()
    assert neg == b"\xfe\xff\xff\xff" + b"\xff" * 19 + b"\0" + b"\0" + bytes(3)
    assert Student(INT32_MIN, "", "f").to_bytes()[:4] == struct.pack("=i", INT32_MIN)
    assert Student(INT32_MAX, "", "f").to_bytes()[:4] == struct.pack("=i", INT32_MAX)


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"id": INT32_MAX + 1}, ("id", "2147483647")),
        ({"id": INT32_MIN - 1}, ("id", "-2147483648")),
        ({"id": 2**63}, ("id", "2147483647")),
        ({"name": "x" * 20}, ("name", "19")),
        ({"name": b"x" * 20}, ("name", "19")),
        ({"name": "\u00e9" * 10}, ("name", "19")),  # 10 characters, 20 UTF-8 bytes
        ({"name": "\u5c0f" * 7}, ("name", "19")),  # 7 characters, 21 UTF-8 bytes
        ({"name": "a\0b"}, ("name", "NUL")),
        ({"sex": ""}, ("sex", "one byte")),
        ({"sex": b""}, ("sex", "one byte")),
        ({"sex": "ab"}, ("sex", "one byte")),
        ({"sex": "\u00e9"}, ("sex", "one byte")),  # one character, two bytes
    ],
)
def test_validation_names_field_and_limit(kwargs: dict[str, Any], needles: tuple[str, ...]) -> None:
    fields: dict[str, Any] = {"id": 1, "name": "ok", "sex": "m"}
    fields.update(kwargs)
    with pytest.raises(ValueError) as info:
        Student(**fields)
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Student(1.0, "a", "m"),  # type: ignore[arg-type]
        lambda: Student(True, "a", "m"),
        lambda: Student("1", "a", "m"),  # type: ignore[arg-type]
        lambda: Student(1, 5, "m"),  # type: ignore[arg-type]
        lambda: Student(1, "a", 5),  # type: ignore[arg-type]
    ],
)
def test_wrong_types(make: Callable[[], Student]) -> None:
    with pytest.raises(TypeError):
        make()


def test_limits_are_inclusive() -> None:
    assert Student(INT32_MAX, "x" * 19, b"\0").id == INT32_MAX
    assert Student(INT32_MIN, "\u00e9" * 9 + "a", "m").name_bytes == b"\xc3\xa9" * 9 + b"a"
    assert Student(0, "", "m").name == ""


def test_immutable() -> None:
    s = Student(1, "a", "m")
    for attr, value in (("id", 2), ("name", "b"), ("sex", "f"), ("other", 0)):
        with pytest.raises(AttributeError):
            setattr(s, attr, value)
    with pytest.raises(AttributeError):
        del s.id
    assert (s.id, s.name, s.sex) == (1, "a", "m")
    t = s.replace(id=2)
    assert (t.id, t.name, t.sex) == (2, "a", "m") and s.id == 1
    with pytest.raises(ValueError, match="name"):
        s.replace(name="y" * 20)
    assert {s, Student(1, b"a", b"m")} == {s}
    assert s != t and s != s.to_bytes()
    assert pickle.loads(pickle.dumps(s)) == s


def test_raw_name_bytes_kept_for_non_utf8() -> None:
    raw = b"caf\xe9\xff"
    s = Student.from_bytes(LAYOUT.pack(3, raw, b"\xfe"))
    assert s.name_bytes == raw and s.sex_byte == b"\xfe"
    assert isinstance(s.name, str)
    assert s.name.encode("utf-8", "surrogateescape") == raw
    assert s.to_bytes()[4:9] == raw
    # The str form round-trips too, through surrogateescape.
    assert Student(3, s.name, s.sex) == s
    assert Student(3, raw, b"\xfe") == s
    assert s.as_dict() == {"id": 3, "name": s.name, "sex": s.sex}


@pytest.mark.parametrize(
    ("student", "line"),
    [
        (Student(10, "xiaoming", "m"), b"id=10\tname=xiaoming\tm\n"),
        (Student(-7, "", "f"), b"id=-7\tname=\tf\n"),
        (Student(INT32_MIN, "a b", "x"), b"id=-2147483648\tname=a b\tx\n"),
        (Student(1, b"caf\xe9\xff", b"\x80"), b"id=1\tname=caf\xe9\xff\t\x80\n"),
        (Student(1, "\u5c0f\u660e", "m"), "id=1\tname=\u5c0f\u660e\tm\n".encode()),
        (Student(2, "n", b"\0"), b"id=2\tname=n\t\0\n"),  # %c prints the NUL byte
        # A 20-byte name has no NUL: %s runs on into sex (then zero padding).
        (Student.from_bytes(LAYOUT.pack(7, b"A" * 20, b"z")), b"id=7\tname=" + b"A" * 20
         + b"z\tz\n"),
        (Student.from_bytes(LAYOUT.pack(7, b"A" * 20, b"\0")), b"id=7\tname=" + b"A" * 20
         + b"\t\0\n"),
    ],
)
def test_c_line(student: Student, line: bytes) -> None:
    assert student.c_line() == line


PRINTF = r"""
#include <stdio.h>
#include <string.h>
struct STU { int id; char name[20]; char sex; };
int main(void)
{
    /* The record at the start of a zero-filled page, as in a mapping of a 28-byte file. */
    union { struct STU s; unsigned char b[4096]; } page;
    memset(&page, 0, sizeof page);
    while (fread(page.b, 1, sizeof(struct STU), stdin) == sizeof(struct STU))
        printf("id=%d\tname=%s\t%c\n", page.s.id, page.s.name, page.s.sex);
    return 0;
}
"""


def test_c_line_matches_printf(build_c: Callable[[str, str], Path]) -> None:
    """c_line() is byte for byte what mmap_r's printf prints, on 2000 varied records."""
    exe = build_c("printf_stu", PRINTF)
    rng = random.Random(20240528)
    raws = []
    for _ in range(2000):
        n = rng.choice([0, 1, 5, 19, 20, rng.randrange(21)])
        name = bytes(rng.randrange(1, 256) for _ in range(n))
        rest = b"\0" + bytes(rng.randrange(256) for _ in range(19 - n)) if n < 20 else b""
        sex = bytes([rng.choice([0, ord("m"), rng.randrange(256)])])
        id_ = rng.choice([INT32_MIN, INT32_MAX, 0, -1, rng.randrange(INT32_MIN, INT32_MAX)])
        raws.append(LAYOUT.pack(id_, name + rest, sex))  # bytes after the NUL: garbage
    out = subprocess.run([exe], input=b"".join(raws), capture_output=True, check=True).stdout
    assert out == b"".join(Student.from_bytes(raw).c_line() for raw in raws)
