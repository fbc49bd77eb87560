"""Any C struct: layouts from C declarations, checked against the C compiler and C programs.

C programs compiled here from the same header write records that Python reads and read
records that Python writes; Layout.check compares with the compiler; every construct that
cannot be shared is refused with an error naming the field; the seq lock, the fallback and
the SIGBUS guard work for any layout; and the command line takes --struct-file.
"""

from __future__ import annotations

import io
import json
import os
import random
import string
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CSRC, assert_clean_error, run_cli, start_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from mmapipc import (
    FileTooShortError,
    Layout,
    LayoutCheckError,
    LayoutError,
    LayoutRecord,
    Reader,
    Student,
    Writer,
)
from mmapipc.loops import read_loop
from mmapipc.record import STUDENT

HEADER = r"""
#ifndef MIXED_H
#define MIXED_H
#include <stdbool.h>
#include <stdint.h>

#define NAME_LEN 16   /* with its NUL */
#define TRACK (1 + 2)

/* A nested struct with padding of its own (4 bytes after y). */
struct point {
    int16_t x;
    int16_t y;
    double z;
};

typedef struct mixed {
    uint8_t kind;          // padding after
    int16_t temp;
    int64_t stamp;
    uint32_t count;
    double value;
    char name[NAME_LEN];
    int32_t samples[5];
    struct point pos;
    struct point track[TRACK];
    bool ok;
    float ratio;
    uint16_t tail;         /* 6 bytes of trailing padding */
} mixed_t;

int mixed_print(const mixed_t *m);   /* a prototype: not a type, skipped */

#endif
"""

# Where the compiler puts every member of struct mixed on x86-64 and aarch64 Linux; the
# test below also asks the compiler itself (Layout.check).
EXPECTED = {
    "kind": 0, "temp": 2, "stamp": 8, "count": 16, "value": 24, "name": 32,
    "samples": 48, "pos": 72, "pos.x": 72, "pos.y": 74, "pos.z": 80, "track": 88,
    "track[0].x": 88, "track[1].z": 112, "track[2].y": 122, "ok": 136, "ratio": 140,
    "tail": 144,
}

C_COMMON = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "@HEADER@"
"""

# mmap_w's way, for struct mixed: fill a struct from argv, memcpy it into the mapping.
# argv[2] is the byte the struct is memset to first: the padding a legacy writer leaves
# (0xA5 looks like mmapipc's seq lock marker, with an odd sequence).
C_WRITER = C_COMMON + r"""
int main(int argc, char **argv)
{
    if (argc != 3 + 26)
        return 2;
    mixed_t rec;
    memset(&rec, (int)strtol(argv[2], NULL, 0), sizeof rec);
    int i = 3;
    rec.kind = (uint8_t)strtoul(argv[i++], NULL, 0);
    rec.temp = (int16_t)strtol(argv[i++], NULL, 0);
    rec.stamp = (int64_t)strtoll(argv[i++], NULL, 0);
    rec.count = (uint32_t)strtoul(argv[i++], NULL, 0);
    rec.value = strtod(argv[i++], NULL);
    strncpy(rec.name, argv[i++], sizeof rec.name - 1);
    rec.name[sizeof rec.name - 1] = 0;
    for (int k = 0; k < 5; k++)
        rec.samples[k] = (int32_t)strtol(argv[i++], NULL, 0);
    rec.pos.x = (int16_t)strtol(argv[i++], NULL, 0);
    rec.pos.y = (int16_t)strtol(argv[i++], NULL, 0);
    rec.pos.z = strtod(argv[i++], NULL);
    for (int t = 0; t < TRACK; t++) {
        rec.track[t].x = (int16_t)strtol(argv[i++], NULL, 0);
        rec.track[t].y = (int16_t)strtol(argv[i++], NULL, 0);
        rec.track[t].z = strtod(argv[i++], NULL);
    }
    rec.ok = atoi(argv[i++]) != 0;
    rec.ratio = strtof(argv[i++], NULL);
    rec.tail = (uint16_t)strtoul(argv[i++], NULL, 0);
    int fd = open(argv[1], O_RDWR | O_CREAT, 0664);
    if (fd < 0 || ftruncate(fd, sizeof rec) != 0)
        return 3;
    void *map = mmap(NULL, sizeof rec, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        return 4;
    close(fd);
    memcpy(map, &rec, sizeof rec);
    munmap(map, sizeof rec);
    return 0;
}
"""

# mmap_r's way: memcpy the struct out of the mapping, print every field.
C_READER = C_COMMON + r"""
int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0)
        return 3;
    mixed_t rec;
    void *map = mmap(NULL, sizeof rec, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        return 4;
    close(fd);
    memcpy(&rec, map, sizeof rec);
    printf("kind=%u\ntemp=%d\nstamp=%lld\ncount=%u\nvalue=%.17g\nname=%s\n",
           rec.kind, rec.temp, (long long)rec.stamp, rec.count, rec.value, rec.name);
    printf("samples=%d,%d,%d,%d,%d\n", rec.samples[0], rec.samples[1], rec.samples[2],
           rec.samples[3], rec.samples[4]);
    printf("pos.x=%d\npos.y=%d\npos.z=%.17g\n", rec.pos.x, rec.pos.y, rec.pos.z);
    for (int t = 0; t < TRACK; t++)
        printf("track[%d].x=%d\ntrack[%d].y=%d\ntrack[%d].z=%.17g\n",
               t, rec.track[t].x, t, rec.track[t].y, t, rec.track[t].z);
    printf("ok=%d\nratio=%.9g\ntail=%u\n", rec.ok ? 1 : 0, rec.ratio, rec.tail);
    return 0;
}
"""

F32 = struct.Struct("=f")


@pytest.fixture(scope="module")
def header(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hdr") / "mixed.h"
    path.write_text(HEADER)
    return path


@pytest.fixture(scope="module")
def layout(header: Path) -> Layout:
    return Layout.from_file(header, "mixed_t")


@pytest.fixture(scope="module")
def cprogs(build_c: Any, header: Path) -> dict[str, Path]:
    return {
        "writer": build_c("mixed_writer", C_WRITER.replace("@HEADER@", str(header))),
        "reader": build_c("mixed_reader", C_READER.replace("@HEADER@", str(header))),
    }


def f32(x: float) -> float:
    return float(F32.unpack(F32.pack(x))[0])


def random_record(rng: random.Random) -> dict[str, Any]:
    """Fields across the whole range of every C type; floats exact in their C type."""

    def i(bits: int, signed: bool = True) -> int:
        if signed:
            return rng.randint(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        return rng.randint(0, 2**bits - 1)

    def d() -> float:
        return rng.choice([rng.uniform(-1e6, 1e6), rng.uniform(-1e300, 1e300), 0.1, -0.0])

    letters = string.ascii_letters + string.digits + "é€"
    name = ""
    for _ in range(rng.randint(0, 12)):
        ch = rng.choice(letters)
        if len((name + ch).encode()) <= 15:
            name += ch
    return {
        "kind": i(8, False), "temp": i(16), "stamp": i(64), "count": i(32, False),
        "value": d(), "name": name, "samples": [i(32) for _ in range(5)],
        "pos": {"x": i(16), "y": i(16), "z": d()},
        "track": [{"x": i(16), "y": i(16), "z": d()} for _ in range(3)],
        "ok": rng.random() < 0.5, "ratio": f32(rng.uniform(-3e38, 3e38)), "tail": i(16, False),
    }


EXTREMES = [
    {"kind": 255, "temp": -32768, "stamp": -(2**63), "count": 2**32 - 1, "value": -1e308,
     "name": "x" * 15, "samples": [-(2**31), 2**31 - 1, 0, -1, 1],
     "pos": {"x": 32767, "y": -32768, "z": 5e-324},
     "track": [{"x": -1, "y": 1, "z": 1.5}] * 3, "ok": True, "ratio": f32(3.4e38),
     "tail": 65535},
    {"kind": 0, "temp": 32767, "stamp": 2**63 - 1, "count": 0, "value": 0.0, "name": "",
     "samples": [0] * 5, "pos": {"x": 0, "y": 0, "z": 0.0},
     "track": [{"x": 0, "y": 0, "z": 0.0}] * 3, "ok": False, "ratio": -1.5, "tail": 0},
]


def records(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return EXTREMES + [random_record(rng) for _ in range(n)]


def writer_args(rec: dict[str, Any]) -> list[str]:
    vals: list[Any] = [rec["kind"], rec["temp"], rec["stamp"], rec["count"],
                       repr(rec["value"]), rec["name"], *rec["samples"], rec["pos"]["x"],
                       rec["pos"]["y"], repr(rec["pos"]["z"])]
    for t in rec["track"]:
        vals += [t["x"], t["y"], repr(t["z"])]
    vals += [int(rec["ok"]), repr(rec["ratio"]), rec["tail"]]
    return [str(v) for v in vals]


def parse_c_output(out: bytes) -> dict[str, Any]:
    """The C reader's lines back into the dict shape of a record."""
    got: dict[str, bytes] = {}
    for line in out.split(b"\n"):
        if line:
            key, _, value = line.partition(b"=")
            got[key.decode()] = value
    return {
        "kind": int(got["kind"]), "temp": int(got["temp"]), "stamp": int(got["stamp"]),
        "count": int(got["count"]), "value": float(got["value"]),
        "name": got["name"].decode("utf-8", "surrogateescape"),
        "samples": [int(v) for v in got["samples"].split(b",")],
        "pos": {"x": int(got["pos.x"]), "y": int(got["pos.y"]), "z": float(got["pos.z"])},
        "track": [{"x": int(got[f"track[{t}].x"]), "y": int(got[f"track[{t}].y"]),
                   "z": float(got[f"track[{t}].z"])} for t in range(3)],
        "ok": got["ok"] == b"1", "ratio": f32(float(got["ratio"])), "tail": int(got["tail"]),
    }


# ---- the layout, as the compiler makes it ------------------------------------------


def test_layout_of_the_mixed_struct(layout: Layout) -> None:
    assert layout.size == 152 and layout.align == 8
    offsets = {f.name: f.offset for f in layout.members}
    for path, offset in EXPECTED.items():
        assert offsets[path] == offset, path
        assert layout.field(path).offset == offset
    sizes = {f.name: (f.ctype, f.size) for f in layout.fields}
    assert sizes["name"] == ("char[16]", 16)
    assert sizes["samples"] == ("int32_t[5]", 20)
    assert sizes["track"] == ("struct point[3]", 48)
    assert sizes["ok"] == ("_Bool", 1)
    # padding: after kind, after temp, after count, after samples, inside each point, ...
    assert layout.padding == ((1, 1), (4, 4), (20, 4), (68, 4), (76, 4), (92, 4),
                              (108, 4), (124, 4), (137, 3), (146, 6))
    marker, seq = layout.lock_offsets or (-1, -1)
    assert (marker, seq) == (147, 148)  # the trailing run, like STU's 25 and 26


def test_check_agrees_with_the_compiler(layout: Layout, cc: str) -> None:
    report = layout.check(cc)
    assert report.size == 152 and report.align == 8
    assert report.offsets == len(layout.members) == 27


STRUCTS = {
    "packed attribute": ("""
        #include <stdint.h>
        struct __attribute__((packed)) wire { uint8_t tag; uint32_t len; uint16_t crc;
                                              double v; char id[3]; };""", "struct wire", 18),
    "packed typedef": ("""
        typedef struct { char a; int b; short c; } __attribute__((__packed__)) P;""", "P", 7),
    "pragma pack push/pop": ("""
        #pragma pack(push, 2)
        struct inner { char a; double b; int c; };
        #pragma pack(pop)
        struct outer { char x; struct inner in; double z; };""", "outer", 24),
    "pragma pack(1) nested": ("""
        #pragma pack(1)
        struct p1 { char a; long long b; struct { char c; short d; } s[2]; };
        #pragma pack()""", "struct p1", 15),
    "enums, bool, char, 2-D arrays": ("""
        #include <stdbool.h>
        enum color { RED, GREEN = 5, BLUE };
        typedef enum { NEG = -1, POS = 1 } sign_t;
        struct misc { enum color c; sign_t s; bool on; char grade; short m[2][3];
                      char names[3][5]; unsigned char raw[3]; };""", "struct misc", 40),
    "anonymous struct member": ("""
        struct anon { int a; struct { char b; double c; }; short d; };""", "anon", 32),
    "every integer type": ("""
        #include <stddef.h>
        #include <stdint.h>
        #include <wchar.h>
        #include <sys/types.h>
        struct ints { signed char a; unsigned char b; short c; unsigned short d; int e;
            unsigned f; long g; unsigned long h; long long i; unsigned long long j;
            size_t k; ssize_t l; intptr_t m; uintptr_t n; ptrdiff_t o; wchar_t p;
            int_least16_t q; uint_fast8_t r; intmax_t s; int8_t t; uint64_t u; float v;
            double w; };""", "struct ints", 136),
    "macros and conditionals": ("""
        #define LEN 10
        #define TOTAL (LEN * 2 + 1)
        #if 0
        struct cond { int gone; };
        #elif defined(LEN) && LEN > 5
        struct cond { char a[TOTAL]; int v[LEN / 2]; short w[LEN % 3 + 1]; };
        #else
        struct cond { double wrong; };
        #endif
        #ifdef __cplusplus
        extern "C" {
        #endif
        static inline int twice(int x) { return 2 * x; }
        extern int counter;
        #ifdef __cplusplus
        }
        #endif""", "struct cond", 48),
}


@pytest.mark.parametrize("what", list(STRUCTS))
def test_check_agrees_for_many_structs(what: str, cc: str) -> None:
    source, name, size = STRUCTS[what]
    layout = Layout.from_c(textwrap.dedent(source), name)
    assert layout.size == size
    report = layout.check(cc)
    assert report.size == size and report.offsets == len(layout.members) > 0


def test_long_arrays_of_structs_are_checked_and_shown_by_sample(cc: str) -> None:
    layout = Layout.from_c("struct pt { int a; char b; };"
                           " struct big { char h; struct pt arr[20]; double d[100]; };", "big")
    assert layout.size == 968 and len(layout.members) == 1 + 1 + 20 * 3 + 1
    assert layout.field("arr[19].b").offset == 4 + 19 * 8 + 4
    report = layout.check(cc)  # h, arr, arr[0..2] and arr[19] with their members, d
    assert report.offsets == 1 + 1 + 4 * 3 + 1
    table = layout.table()
    assert "arr[3..18] (same layout, every 8 bytes)" in table
    assert "arr[19].b" in table and "arr[10].a" not in table


def test_check_fails_when_the_compiler_lays_out_differently(layout: Layout, cc: str) -> None:
    with pytest.raises(LayoutCheckError) as info:
        layout.check(cc, cflags=["-fpack-struct=1"])  # the compiler now packs every struct
    message = str(info.value)
    assert "sizeof is 114 with" in message and "152 here" in message
    assert "\n" not in message


def test_check_fails_when_the_probe_does_not_compile(layout: Layout) -> None:
    with pytest.raises(LayoutCheckError, match="could not compile"):
        layout.check("false")
    with pytest.raises(LayoutCheckError, match="cannot run the C compiler"):
        layout.check("/nonexistent/cc")


REFUSED = {
    "pointer": ("struct s { int a; char *p; };", "field p is a pointer (char *)"),
    "function pointer": ("struct s { int a; void (*cb)(int); };",
                         "field cb is a function pointer"),
    "bitfield": ("struct s { int a; unsigned flag : 3; };", "field flag is a bitfield"),
    "flexible array": ("struct s { int n; int data[]; };",
                       "field data is a flexible array member"),
    "zero-length array": ("struct s { int n; int data[0]; };",
                          "field data is a zero-length array"),
    "union member": ("struct s { int n; union { int i; float f; } u; };",
                     "field u is a union"),
    "anonymous union": ("struct s { int n; union { int i; float f; }; };",
                        "field i is in an anonymous union: unions are not supported"),
    "long double": ("struct s { int n; long double x; };", "field x is a long double"),
    "complex": ("struct s { float _Complex c; };", "field c has type"),
    "pointer in a nested array": ("struct in { int *p; }; struct s { struct in a[2]; };",
                                  "field a[0].p is a pointer"),
    "incomplete struct": ("struct q; struct s { int a; struct q x; };",
                          "<source>:1:38: error: field 'x' has incomplete type"),
    "empty struct": ("struct s {};", "struct s has no members"),
}


@pytest.mark.parametrize("what", list(REFUSED))
def test_refused_with_a_clear_error(what: str) -> None:
    source, needle = REFUSED[what]
    with pytest.raises(LayoutError) as info:
        Layout.from_c(source, "struct s")
    message = str(info.value)
    assert needle in message and (message.startswith("struct s") or "error" in message)
    assert "\n" not in message


@pytest.mark.parametrize(("source", "name", "needle"), [
    ("struct a { int x; };", "nope", "no struct 'nope' in <source> (it declares: struct a)"),
    ("union u { int x; };", "union u", "union u is a union"),
    ("struct a { int x; }\nstruct b { int y };", "struct a", "<source>:2:1: error: expected"),
    ("struct a {\n  int x;\n  mystery_t y;\n};", "struct a",
     "<source>:3:3: error: unknown type name 'mystery_t'"),
    ("struct a { int x; };", "  ", "no struct name given"),
])
def test_bad_declarations(source: str, name: str, needle: str) -> None:
    with pytest.raises(LayoutError) as info:
        Layout.from_c(source, name)
    assert needle in str(info.value)


def test_a_typedef_a_tag_and_a_struct_name_are_the_same_layout(header: Path) -> None:
    names = ["mixed_t", "struct mixed", "mixed"]
    layouts = [Layout.from_file(header, n) for n in names]
    assert {(lay.size, tuple(lay.members)) for lay in layouts} == {
        (layouts[0].size, tuple(layouts[0].members))}


def test_struct_stu_from_the_core_header_is_student(tmp_path: Path) -> None:
    stu = Layout.from_file(CSRC / "mmapipc.h", "struct STU")  # a whole header, prototypes too
    assert (stu.size, stu.padding, stu.lock_offsets) == (28, ((25, 3),), STUDENT.lock_offsets)
    path = tmp_path / "stu"
    with Writer(path) as writer, Reader(path, layout=stu) as reader:
        writer.write(Student(7, "abc", "m"))
        assert stu.to_dict(reader.read()) == {"id": 7, "name": "abc", "sex": "m"}
        assert reader.stats["seqlock_reads"] >= 1  # one seq lock, whichever codec wrote
    assert stu.encode({"id": 7, "name": "abc", "sex": "m"}) == Student(7, "abc", "m").to_bytes()


# ---- records ---------------------------------------------------------------------------


def test_records_encode_and_decode(layout: Layout) -> None:
    for rec in records(20, seed=1):
        data = layout.encode(rec)
        assert len(data) == layout.size
        decoded = layout.decode(data)
        assert layout.to_dict(decoded) == rec
        assert layout.decode_dict(data) == rec
        assert decoded == layout.from_dict(rec) == layout.Record(**rec)
        assert layout.encode(decoded) == data
        for off, length in layout.padding:
            assert data[off:off + length] == bytes(length)  # padding is zero


def test_record_class(layout: Layout) -> None:
    Rec = layout.Record
    rec = Rec(kind=7, name="héllo", pos={"x": 3, "z": 0.5}, samples=(1, 2, 3, 4, 5),
              track=[{"y": 9}] * 3, ok=True, ratio=0.1)
    assert isinstance(rec, LayoutRecord) and type(rec).__name__ == "mixed_t"
    assert rec.kind == 7 and rec.temp == 0 and rec.name == "héllo"
    assert rec.pos.x == 3 and rec.pos.z == 0.5 and rec.track[2].y == 9
    assert rec.samples == (1, 2, 3, 4, 5) and rec.ok is True
    assert rec.ratio == f32(0.1) != 0.1  # what a C reader of the float sees
    assert rec.as_dict()["pos"] == {"x": 3, "y": 0, "z": 0.5}
    assert rec.replace(kind=8).kind == 8 and rec.kind == 7
    moved = layout.with_value(rec, "track[1].z", 2.5)
    assert moved.track[1].z == 2.5 and moved.track[0].z == 0.0 and rec.track[1].z == 0.0
    assert Rec(7).kind == 7  # positional, in declaration order
    with pytest.raises(AttributeError, match="immutable"):
        rec.kind = 1
    with pytest.raises(AttributeError):
        rec.pos.x = 1
    assert hash(rec) == hash(Rec.from_bytes(rec.to_bytes()))
    assert rec.pos.to_bytes() == struct.pack("=hh4xd", 3, 0, 0.5)  # a nested struct alone
    with pytest.raises(TypeError, match="no field 'nope'"):
        Rec(nope=1)


@pytest.mark.parametrize(("fields", "error", "needle"), [
    ({"kind": 256}, ValueError, "kind must be in the uint8_t range 0..255, got 256"),
    ({"kind": -1}, ValueError, "kind must be in the uint8_t range 0..255"),
    ({"temp": -32769}, ValueError, "temp must be in the int16_t range -32768..32767"),
    ({"stamp": 2**63}, ValueError, "stamp must be in the int64_t range"),
    ({"count": 2**32}, ValueError, "count must be in the uint32_t range 0..4294967295"),
    ({"kind": 1.5}, TypeError, "kind must be an int, not float"),
    ({"kind": True}, TypeError, "kind must be an int, not bool"),
    ({"value": "x"}, TypeError, "value must be a float, not str"),
    ({"ratio": 1e39}, ValueError, "ratio must be within +-3.4028234663852886e+38"),
    ({"name": "x" * 16}, ValueError,
     "name must be at most 15 bytes in UTF-8 (the C field is char[16] with its NUL), got 16"),
    ({"name": "é" * 8}, ValueError, "name must be at most 15 bytes in UTF-8"),
    ({"name": "a\0b"}, ValueError, "name must not contain a NUL byte"),
    ({"name": 5}, TypeError, "name must be str or bytes"),
    ({"samples": [1, 2]}, ValueError, "samples must have 5 elements (int32_t[5]), got 2"),
    ({"samples": [1, 2, 3, 4, 2**31]}, ValueError, "samples[4] must be in the int32_t range"),
    ({"samples": 5}, TypeError, "samples must be a list or tuple of 5"),
    ({"pos": {"x": 40000}}, ValueError, "pos.x must be in the int16_t range"),
    ({"pos": {"w": 1}}, ValueError, "unknown field pos.w (struct point has x, y, z)"),
    ({"pos": 3}, TypeError, "pos must be a point record or a dict"),
    ({"track": [{}, {"z": "no"}, {}]}, TypeError, "track[1].z must be a float"),
    ({"track": [{}] * 4}, ValueError, "track must have 3 elements (struct point[3]), got 4"),
    ({"ok": 2}, TypeError, "ok must be a bool (or 0 or 1)"),
])
def test_validation_names_the_field_and_the_limit(
        layout: Layout, fields: dict[str, Any], error: type[Exception], needle: str) -> None:
    with pytest.raises(error) as info:
        layout.Record(**fields)
    assert needle in str(info.value)
    with pytest.raises(error) as info:
        layout.encode(fields)
    assert needle in str(info.value)


def test_unknown_field_in_a_dict(layout: Layout) -> None:
    with pytest.raises(ValueError, match="unknown field nope"):
        layout.encode({"kind": 1, "nope": 2})


def test_bytes_and_non_utf8_text(layout: Layout) -> None:
    rec = layout.Record(name=b"\xff\xfeab")
    assert rec.name == "\udcff\udcfeab"
    assert rec.to_bytes()[32:37] == b"\xff\xfeab\0"
    # A C writer's name of 16 bytes has no NUL: all 16 are read, as C's %s would.
    raw = bytearray(layout.encode({}))
    raw[32:48] = b"y" * 16
    assert layout.decode(bytes(raw)).name == "y" * 16


MIXED = Layout.from_c(HEADER, "mixed_t")


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=152, max_size=152))
def test_decode_never_raises(data: bytes) -> None:
    layout = MIXED
    rec = layout.decode(data)
    again = layout.decode(layout.encode(rec))  # canonical: NUL-cut text, zero padding
    assert again == rec
    assert isinstance(json.dumps(layout.to_dict(rec)), str)


def test_fields_named_like_methods() -> None:
    layout = Layout.from_c("struct s { int as_dict; int replace; int from; int __pad;"
                           " short _make; };", "struct s")
    rec = layout.Record(as_dict=1, replace=2, _make=6, **{"from": 3, "__pad": 4})
    assert getattr(rec, "as_dict") == 1 and getattr(rec, "from") == 3  # noqa: B009
    assert getattr(rec, "__pad") == 4
    assert layout.to_dict(rec) == {"as_dict": 1, "replace": 2, "from": 3, "__pad": 4,
                                   "_make": 6}
    assert layout.decode(layout.encode(rec)) == rec
    assert layout.line(rec) == b"as_dict=1\treplace=2\tfrom=3\t__pad=4\t_make=6\n"


def test_enum_names_and_char(cc: str) -> None:
    layout = Layout.from_c("enum color { RED, GREEN = 5 }; struct s { enum color c; char g; };",
                           "struct s")
    rec = layout.Record(c="GREEN", g="x")
    assert rec.c == 5 and rec.g == "x"
    assert layout.decode(layout.encode({"g": ""})).g == ""  # a NUL char
    with pytest.raises(ValueError, match="c must be one of RED, GREEN or an integer"):
        layout.Record(c="BLUE")
    with pytest.raises(ValueError, match="g must be one byte"):
        layout.Record(g="xy")


# ---- C programs and Python, both ways ----------------------------------------------------


def test_c_writes_python_reads(layout: Layout, cprogs: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    for k, rec in enumerate(records(6, seed=2)):
        garbage = "0xA5" if k % 2 else "0"  # padding that looks like a locked record, or zero
        subprocess.run([str(cprogs["writer"]), str(path), garbage, *writer_args(rec)],
                       check=True)
        with Reader(path, layout=layout) as reader:
            got = reader.read()
        assert layout.to_dict(got) == rec, k


def test_python_writes_c_reads(layout: Layout, cprogs: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    with Writer(path, layout=layout) as writer:
        for rec in records(6, seed=3):
            writer.write(layout.Record.from_dict(rec))
            out = subprocess.run([str(cprogs["reader"]), str(path)], check=True,
                                 capture_output=True).stdout
            assert parse_c_output(out) == rec


def test_python_dicts_write_and_the_c_reader_sees_the_bytes(
        layout: Layout, cprogs: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    rec = records(0, seed=0)[0]
    writer: Writer[Any] = Writer(path, layout=layout)  # Writer[LayoutRecord] takes dicts too
    with writer:
        writer.write(rec)  # a plain dict
        with Reader(path, layout=layout) as reader:
            assert layout.to_dict(reader.read()) == rec
            assert reader.stats["seqlock_reads"] >= 1 and reader.stats["fallback_reads"] == 0
    out = subprocess.run([str(cprogs["reader"]), str(path)], check=True,
                         capture_output=True).stdout
    assert parse_c_output(out) == rec
    data = path.read_bytes()
    marker, _ = layout.lock_offsets or (0, 0)
    assert data[marker] == 0xA6  # the writer's seq lock lives in padding the C reader skips


# ---- the seq lock, the fallback and the SIGBUS guard -------------------------------------


def test_seqlock_in_a_middle_padding_run(tmp_path: Path) -> None:
    layout = Layout.from_c("struct s { char a; int b; };", "struct s")
    assert layout.padding == ((1, 3),) and layout.lock_offsets == (1, 2)
    path = tmp_path / "f"
    with Writer(path, layout=layout) as writer:
        writer.write(layout.from_dict({"a": "x", "b": -1}))
        with Reader(path, layout=layout) as reader:
            for n in range(5):
                writer.write(layout.from_dict({"a": "x", "b": n}))
                assert reader.read().b == n
            assert reader.stats["seqlock_reads"] >= 6
            assert reader.stats["fallback_reads"] == 0
    data = path.read_bytes()
    assert data[0] == ord("x") and struct.unpack("=i", data[4:]) == (4,)
    assert data[1] == 0xA6  # the marker, in padding


@pytest.mark.parametrize(("source", "padding"), [
    ("struct s { char c; int a; short b; } __attribute__((packed));", ()),
    ("struct s { int a; short b; };", ((6, 2),)),  # two bytes: no room for marker and seq
])
def test_without_room_for_the_seqlock_readers_compare_copies(
        tmp_path: Path, source: str, padding: tuple[tuple[int, int], ...]) -> None:
    layout = Layout.from_c(source, "struct s")
    assert layout.padding == padding and layout.lock_offsets is None
    path = tmp_path / "f"
    with Writer(path, layout=layout) as writer, Reader(path, layout=layout) as reader:
        for n in range(5):
            writer.write(layout.from_dict({"a": 1, "b": n}))
            assert reader.read().b == n
        assert reader.stats["seqlock_reads"] == 0 and reader.stats["fallback_reads"] >= 5
    assert path.stat().st_size == layout.size


def test_truncation_under_a_reader_raises_and_recovers(layout: Layout, tmp_path: Path) -> None:
    path = tmp_path / "f"
    rec = layout.Record.from_dict(records(0, seed=0)[0])
    with Writer(path, layout=layout) as writer, Reader(path, layout=layout) as reader:
        writer.write(rec)
        assert reader.read() == rec
        for size in (0, 10):
            os.truncate(path, size)
            with pytest.raises(FileTooShortError) as info:
                reader.read()
            assert "152-byte" in str(info.value) and info.value.filename == str(path)
            if size == 0:  # no page left under the mapping: the store faults
                with pytest.raises(FileTooShortError):
                    writer.write(rec)
            os.truncate(path, layout.size)
            writer.write(rec.replace(kind=size % 256))
            assert reader.read().kind == size % 256


def test_short_file_refused_at_open(layout: Layout, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\0" * 28)  # a struct STU's worth: too short for struct mixed
    with pytest.raises(FileTooShortError, match="28 bytes, shorter than the 152-byte record"):
        Reader(path, layout=layout)


def test_read_loop_reports_truncation_once_and_resumes(layout: Layout, tmp_path: Path) -> None:
    path = tmp_path / "f"
    with Writer(path, layout=layout) as writer:
        writer.write(layout.from_dict({"kind": 1}))
        code = textwrap.dedent(f"""
            import os, sys
            from mmapipc import Layout, read_loop
            layout = Layout.from_c({HEADER!r}, "mixed_t")
            n = 0
            def fmt(rec):
                global n
                n += 1
                if n == 2:
                    os.truncate({str(path)!r}, 0)
                return layout.line(rec)
            read_loop({str(path)!r}, 0.01, 3, format=fmt, layout=layout)
        """)
        # The loop truncates the file itself after its second line; the test restores it.
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert proc.stderr is not None
        first_err = proc.stderr.readline()
        assert b"shorter" in first_err or b"truncated" in first_err
        os.truncate(path, layout.size)
        writer.write(layout.from_dict({"kind": 2}))
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert b"readable again" in err and err.count(b"\n") == 1
    assert out.count(b"\n") == 3  # two lines, then the third after recovery


def test_read_loop_with_a_layout_prints_field_pairs(layout: Layout, tmp_path: Path) -> None:
    path = tmp_path / "f"
    sink = io.BytesIO()
    with Writer(path, layout=layout) as writer:
        writer.write(layout.from_dict({"kind": 3, "pos": {"x": -2}, "samples": [1, 2, 3, 4, 5],
                                       "name": "n"}))
        read_loop(path, 0, 1, sink, layout=layout)
    fields = dict(p.split("=", 1) for p in sink.getvalue().decode().rstrip("\n").split("\t"))
    assert fields["kind"] == "3" and fields["pos.x"] == "-2" and fields["name"] == "n"
    assert fields["samples"] == "1,2,3,4,5" and fields["track[2].z"] == "0.0"
    assert fields["ok"] == "false" and len(fields) == 22


# ---- torn records ---------------------------------------------------------------------

PERIOD = 997
TORN_WRITER = f"""
import sys
from mmapipc import Layout, Writer
layout = Layout.from_c({HEADER!r}, "mixed_t")
def numbered(n):
    return layout.encode({{"kind": n % 256, "temp": -n % 30000, "stamp": n, "count": n,
        "value": n / 4, "name": "n%d" % n + "abcdefgh"[: n % 9],
        "samples": [n + k for k in range(5)], "pos": {{"x": n % 1000, "z": -n / 2}},
        "track": [{{"y": n % 7 + t, "z": n * t}} for t in range(3)], "ok": n % 2 == 1,
        "tail": n}})
data = [numbered(n) for n in range({PERIOD})]
with Writer(sys.argv[1], layout=layout) as w:
    write = w.write_bytes
    write(data[0])
    print("ready", flush=True)
    while True:
        for d in data:
            write(d)
"""


def consistent(rec: LayoutRecord) -> bool:
    d: dict[str, Any] = LayoutRecord.as_dict(rec)
    n = d["stamp"]
    return bool(
        d["kind"] == n % 256 and d["temp"] == -n % 30000 and d["count"] == n
        and d["value"] == n / 4 and d["name"] == f"n{n}" + "abcdefgh"[: n % 9]
        and d["samples"] == [n + k for k in range(5)]
        and d["pos"] == {"x": n % 1000, "y": 0, "z": -n / 2}
        and d["track"] == [{"x": 0, "y": n % 7 + t, "z": float(n * t)} for t in range(3)]
        and d["ok"] == (n % 2 == 1) and d["tail"] == n and d["ratio"] == 0.0)


def test_no_torn_records_from_a_writer_of_any_layout(
        layout: Layout, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    path = tmp_path / "f"
    writer = subprocess.Popen([sys.executable, "-c", TORN_WRITER, str(path)],
                              stdout=subprocess.PIPE)
    procs.append(writer)
    assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
    torn = torn_raw = reads = 0
    seen: set[int] = set()
    with Reader(path, layout=layout) as reader:
        while reads < 30000 or len(seen) < 100:
            rec = reader.read()
            reads += 1
            seen.add(LayoutRecord.as_dict(rec)["stamp"])
            torn += not consistent(rec)
            torn_raw += not consistent(reader.read_raw())
            if reads > 2_000_000:
                break
        stats = reader.stats
    print(f"\n{reads} reads of {len(seen)} records: torn read()={torn},"
          f" read_raw()={torn_raw}; {stats}")
    assert torn == 0
    assert len(seen) >= 100 and stats["seqlock_reads"] > 0


# ---- the command line ----------------------------------------------------------------------


def set_args(rec: dict[str, Any]) -> list[str]:
    """--set options for every field of a record."""
    out = []
    for key in ("kind", "temp", "stamp", "count", "name", "tail"):
        out += ["--set", f"{key}={rec[key]}"]
    out += ["--set", f"value={rec['value']!r}", "--set", f"ratio={rec['ratio']!r}"]
    out += ["--set", "samples=" + ",".join(str(v) for v in rec["samples"])]
    out += ["--set", f"ok={'true' if rec['ok'] else 'false'}"]
    for k in ("x", "y", "z"):
        out += ["--set", f"pos.{k}={rec['pos'][k]!r}"]
        for t in range(3):
            out += ["--set", f"track[{t}].{k}={rec['track'][t][k]!r}"]
    return out


def test_cli_write_then_c_reads(header: Path, cprogs: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    for rec in records(2, seed=4):
        proc = run_cli("write", path, "--struct-file", header, "--struct", "mixed_t",
                       "--count", "1", *set_args(rec))
        assert proc.returncode == 0, proc.stderr
        out = subprocess.run([str(cprogs["reader"]), str(path)], check=True,
                             capture_output=True).stdout
        assert parse_c_output(out) == rec


def test_cli_increment_wraps_at_the_c_range(header: Path, cprogs: dict[str, Path],
                                            tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    proc = run_cli("write", path, "--struct-file", header, "--struct", "struct mixed",
                   "--set", "count=4294967294", "--set", "name=loop",
                   "--increment", "count", "--count", "3", "--interval", "0")
    assert proc.returncode == 0, proc.stderr
    got = parse_c_output(subprocess.run([str(cprogs["reader"]), str(path)], check=True,
                                        capture_output=True).stdout)
    assert got["count"] == 0 and got["name"] == "loop"  # 4294967294, 4294967295, 0
    proc = run_cli("write", path, "--struct-file", header, "--struct", "mixed",
                   "--set", "pos.x=32766", "--increment", "pos.x", "--count", "3",
                   "--interval", "0")
    assert proc.returncode == 0, proc.stderr
    got = parse_c_output(subprocess.run([str(cprogs["reader"]), str(path)], check=True,
                                        capture_output=True).stdout)
    assert got["pos"]["x"] == -32768


def test_cli_read_json_and_text_from_a_c_writer(header: Path, layout: Layout,
                                                cprogs: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    rec = records(1, seed=5)[2]
    subprocess.run([str(cprogs["writer"]), str(path), "0", *writer_args(rec)], check=True)
    struct_opts: list[Any] = ["--struct-file", header, "--struct", "mixed_t"]
    proc = run_cli("read", path, *struct_opts, "--count", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == rec
    proc = run_cli("read", path, *struct_opts, "--count", "1")
    pairs = proc.stdout.rstrip(b"\n").split(b"\t")
    assert pairs[0] == b"kind=%d" % rec["kind"]
    assert b"name=" + rec["name"].encode() in pairs
    assert b"pos.z=" + repr(rec["pos"]["z"]).encode() in pairs
    assert b"samples=" + ",".join(map(str, rec["samples"])).encode() in pairs
    assert b"track[1].y=%d" % rec["track"][1]["y"] in pairs
    assert len(pairs) == len(layout.leaves) == 22
    proc = run_cli("read", path, *struct_opts, "--count", "1", "--format",
                   "{count}|{pos.x}|{track[2].z:.3e}|{samples[4]}|{name!r}")
    assert proc.stdout.decode() == (f"{rec['count']}|{rec['pos']['x']}|"
                                    f"{rec['track'][2]['z']:.3e}|{rec['samples'][4]}|"
                                    f"{rec['name']!r}\n")


def test_cli_watch_prints_each_change(header: Path, layout: Layout, tmp_path: Path,
                                      procs: list[subprocess.Popen[bytes]]) -> None:
    path = tmp_path / "rec.bin"
    with Writer(path, layout=layout) as writer:
        writer.write(layout.from_dict({"stamp": 1}))
        watch = start_cli("watch", path, "--struct-file", header, "--struct", "mixed_t",
                          "--count", "2", "--timeout", "60", "--json")
        procs.append(watch)
        assert watch.stdout is not None
        assert json.loads(watch.stdout.readline())["stamp"] == 1
        writer.write(layout.from_dict({"stamp": 2, "pos": {"y": 5}}))
        out, err = watch.communicate(timeout=60)
    assert watch.returncode == 0, err
    second = json.loads(out)
    assert second["stamp"] == 2 and second["pos"]["y"] == 5


def test_cli_dump(header: Path, layout: Layout, tmp_path: Path) -> None:
    path = tmp_path / "rec.bin"
    rec = records(0, seed=0)[0]
    with Writer(path, layout=layout) as writer:
        writer.write(layout.from_dict(rec))
    proc = run_cli("dump", path, "--struct-file", header, "--struct", "mixed_t")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith("kind=255\ttemp=-32768\t")
    raw = path.read_bytes()
    rows: dict[str, list[tuple[int, bytes]]] = {}
    for line in lines[2:-1]:
        parts = line.split()
        rows.setdefault(parts[1], []).append((int(parts[0]), bytes.fromhex("".join(parts[2:]))))
    for leaf in layout.leaves:
        [(offset, data)] = rows[leaf.name]
        assert offset == leaf.offset and data == raw[offset:offset + leaf.size]
    assert [off for off, _ in rows["(padding)"]] == [off for off, _ in layout.padding]
    assert lines[-1].split() == ["152", "(size)"]


def test_cli_layout_table_and_check(header: Path, layout: Layout) -> None:
    proc = run_cli("layout", header, "mixed_t", "--check")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.decode()
    rows = [line.split() for line in text.splitlines()[2:]]
    by_name = {row[-1]: row for row in rows if row and row[0].isdigit()}
    for member in layout.members:
        row = by_name[member.name]
        assert int(row[0]) == member.offset and int(row[1]) == member.size
    paddings = [(int(r[0]), int(r[1])) for r in rows if r and r[-1] == "(padding)"]
    assert tuple(paddings) == layout.padding
    assert "marker byte at 147, 16-bit sequence at 148-149" in text
    assert "agrees: size 152, alignment 8, 27 member offsets" in text


def test_cli_layout_failures(header: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.h"
    bad.write_text("struct bad {\n  int a;\n  char *p;\n};\n")
    assert_clean_error(run_cli("layout", bad, "bad"), "mmapipc layout:",
                       "field p is a pointer")
    packed = run_cli("layout", header, "mixed_t", "--check", "--cc", "cc -fpack-struct=1")
    assert packed.returncode == 0, packed.stderr  # --cc lays out and checks: both packed
    assert b"mixed_t: 114 bytes" in packed.stdout and b"agrees: size 114" in packed.stdout
    assert_clean_error(run_cli("layout", header, "nope"), "no struct 'nope'")
    assert_clean_error(run_cli("layout", tmp_path / "missing.h", "x"),
                       "No such file or directory")
    syntax = tmp_path / "syntax.h"
    syntax.write_text("struct a {\n  int x;\n  int = 3;\n};\n")
    assert_clean_error(run_cli("layout", syntax, "a"), "syntax.h:3:7: error: expected")


@pytest.fixture()
def written(header: Path, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "rec.bin"
    proc = run_cli("write", path, "--struct-file", header, "--struct", "mixed_t", "--count",
                   "1", "--set", "kind=1")
    assert proc.returncode == 0, proc.stderr
    yield path


@pytest.mark.parametrize(("args", "needles"), [
    (["--set", "nope=1"], ["unknown field nope: mixed_t has kind, temp"]),
    (["--set", "pos.w=1"], ["unknown field pos.w: pos (struct point) has x, y, z"]),
    (["--set", "track[3].x=1"], ["unknown field track[3].x: track has 3 elements"]),
    (["--set", "kind=300"], ["kind must be in the uint8_t range 0..255, got 300"]),
    (["--set", "kind=abc"], ["kind (uint8_t) needs an integer, got 'abc'"]),
    (["--set", "value=abc"], ["value (double) needs a number"]),
    (["--set", "ok=maybe"], ["ok (bool) needs true or false"]),
    (["--set", "samples=1,2"], ["samples must have 5 elements"]),
    (["--set", "name=" + "x" * 16], ["name must be at most 15 bytes"]),
    (["--set", "pos=1"], ["pos is a struct (struct point): set its fields"]),
    (["--set", "track=1"], ["track is struct point[3]: set its elements one by one"]),
    (["--set", "kind"], ["--set needs FIELD=VALUE"]),
    (["--set", "a..b=1"], ["not a field path"]),
    (["--increment", "value"], ["value is double: only an integer field"]),
    (["--increment", "nope"], ["unknown field nope"]),
    (["--id", "3"], ["--id: for struct STU only"]),
])
def test_cli_write_bad_values(header: Path, tmp_path: Path, args: list[str],
                              needles: list[str]) -> None:
    path = tmp_path / "never.bin"
    proc = run_cli("write", path, "--struct-file", header, "--struct", "mixed_t", "--count",
                   "1", *args)
    assert_clean_error(proc, "mmapipc write:", *needles)
    assert not path.exists()  # refused before the file was touched


@pytest.mark.parametrize(("command", "args", "needles"), [
    ("read", ["--struct-file", "@H"], ["--struct-file needs --struct NAME"]),
    ("read", ["--struct", "mixed_t"], ["--struct needs --struct-file HEADER"]),
    ("watch", ["--struct-file", "@H", "--struct", "nope"], ["no struct 'nope' in"]),
    ("dump", ["--struct-file", "/nonexistent.h", "--struct", "x"],
     ["/nonexistent.h: No such file or directory"]),
    ("read", ["--struct-file", "@H", "--struct", "mixed_t", "--format", "{nope}"],
     ["bad --format '{nope}': unknown field 'nope'"]),
    ("read", ["--struct-file", "@H", "--struct", "mixed_t", "--format", "{pos.w}"],
     ["bad --format '{pos.w}': unknown field 'pos.w'"]),
    ("watch", ["--struct-file", "@H", "--struct", "mixed_t", "--format", "{samples[7]}"],
     ["bad --format '{samples[7]}'", "out of range"]),
    ("read", ["--struct-file", "@H", "--struct", "mixed_t", "--format", "{kind"],
     ["bad --format"]),
    ("write", ["--set", "kind=1"], ["--set and --increment need --struct-file"]),
])
def test_cli_bad_struct_options(written: Path, header: Path, command: str, args: list[str],
                                needles: list[str]) -> None:
    args = [str(header) if a == "@H" else a for a in args]
    proc = run_cli(command, written, *args, "--count", "1") if command != "dump" else run_cli(
        command, written, *args)
    assert_clean_error(proc, f"mmapipc {command}:", *needles)


def test_cli_record_too_short_for_the_struct(header: Path, tmp_path: Path) -> None:
    path = tmp_path / "stu.bin"
    assert run_cli("write", path, "--count", "1").returncode == 0  # a 28-byte struct STU
    proc = run_cli("read", path, "--struct-file", header, "--struct", "mixed_t", "--count", "1")
    assert_clean_error(proc, "28 bytes, shorter than the 152-byte record")


def test_cli_format_for_struct_stu(tmp_path: Path) -> None:
    path = tmp_path / "stu.bin"
    assert run_cli("write", path, "--count", "1", "--id", "41").returncode == 0
    proc = run_cli("read", path, "--count", "1", "--format", "{name}:{id:05d}")
    assert proc.returncode == 0 and proc.stdout == b"xiaoming:00041\n"
