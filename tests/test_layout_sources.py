"""Where layouts come from: the compiler's DWARF, cffi's parser without a compiler, and
the guards around both (regular files only, size limits, safe templates, field names);
struct STU is a layout like any other, whose records are Students."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_clean_error, run_cli

import mmapipc
from mmapipc import Layout, LayoutCheckError, LayoutError, LayoutRecord, Reader, Student, Writer
from mmapipc.record import STUDENT

PLAIN = """
/* a plain header: comments and integer macros only */
#define LEN 6
struct pt { short x; double y; };
typedef struct rec { char tag; struct pt p[2]; char name[LEN]; unsigned v; } rec_t;
"""


def test_the_compiler_and_cffi_agree_on_plain_declarations() -> None:
    dwarf = Layout.from_c(PLAIN, "rec_t")
    plain = Layout.from_c(PLAIN, "rec_t", use_compiler=False)
    assert (dwarf.origin, plain.origin) == ("dwarf", "cffi")
    assert dwarf.as_json()["fields"] == plain.as_json()["fields"]
    assert (dwarf.size, dwarf.align) == (plain.size, plain.align) == (56, 8)


@pytest.mark.parametrize(("source", "needle"), [
    ("#include <stdint.h>\nstruct s { int32_t a; };", "2: #include needs a C compiler"),
    ("#if 1\nstruct s { int a; };\n#endif", "1: #if needs a C compiler"),
    ("#define F(x) x\nstruct s { int a; };", "1: #define needs a C compiler"),
    ("#pragma pack(1)\nstruct s { char c; int a; };", "1: #pragma needs a C compiler"),
    ("struct s { int a; } __attribute__((packed));", "1: __attribute__ needs a C compiler"),
])
def test_without_a_compiler_a_header_needing_one_is_refused(source: str, needle: str) -> None:
    with pytest.raises(LayoutError) as info:
        Layout.from_c("/* x */\n" + source if "#include" in source else source, "struct s",
                      use_compiler=False)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_no_compiler_on_the_path_falls_back_to_cffi(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), "CC": ""}
    code = ("from mmapipc.layout import Layout\n"
            "l = Layout.from_c('struct s { char c; double d; };', 's')\n"
            "print(l.origin, l.size)\n"
            "try:\n"
            "    Layout.from_c('#if 1\\nstruct s { int a; };\\n#endif', 's')\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[0] == "cffi 16"
    assert out[1].startswith("LayoutError <source>:1: #if needs a C compiler")


def test_cc_cflags_include_dirs_and_defines(tmp_path: Path) -> None:
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "len.h").write_text("#define EXTRA 3\n")
    header = tmp_path / "h.h"
    header.write_text('#include <len.h>\n'
                      "struct s { char c[EXTRA + N]; int wide; };\n")
    with pytest.raises(LayoutError, match=r"len\.h"):
        Layout.from_file(header, "s")  # no -I: the include is not found
    layout = Layout.from_file(header, "s", include_dirs=[inc], defines={"N": "2"})
    assert layout.size == 12 and layout.field("wide").offset == 8
    assert Layout.from_file(header, "s", include_dirs=[inc], defines=["N=6"]).size == 16
    packed = Layout.from_file(header, "s", include_dirs=[inc], defines=["N=2"],
                              cflags=["-fpack-struct=1"])
    assert packed.size == 9 and packed.check().size == 9  # check() keeps the flags
    env_packed = subprocess.run(
        [sys.executable, "-c", "from mmapipc.layout import Layout; import sys;"
         f" print(Layout.from_file({str(header)!r}, 's', include_dirs=[{str(inc)!r}],"
         " defines=['N=2']).size)"],
        env={**os.environ, "CFLAGS": "-fpack-struct=1"}, capture_output=True, text=True,
        check=True)
    assert env_packed.stdout.strip() == "9"
    with pytest.raises(LayoutError, match="not a macro name"):
        Layout.from_file(header, "s", defines=["-DN=2"])
    with pytest.raises(LayoutError, match="cannot run the C compiler"):
        Layout.from_file(header, "s", cc="/nonexistent/cc")


def test_cli_layout_json_include_and_define(tmp_path: Path) -> None:
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "pt.h").write_text("struct pt { short x; double y; };\n")
    header = tmp_path / "h.h"
    header.write_text("#include <pt.h>\nstruct rec { char tag; struct pt p[2]; int n[N]; };\n")
    proc = run_cli("layout", header, "rec", "--json", "-I", inc, "--define", "N=3")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["name"] == "struct rec" and data["source"] == "dwarf"
    assert (data["size"], data["align"]) == (56, 8)
    paths = {f["path"]: (f["offset"], f["size"], f["type"]) for f in data["fields"]}
    assert paths["p[1].y"] == (32, 8, "double")
    assert paths["p"] == (8, 32, "struct pt[2]")
    assert paths["n"] == (40, 12, "int[3]")
    assert paths["p[0].x"] == (8, 2, "short")
    assert list(data) == ["name", "size", "align", "source", "fields"]
    proc = run_cli("layout", header, "rec", "--json", "--include-dir", inc, "-D", "N=3",
                   "--check")
    assert proc.returncode == 0 and json.loads(proc.stdout) == data
    assert b"agrees: size 56" in proc.stderr
    assert_clean_error(run_cli("layout", header, "rec"), "mmapipc layout:", "pt.h")


def test_header_must_be_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.h"
    os.mkfifo(fifo)
    start = time.monotonic()
    for path in (fifo, Path("/dev/zero"), tmp_path):
        with pytest.raises(LayoutError, match="not a regular file"):
            Layout.from_file(path, "s")
        assert_clean_error(run_cli("layout", path, "s"), "not a regular file")
        assert_clean_error(run_cli("read", tmp_path / "x", "--struct-file", path,
                                   "--struct", "s"), "not a regular file")
    assert time.monotonic() - start < 20
    big = tmp_path / "big.h"
    with open(big, "wb") as f:
        f.truncate(5 << 20)
    with pytest.raises(LayoutError, match="limit of a header"):
        Layout.from_file(big, "s")


def test_import_layout_without_the_compiled_core(tmp_path: Path) -> None:
    """A build tool can lay out structs with the compiler, pyelftools and cffi only."""
    import cffi
    import elftools

    package = Path(mmapipc.__file__).parent
    copy = tmp_path / "mmapipc"
    copy.mkdir()
    for src in package.glob("*.py"):
        (copy / src.name).write_bytes(src.read_bytes())
    sites = sorted({str(Path(m.__file__).resolve().parents[1])  # type: ignore[arg-type]
                    for m in (cffi, elftools)})
    code = (f"import sys; sys.path[:0] = [{str(tmp_path)!r}]; sys.path += {sites!r}\n"
            "import mmapipc.layout\n"
            "from mmapipc.layout import Layout\n"
            "l = Layout.from_c('struct s { char c; double d; };', 's')\n"
            "print(l.size, l.origin, l.check().size)\n"
            "print('mmapipc._mmapipc_cffi' in sys.modules)\n"
            "import mmapipc\n"
            "try:\n"
            "    mmapipc.Reader\n"
            "except ImportError as e:\n"
            "    print('ImportError', e)\n")
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["16 dwarf 16", "False"]
    assert lines[2].startswith("ImportError mmapipc.Reader: mmapipc's compiled core")


# ---- --format: fields and specs only ------------------------------------------------

SENSOR = "struct pt { short x; short y; }; struct s { int id; struct pt p[2]; char name[8]; };"


@pytest.mark.parametrize(("template", "needle"), [
    ("{id.__class__}", "unknown field 'id.__class__': not a struct there"),
    ("{id.__class__.__init__.__globals__}", "not a struct there"),
    ("{p.__class__}", "not a struct there"),
    ("{p[0].__class__}", "unknown field 'p[0].__class__'"),
    ("{name.upper}", "not a struct there"),
    ("{p[0]!a}", "only !s and !r"),
    ("{id:99999999999}", "widths and precisions are at most 1000"),
    ("{id:.{id}}", "no fields inside a format spec"),
    ("{id:>{id}}", "no fields inside a format spec"),
    ("{}", "name the field"),
    ("{0}", "name the field"),
    ("{id[0]}", "not an array there"),
    ("{p[5].x}", "index out of range"),
    ("{p[x]}", "not a field path"),
    ("{id:d:x}", "is not a format spec"),
    ("{name:d}", "Unknown format code 'd'"),
    ("{id", "bad --format"),
])
def test_format_templates_are_limited_to_fields(template: str, needle: str) -> None:
    layout = Layout.from_c(SENSOR, "s")
    with pytest.raises(ValueError) as info:
        layout.formatter(template)
    assert needle in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="bad --format"):
        STUDENT.formatter(template.replace("p[", "name[").replace("{p", "{name"))


def test_format_templates_that_work() -> None:
    layout = Layout.from_c(SENSOR, "s")
    fmt = layout.formatter("{id:05d} {p[1].y:>4} {name!r} {{braces}} {p[0]}")
    rec = layout.Record(id=7, p=[{"x": 1, "y": 2}, {"y": -3}], name="ab")
    assert fmt(rec) == b"00007   -3 'ab' {braces} pt(x=1, y=2)\n"
    assert STUDENT.formatter("{name}:{id:x}:{sex!r}")(Student(255, "n", "f")) == b"n:ff:'f'\n"


def test_cli_format_is_safe(tmp_path: Path) -> None:
    path = tmp_path / "stu"
    assert run_cli("write", path, "--count", "1").returncode == 0
    for template, needle in [("{id.__class__.__mro__}", "not a struct there"),
                             ("{id:99999999999}", "at most 1000"),
                             ("{name.__class__.__init__.__globals__[os].environ}",
                              "not a field path")]:
        assert_clean_error(run_cli("read", path, "--count", "1", "--format", template),
                           "mmapipc read: bad --format", needle)


# ---- field names --------------------------------------------------------------------


@pytest.mark.parametrize("use_compiler", [True, False])
@pytest.mark.parametrize("name", ["__init__", "__slots__", "__eq__", "__class__",
                                  "__mmapipc_values__"])
def test_dunder_field_names_are_refused_in_one_line(name: str, use_compiler: bool) -> None:
    with pytest.raises(LayoutError) as info:
        Layout.from_c(f"struct s {{ int a; int {name}; }};", "s", use_compiler=use_compiler)
    assert f"field {name}: names of the form __x__ are Python's own" in str(info.value)


def test_cli_dunder_field_name(tmp_path: Path) -> None:
    header = tmp_path / "h.h"
    header.write_text("struct s { int __eq__; };\n")
    assert_clean_error(run_cli("layout", header, "s"), "mmapipc layout:", "field __eq__")


# ---- struct STU is a layout ---------------------------------------------------------


def test_student_is_the_record_class_of_the_stu_layout(tmp_path: Path) -> None:
    assert STUDENT.Record is Student and issubclass(Student, LayoutRecord)
    s = Student(7, "abc", "m")
    assert STUDENT.encode(s) == s.to_bytes() == STUDENT.encode(
        {"id": 7, "name": "abc", "sex": "m"})
    assert STUDENT.decode(s.to_bytes()) == s and type(STUDENT.decode(bytes(28))) is Student
    assert LayoutRecord.as_dict(s) == s.as_dict() == {"id": 7, "name": "abc", "sex": "m"}
    assert STUDENT.line(s) == s.c_line() == b"id=7\tname=abc\tm\n"
    assert STUDENT.json_line(s) == b'{"id": 7, "name": "abc", "sex": "m"}\n'
    assert STUDENT.from_assignments(["id=8", "name=x"]) == Student(8, "x", "m")
    assert STUDENT.incrementer("id")(s) == s.replace(id=8)
    assert [f["path"] for f in STUDENT.as_json()["fields"]] == ["id", "name", "sex"]
    assert (STUDENT.size, STUDENT.align, STUDENT.lock_offsets) == (28, 4, (25, 26))
    with pytest.raises(ValueError, match="sex must be exactly one byte"):
        STUDENT.encode({"id": 1, "name": "a", "sex": ""})
    compiled = Layout.from_file(Path(__file__).parents[1] / "csrc" / "mmapipc.h", "struct STU")
    assert compiled.as_json()["fields"] == STUDENT.as_json()["fields"]
    path = tmp_path / "stu"
    with Writer(path, layout=STUDENT) as w, Reader(path) as r:
        w.write(s)
        assert r.read() == s and type(r.read()) is Student


# ---- hostile input ------------------------------------------------------------------


@pytest.mark.parametrize("use_compiler", [True, False])
def test_too_many_values_to_decode_is_refused_quickly(use_compiler: bool) -> None:
    start = time.monotonic()
    with pytest.raises(LayoutError, match="more than 65536 values to decode one by one"):
        Layout.from_c("struct pt { int a; char b; }; struct rec { struct pt arr[2000000]; };",
                      "rec", use_compiler=use_compiler)
    big = Layout.from_c("struct rec { double d[1000000]; };", "rec",
                        use_compiler=use_compiler)  # numbers: one item, however many
    assert big.size == 8_000_000 and len(big.members) == 1
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(("cflags", "needle"), [
    (["-E"], "cannot read the compiler's debug information"),
    (["-fsyntax-only"], "wrote no object file"),
    (["-fno-such-flag"], "unrecognized command-line option"),
])
def test_flags_that_leave_no_debug_information(cflags: list[str], needle: str) -> None:
    with pytest.raises(LayoutError) as info:
        Layout.from_c("struct s { int a; };", "s", cflags=cflags)
    assert needle in str(info.value) and "\n" not in str(info.value)
    # flags that would drop or hide the debug information are overridden
    assert Layout.from_c("struct s { int a; };", "s", cflags=["-g0", "-flto", "-O2"]).size == 4


@pytest.mark.parametrize(("name", "needle"), [
    ("struct s; int x", "not a struct name"),
    ("s[2]", "no struct 's[2]'"),
    ("struct", "no struct 'struct'"),
    ("enum e", "e is an enum"),
])
def test_struct_names_that_are_not_one(name: str, needle: str) -> None:
    with pytest.raises(LayoutError, match=re.escape(needle)):
        Layout.from_c("enum e { A }; struct s { int a; };", name)


def test_header_paths_that_cannot_be_included(tmp_path: Path) -> None:
    odd = tmp_path / 'a"b.h'
    odd.write_text("struct s { int a; };\n")
    with pytest.raises(LayoutError, match="cannot be included"):
        Layout.from_file(odd, "s")
    assert Layout.from_file(odd, "s", use_compiler=False).size == 4


def test_a_compiler_that_hangs_is_killed(tmp_path: Path) -> None:
    """The compiler and what it started (as cc1 is) are killed at the time-out."""
    fake = tmp_path / "slowcc"
    pidfile = tmp_path / "child.pid"
    fake.write_text(f"#!/bin/sh\nsleep 30 &\necho $! > {pidfile}\nwait\n")
    fake.chmod(0o755)
    start = time.monotonic()
    with pytest.raises(LayoutError, match=r"took more than 0\.5 s"):
        Layout.from_c("struct s { int a; };", "s", cc=str(fake), timeout=0.5)
    assert time.monotonic() - start < 5
    child = int(pidfile.read_text())
    for _ in range(100):
        try:  # gone, or a zombie that nobody reaps here (state Z): not running either way
            if Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0] == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.01)
    else:
        pytest.fail(f"the compiler's child {child} outlived the time-out")


@pytest.mark.parametrize(("env", "args", "needle"), [
    ({"CFLAGS": '-I"x'}, [], "cannot read $CFLAGS"),
    ({"CC": 'gcc "'}, [], "cannot read $CC"),
    ({}, ["--cc", ""], "the C compiler command is empty"),
    ({}, ["--cc", "/nonexistent/cc"], "cannot run the C compiler '/nonexistent/cc'"),
    ({"CFLAGS": "-fno-such-flag"}, [], "unrecognized command-line option"),
])
def test_cli_bad_compiler_settings(tmp_path: Path, env: dict[str, str], args: list[str],
                                   needle: str) -> None:
    header = tmp_path / "h.h"
    header.write_text("struct s { int a; };\n")
    proc = subprocess.run([sys.executable, "-m", "mmapipc", "layout", str(header), "s", *args],
                          env={**os.environ, **env}, capture_output=True, check=False,
                          cwd=tmp_path)
    assert_clean_error(proc, "mmapipc layout:", needle)


def test_check_runs_the_headers_code_with_a_time_out(tmp_path: Path) -> None:
    """check() executes what the header makes run (a constructor here): it is stopped."""
    source = ("static void __attribute__((constructor)) spin(void) { for (;;) ; }\n"
              "struct s { int a; };\n")
    layout = Layout.from_c(source, "s")  # laying out compiles only: nothing runs
    start = time.monotonic()
    with pytest.raises(LayoutCheckError, match="the probe did not run"):
        layout.check(timeout=1.0)
    assert time.monotonic() - start < 10


def test_check_with_macros_that_look_like_probe_names() -> None:
    source = ("#define r 5\n#define mm_rec oops\n#define s_text x\n#define i1 {\n"
              "struct s { char t[4]; int a[r]; };\n")
    layout = Layout.from_c(source, "s")
    assert layout.size == 24 and layout.check().values == 1 + 5


@pytest.mark.parametrize(("source", "needle"), [
    ("struct s { int a; ...; };", "1: '...' in a struct or an array size is not C"),
    ("struct s { int a[...]; };", "1: '...' in a struct or an array size is not C"),
    ("struct s { int a; };\nstruct s { int b; };", "duplicate declaration of struct s"),
    ("struct s { char a[0x7fffffffffff]; };", "more than the 16777216-byte limit"),
])
def test_cffi_parser_errors_are_one_line(source: str, needle: str) -> None:
    with pytest.raises(LayoutError) as info:
        Layout.from_c(source, "s", use_compiler=False)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_cli_format_that_fails_on_a_later_record(tmp_path: Path) -> None:
    """{id:c} formats id 10 but not id 2**30: a one-line error when that record comes."""
    path = tmp_path / "stu"
    assert run_cli("write", path, "--count", "1", "--id", str(2**30)).returncode == 0
    assert_clean_error(run_cli("read", path, "--count", "1", "--format", "{id:c}"),
                       "mmapipc read: bad --format '{id:c}': id=1073741824:")


def test_deeply_nested_arrays_of_structs_decode(tmp_path: Path) -> None:
    """Too deep for one generated expression: decoded member by member, the same values."""
    lines = ["struct s0 { int a; };"]
    lines += [f"struct s{k} {{ struct s{k - 1} in[1][1]; char c; }};" for k in range(1, 60)]
    header = tmp_path / "deep.h"
    header.write_text("\n".join(lines) + "\n")
    layout = Layout.from_file(header, "s59")
    data = bytes(range(1, layout.size + 1))
    rec = layout.decode(data)
    plain: Any = LayoutRecord.as_dict(rec)
    for _ in range(59):
        plain = plain["in"][0][0]
    assert plain["a"] == int.from_bytes(data[:4], sys.byteorder)
    canonical = layout.encode(rec)  # padding zeroed
    assert layout.decode(canonical) == rec and layout.check().values == 60
    assert_clean_error(run_cli("layout", header, "s60"), "no struct 's60'")


def test_importing_mmapipc_runs_no_compiler(tmp_path: Path) -> None:
    """struct STU's layout comes from the compiled core: no compiler at import, or for STU."""
    log = tmp_path / "ran"
    spy = tmp_path / "cc"
    spy.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexit 1\n")
    spy.chmod(0o755)
    code = ("import mmapipc, mmapipc.cli\n"
            "from mmapipc.record import STUDENT\n"
            "print(STUDENT.size, STUDENT.table().splitlines()[0])\n")
    env = {**os.environ, "CC": str(spy), "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("28 struct STU: 28 bytes, aligned to 4; laid out by the compiled core")
    assert not log.exists()


@pytest.mark.parametrize(("source", "name", "result"), [
    ("typedef struct pt { short x; int y; } pt_t;", "pt_t", "pt_t"),
    ("typedef struct pt { short x; int y; } pt_t;", "pt", "struct pt"),
    ("typedef struct pt { short x; int y; } pt_t;", "struct pt", "struct pt"),
    ("typedef struct { short x; int y; } anon;", "anon", "anon"),
    ("typedef struct pt { short x; } pt; ", "pt", "pt"),
    ("#define rec struct real\nstruct real { int a; };", "rec", "LayoutError: no struct 'rec'"),
    ("typedef int rec; struct rec { char c; };", "rec", "LayoutError: rec is int, not a struct"),
    ("typedef int rec; struct rec { char c; };", "struct rec", "struct rec"),
    ("struct q; typedef struct q qt;", "qt", "LayoutError: qt is struct q, which is declared"),
    ("struct q;", "q", "LayoutError: no struct 'q'"),
    ("", "q", "LayoutError: no struct 'q' in <source> (it declares: no struct)"),
])
def test_what_a_name_means(source: str, name: str, result: str) -> None:
    """A typedef name first, then a tag, as C's namespaces have them; macros do not count."""
    try:
        got = Layout.from_c(source, name).name
    except LayoutError as e:
        got = f"LayoutError: {e}"
    assert got.startswith(result)


def test_a_struct_of_too_many_members_is_refused_quickly(tmp_path: Path) -> None:
    header = tmp_path / "wide.h"
    header.write_text("struct w {" + " ".join(f"int m{i};" for i in range(25000)) + "};\n")
    start = time.monotonic()
    with pytest.raises(LayoutError, match="more than 20000 named entries"):
        Layout.from_file(header, "w")
    assert time.monotonic() - start < 10
