"""Record layouts of any C struct, taken from the C compiler, and the codec of its records.

``Layout.from_file("sensor.h", "struct sensor")`` compiles a probe that includes the
header (``cc -g -c``: nothing is linked or run) and reads the struct's layout from the
compiler's debug information (mmapipc.dwarf): the layout is the compiler's own, for
any header it accepts.  Without a C compiler, plain declarations are laid out by cffi's
parser (mmapipc.cffi_layout); a header that needs a preprocessor is then refused.

The layout is a codec for ``Writer`` and ``Reader`` (``layout=``): it encodes a record
(its generated record class, or a dict) to the struct's bytes with zero padding,
decodes any bytes of that size, and keeps the sequence lock in three padding bytes when
the struct has them.  ``check()`` compiles and runs a probe that cross-checks the layout
with the compiler: it executes code built from the header.

This module needs neither mmapipc's compiled core nor a mapping: a build tool can lay
out structs with only a C compiler, pyelftools and cffi.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmapipc.cffi_layout import layout_from_cffi
from mmapipc.dwarf import (
    TIMEOUT,
    Compiler,
    CompilerError,
    include_line,
    layout_from_compiler,
    run_probe,
)
from mmapipc.fields import (
    ArrayNode,
    BoolNode,
    CharNode,
    FloatNode,
    IntNode,
    LayoutError,
    LayoutRecord,
    Node,
    StructNode,
    TextNode,
    expands,
    join_path,
    parse_path,
    record_pairs,
    safe_formatter,
)

__all__ = ["CheckReport", "Field", "Layout", "LayoutCheckError", "LayoutError",
           "LayoutRecord"]

# Arrays of structs longer than this are shown (and checked) by their first elements
# and their last one.
_SAMPLE = 8
_HEAD = 3
MAX_HEADER = 1 << 22  # bytes of header text read (4 MiB)


class LayoutCheckError(LayoutError):
    """The C compiler lays the struct out differently, or could not compile the probe."""


@dataclass(frozen=True)
class Field:
    """One member: its path (pos.x, parts[1].x), C type, absolute offset and size."""

    name: str
    ctype: str
    offset: int
    size: int
    kind: str  # int, enum, float, bool, char, text, array or struct


@dataclass(frozen=True)
class CheckReport:
    """What the compiler agreed on."""

    compiler: str
    size: int
    align: int
    offsets: int  # how many member offsets (and sizes) were compared
    values: int = 0  # how many values the C program read back as Python wrote them

    def __str__(self) -> str:
        return (f"{self.compiler} agrees: size {self.size}, alignment {self.align},"
                f" {self.offsets} member offsets and sizes, {self.values} values read back")


class Layout:
    """The layout of one C struct, and the codec of its records.

    Attributes: ``name`` (the C type), ``size``, ``align``, ``origin`` ("dwarf": from
    the compiler, or "cffi": cffi's parser), ``fields`` (the top-level members),
    ``members`` (every member, nested ones with their paths), ``leaves`` (the members
    that hold bytes themselves: numbers, text, arrays of them), ``padding`` ((offset,
    length) runs), ``lock_offsets`` ((marker, seq) padding offsets, or None when no
    3-byte padding run exists: readers then compare two copies), ``Record`` (the
    generated immutable record class, also ``record_class``).
    """

    def __init__(self, name: str, root: StructNode, align: int, source: str,
                 filename: str, *, origin: str = "cffi", header: Path | None = None,
                 compiler: Compiler | None = None) -> None:
        self.name = name
        self.size: int = root.size
        self.align = align
        self.source = source
        self.filename = filename
        self.origin = origin
        self.header = header
        self.compiler = compiler
        self._root = root
        self.Record: type[LayoutRecord] = root.record_class
        self.record_class = self.Record
        self.fields: tuple[Field, ...] = tuple(
            _field(join_path("", name_), node, off) for name_, off, node in root.members)
        members = _members(root, sample=False)
        self.members: tuple[Field, ...] = tuple(
            _field(path, node, off) for path, node, off in members)
        self.leaves: tuple[Field, ...] = tuple(
            _field(path, node, off) for path, node, off in members
            if not isinstance(node, StructNode) and not expands(node))
        self.padding: tuple[tuple[int, int], ...] = _padding(root)
        self.lock_offsets: tuple[int, int] | None = _lock_offsets(self.padding)
        self.zero: LayoutRecord = root.zero()
        # decode() is the generated decoder itself: a Reader calls it for every change
        self.decode = root.decode_fast  # type: ignore[method-assign,assignment]

    # ---- construction -----------------------------------------------------------

    @classmethod
    def from_c(cls, source: str, name: str, *, filename: str = "<source>",
               include_dirs: Sequence[str | os.PathLike[str]] = (),
               defines: Mapping[str, str | None] | Sequence[str] = (),
               cc: str | Sequence[str] | None = None, cflags: Sequence[str] | None = None,
               timeout: float = TIMEOUT, use_compiler: bool | None = None) -> Layout:
        """Lay out the struct called name ('struct sensor', its tag or a typedef name)
        declared by C text (a header's contents).

        With a C compiler (cc, else $CC, cc, gcc or clang; flags $CFLAGS unless cflags;
        -I include_dirs, -D defines) the layout is read from the compiler's debug
        information: the header is compiled, nothing is run.  Without one (or with
        use_compiler=False) cffi's parser lays out plain declarations.  use_compiler=True
        requires the compiler.  LayoutError if the struct cannot be laid out or holds
        what cannot be shared (pointers, unions, bitfields, flexible arrays, long double).
        """
        if not isinstance(source, str):
            raise TypeError(f"source must be C text (str), not {type(source).__name__}")
        with tempfile.TemporaryDirectory(prefix="mmapipc-header-") as tmp:
            header = Path(tmp, "decl.h")
            header.write_text(source, encoding="utf-8", errors="surrogateescape")
            return cls._build(source, name, filename, header, include_dirs, defines, cc,
                              cflags, timeout, use_compiler, keep_header=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], name: str, *,
                  include_dirs: Sequence[str | os.PathLike[str]] = (),
                  defines: Mapping[str, str | None] | Sequence[str] = (),
                  cc: str | Sequence[str] | None = None, cflags: Sequence[str] | None = None,
                  timeout: float = TIMEOUT, use_compiler: bool | None = None) -> Layout:
        """Layout.from_c on a header file, compiled where it is (its own #include "..."
        lines find their files).  The path must be a regular file of at most 4 MiB."""
        p = Path(path)
        source = read_header(p)
        return cls._build(source, name, str(p), p, include_dirs, defines, cc, cflags,
                          timeout, use_compiler, keep_header=True)

    @classmethod
    def _build(cls, source: str, name: str, filename: str, header: Path,
               include_dirs: Sequence[str | os.PathLike[str]],
               defines: Mapping[str, str | None] | Sequence[str],
               cc: str | Sequence[str] | None, cflags: Sequence[str] | None,
               timeout: float, use_compiler: bool | None, keep_header: bool) -> Layout:
        if not isinstance(name, str) or not " ".join(name.split()):
            raise LayoutError("no struct name given")
        name = " ".join(name.split())
        compiler = None
        if use_compiler is not False:
            compiler = Compiler.find(cc, cflags, include_dirs, defines, timeout)
            if compiler is None and use_compiler:
                raise CompilerError("no C compiler found (set CC, or install cc/gcc/clang)")
        if compiler is None:
            if include_dirs or defines:
                raise LayoutError("include directories and defines need a C compiler (set"
                                  " CC, or install cc/gcc/clang)")
            root, align, cname = layout_from_cffi(source, name, filename)
            return cls(cname, root, align, source, filename, origin="cffi")
        root, align, cname = layout_from_compiler(compiler, header, name, filename)
        return cls(cname, root, align, source, filename, origin="dwarf",
                   header=header if keep_header else None, compiler=compiler)

    # ---- the codec ----------------------------------------------------------------

    def encode(self, record: LayoutRecord | Mapping[str, Any]) -> bytes:
        """The struct's bytes (padding zero) for a record of this layout or a dict."""
        if type(record) is self.Record:
            return LayoutRecord.to_bytes(record)
        if isinstance(record, Mapping):
            rec: LayoutRecord = self._root.from_mapping(record, "")
            return LayoutRecord.to_bytes(rec)
        if isinstance(record, LayoutRecord):
            return self.encode(LayoutRecord.as_dict(record))
        raise TypeError(f"expected a {self.Record.__name__} record or a dict,"
                        f" not {type(record).__name__}")

    def decode(self, data: bytes) -> LayoutRecord:
        """A record from any bytes of the struct's size (never raises for those)."""
        if len(data) != self.size:
            raise ValueError(f"a {self.name} is {self.size} bytes, got {len(data)}")
        record: LayoutRecord = self._root.decode_fast(data)
        return record

    def decode_dict(self, data: bytes) -> dict[str, Any]:
        """The fields of the struct's bytes as plain data (nested dicts, lists)."""
        return self.to_dict(self.decode(data))

    def record(self, *args: Any, **fields: Any) -> LayoutRecord:
        """A validated record: Record(*args, **fields)."""
        return self.Record(*args, **fields)

    def from_dict(self, data: Mapping[str, Any]) -> LayoutRecord:
        """A validated record from plain data; fields left out are zero."""
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a dict, not {type(data).__name__}")
        rec: LayoutRecord = self._root.from_mapping(data, "")
        return rec

    def to_dict(self, record: LayoutRecord) -> dict[str, Any]:
        """The record as plain data: nested structs as dicts, arrays as lists."""
        return LayoutRecord.as_dict(record)

    # ---- paths ----------------------------------------------------------------------

    def field(self, path: str) -> Field:
        """The member at a path such as 'pos.x' or 'parts[1].x'."""
        offset = 0
        # walk once for validation, then add up offsets
        target = self._root.walk(path)
        cur: Node = self._root
        for step in parse_path(path):
            if isinstance(step, str):
                assert isinstance(cur, StructNode)
                _, off, child = cur.members[cur.index[step]]
                offset += off
                cur = child
            else:
                assert isinstance(cur, ArrayNode)
                offset += step * cur.item.size
                cur = cur.item
        return _field(path, target, offset)

    def with_value(self, record: LayoutRecord, path: str, value: Any) -> LayoutRecord:
        """A copy of the record with the member at path set (validated)."""
        self._root.walk(path)
        data = LayoutRecord.as_dict(record)
        _set_path(data, parse_path(path), value)
        return self.from_dict(data)

    def from_assignments(self, assignments: Sequence[str],
                         base: LayoutRecord | None = None) -> LayoutRecord:
        """A record from 'path=value' texts (the command line's --set): numbers as C
        writes them, arrays of numbers as 1,2,3, bools as true/false; the rest zero."""
        data = LayoutRecord.as_dict(base if base is not None else self.zero)
        for text in assignments:
            path, sep, value = text.partition("=")
            path = path.strip()
            if not sep or not path:
                raise ValueError(f"--set needs FIELD=VALUE, got {text!r}")
            node = self._root.walk(path)
            _set_path(data, parse_path(path), node.parse(value, path))
        return self.from_dict(data)

    def incrementer(self, path: str) -> Callable[[LayoutRecord], LayoutRecord]:
        """A step for write loops: the integer at path + 1, wrapping at its C range."""
        node = self._root.walk(path)
        if not isinstance(node, IntNode) or node.names:
            raise ValueError(f"{path} is {node.ctype}: only an integer field can be"
                             " incremented")
        steps = parse_path(path)

        def step(record: LayoutRecord) -> LayoutRecord:
            data = LayoutRecord.as_dict(record)
            _set_path(data, steps, node.wrap(_get_path(data, steps)))
            return self.from_dict(data)

        return step

    # ---- text -------------------------------------------------------------------

    def pairs(self, record: LayoutRecord) -> list[str]:
        """'path=value' for every member: pos.x=1.5, vals=1,2,3, parts[0].x=..."""
        return record_pairs(record)

    def line(self, record: LayoutRecord) -> bytes:
        """The pairs separated by tabs, with a newline; text as its raw bytes."""
        return ("\t".join(record_pairs(record)) + "\n").encode("utf-8", "surrogateescape")

    def json_line(self, record: LayoutRecord) -> bytes:
        """One JSON Lines record (nested structs as objects, arrays as lists)."""
        return (json.dumps(LayoutRecord.as_dict(record)) + "\n").encode("utf-8")

    def formatter(self, template: str) -> Callable[[LayoutRecord], bytes]:
        """A line maker from a template over the fields ('{id} {pos.x:.2f}'), checked
        on a zero record first: ValueError (one line) for a bad template."""
        fmt = safe_formatter(template)
        fmt(self.zero)  # ValueError now, not at the first record

        def line(record: LayoutRecord) -> bytes:
            return (fmt(record) + "\n").encode("utf-8", "surrogateescape")

        return line

    def dump(self, record: LayoutRecord, raw: bytes) -> bytes:
        """The record decoded, then its bytes in hex by member and padding."""
        rows = [(f.offset, f.size, f.name) for f in self.leaves]
        rows += [(off, length, "(padding)") for off, length in self.padding]
        rows.sort(key=lambda r: r[0])
        width = max([len(r[2]) for r in rows] + [5])
        lines = [self.line(record).rstrip(b"\n"),
                 f"{'offset':>6}  {'field':<{width}} bytes".encode()]
        for off, size, name in rows:
            lines.append(f"{off:>6}  {name:<{width}} {raw[off:off + size].hex(' ')}".encode())
        lines.append(f"{self.size:>6}  (size)".encode())
        return b"\n".join(lines) + b"\n"

    def laid_out_by(self) -> str:
        """Where the layout came from, in words."""
        if self.compiler is not None:
            return f"laid out by {self.compiler.command[0]} (its debug information)"
        return "laid out by cffi's parser (no C compiler)"

    def table(self) -> str:
        """Every member with its offset, size and C type, and the padding between."""
        rows: list[tuple[int, int, str, str]] = []
        skipped: list[tuple[int, int]] = []
        for path, node, off, count in _members_rows(self._root):
            if count:
                rows.append((off, node.size * count, f"{node.ctype} x {count}",
                             f"{path} (same layout, every {node.size} bytes)"))
                skipped.append((off, off + node.size * count))
            else:
                rows.append((off, node.size, node.ctype, path))
        for off, length in self.padding:
            if not any(lo <= off < hi for lo, hi in skipped):
                rows.append((off, length, "", "(padding)"))
        rows.sort(key=lambda r: r[0])
        width = max([len(r[2]) for r in rows] + [6])
        out = [f"{self.name}: {self.size} bytes, aligned to {self.align}; {self.laid_out_by()}",
               f"{'offset':>6}  {'size':>5}  {'C type':<{width}}  field"]
        for off, size, ctype, path in rows:
            out.append(f"{off:>6}  {size:>5}  {ctype:<{width}}  {path}".rstrip())
        out.append(f"{self.size:>6}  {'':>5}  {'':<{width}}  (end)".rstrip())
        total = sum(length for _, length in self.padding)
        if self.lock_offsets is not None:
            marker, seq = self.lock_offsets
            lock = (f"seq lock in padding: marker byte at {marker}, 16-bit sequence at"
                    f" {seq}-{seq + 1}")
        else:
            lock = ("no seq lock (no run of 3 padding bytes): readers copy until two"
                    " copies agree")
        runs = len(self.padding)
        out.append(f"padding: {total} bytes in {runs} run{'' if runs == 1 else 's'}; {lock}")
        return "\n".join(out) + "\n"

    # ---- the compiler's view ----------------------------------------------------

    def check(self, cc: str | Sequence[str] | None = None,
              cflags: Sequence[str] | None = None, timeout: float = 10.0) -> CheckReport:
        """Cross-check the layout with the C compiler, independently of how it was made.

        Compiles AND RUNS a probe that includes the header (so it executes code built
        from the header): the probe prints sizeof, _Alignof and every member's offsetof
        and sizeof, then reads a record encoded here from its stdin and prints every
        field as C sees it.  cc defaults to the compiler the layout was made with (or
        $CC, cc, gcc, clang); cflags to its flags.  Returns a CheckReport; raises
        LayoutCheckError on any difference.
        """
        base = self.compiler
        if cc is None and base is not None:
            compiler = Compiler(base.command, base.cflags if cflags is None else
                                tuple(cflags), base.include_dirs, base.defines, timeout)
        else:
            found = Compiler.find(cc, cflags, timeout=timeout)
            if found is None:
                raise LayoutCheckError("no C compiler given or found (set CC, or install"
                                       " cc/gcc/clang)")
            compiler = Compiler(found.command, found.cflags,
                                base.include_dirs if base else (),
                                base.defines if base else (), timeout)
        members = list(_members(self._root, sample=True))
        leaves = [(p, n) for p, n, _ in members
                  if not isinstance(n, StructNode) and not expands(n)]
        sample = self.decode(_sample_bytes(self.size))
        data = self.encode(sample)
        expected = _leaf_values(LayoutRecord.as_dict(sample), leaves)
        command = compiler.command[0]
        with tempfile.TemporaryDirectory(prefix="mmapipc-probe-") as tmp:
            header = self.header
            if header is None:
                header = Path(tmp, "decl.h")
                header.write_text(self.source, encoding="utf-8", errors="surrogateescape")
            probe = Path(tmp, "probe.c")
            try:
                include = include_line(header)
            except LayoutError as e:
                raise LayoutCheckError(str(e)) from None
            probe.write_text(_probe_source(self.name, include,
                                           [p for p, _, _ in members], leaves))
            exe = Path(tmp, "probe")
            names = {os.fspath(header.resolve()): self.filename, os.fspath(probe): "probe.c"}
            try:
                compiler.run([*compiler.args(), "-w", "-o", str(exe), str(probe)],
                             f"the probe of {self.name}", names)
            except CompilerError as e:
                raise LayoutCheckError(str(e)) from None
            try:
                status, out = run_probe(exe, data, timeout)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise LayoutCheckError(f"the probe did not run: {e}") from None
        lines = out.decode("ascii", "replace").split("\n")
        if status != 0 or len(lines) < len(members) + 2 + len(expected):
            raise LayoutCheckError(f"the probe failed (status {status})")
        head = lines[0].split()
        wrong: list[str] = []
        if int(head[0]) != self.size:
            wrong.append(f"sizeof is {head[0]} with {command}, {self.size} here")
        if int(head[1]) != self.align:
            wrong.append(f"alignment is {head[1]} with {command}, {self.align} here")
        for (path, node, off), text in zip(members, lines[1:1 + len(members)], strict=True):
            c_off, c_size = (int(v) for v in text.split())
            if c_off != off:
                wrong.append(f"offsetof {path} is {c_off} with {command}, {off} here")
            if c_size != node.size:
                wrong.append(f"sizeof {path} is {c_size} with {command},"
                             f" {node.size} here")
        if not wrong:
            got = lines[2 + len(members):2 + len(members) + len(expected)]
            for (path, want), text in zip(expected, got, strict=True):
                if not _same_value(want, text):
                    wrong.append(f"{path} reads as {text} in C, {want} here")
        if wrong:
            more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
            raise LayoutCheckError(f"{command} lays out {self.name} differently: "
                                   + "; ".join(wrong[:3]) + more)
        return CheckReport(command, self.size, self.align, len(members), len(expected))

    # ---- as data -------------------------------------------------------------------

    def as_json(self) -> dict[str, Any]:
        """The layout as plain data: name, size, align, source ("dwarf" or "cffi") and
        every member with its path (a.b, a[1].b), offset, size and C type."""
        return {
            "name": self.name, "size": self.size, "align": self.align,
            "source": self.origin,
            "fields": [{"path": f.name, "offset": f.offset, "size": f.size,
                        "type": f.ctype} for f in self.members],
        }

    def to_json(self) -> str:
        """as_json() as JSON text."""
        return json.dumps(self.as_json(), indent=2) + "\n"

    def __repr__(self) -> str:
        return f"<Layout {self.name}: {self.size} bytes, {len(self.fields)} fields>"


# ---- from cffi types to nodes ----------------------------------------------------

# ---- derived facts -----------------------------------------------------------------


def _field(path: str, node: Node, offset: int) -> Field:
    return Field(path, node.ctype, offset, node.size, node.kind)


def _members(root: StructNode, sample: bool) -> list[tuple[str, Node, int]]:
    """(path, node, offset) of every member; arrays of structs in full, or sampled."""
    out: list[tuple[str, Node, int]] = []

    def visit(node: Node, path: str, offset: int) -> None:
        if isinstance(node, StructNode):
            for name, off, child in node.members:
                sub = join_path(path, name)
                out.append((sub, child, offset + off))
                visit(child, sub, offset + off)
        elif expands(node):
            assert isinstance(node, ArrayNode)
            n = node.length
            ks = range(n) if not sample or n <= _SAMPLE else [*range(_HEAD), n - 1]
            for k in ks:
                sub = f"{path}[{k}]"
                out.append((sub, node.item, offset + k * node.item.size))
                visit(node.item, sub, offset + k * node.item.size)

    visit(root, "", 0)
    return out


def _members_rows(root: StructNode) -> list[tuple[str, Node, int, int]]:
    """Rows of the table: members, and for long arrays of structs one row standing
    for the elements between the first few and the last (count > 0)."""
    out: list[tuple[str, Node, int, int]] = []

    def visit(node: Node, path: str, offset: int) -> None:
        if isinstance(node, StructNode):
            for name, off, child in node.members:
                sub = join_path(path, name)
                out.append((sub, child, offset + off, 0))
                visit(child, sub, offset + off)
        elif expands(node):
            assert isinstance(node, ArrayNode)
            n, step = node.length, node.item.size
            for k in range(n):
                if n > _SAMPLE and _HEAD <= k < n - 1:
                    if k == _HEAD:
                        out.append((f"{path}[{_HEAD}..{n - 2}]", node.item,
                                    offset + k * step, n - 1 - _HEAD))
                    continue
                sub = f"{path}[{k}]"
                out.append((sub, node.item, offset + k * step, 0))
                visit(node.item, sub, offset + k * step)

    visit(root, "", 0)
    return out


def _padding(root: StructNode) -> tuple[tuple[int, int], ...]:
    """The runs of bytes that no member covers: (offset, length)."""
    items: list[tuple[int, str, int]] = []
    root.items(0, items)
    covered = bytearray(root.size)
    for off, _, length in items:
        covered[off:off + length] = b"\1" * length
    runs: list[tuple[int, int]] = []
    for m in re.finditer(b"\0+", bytes(covered)):
        runs.append((m.start(), m.end() - m.start()))
    return tuple(runs)


def _lock_offsets(padding: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """(marker, seq): three adjacent padding bytes holding a marker byte and a 2-aligned
    16-bit seq, either [marker, seq, seq + 1] or [seq, seq + 1, marker].  The last such
    run is preferred (trailing padding, as in struct STU: marker 25, seq 26)."""
    for off, length in reversed(padding):
        if length < 3:
            continue
        if off % 2 == 1:  # marker on the odd byte, seq right after it
            return off, off + 1
        if length >= 4:  # the same, one byte in
            return off + 1, off + 2
        return off + 2, off  # exactly three from an even byte: seq first, then marker
    return None


def _sample_bytes(size: int) -> bytes:
    """Varied bytes for the record that check() stores through the probe."""
    import random

    return random.Random(size * 7919 + 17).randbytes(size)


def _leaf_values(plain: Mapping[str, Any], leaves: Sequence[tuple[str, Node]]
                 ) -> list[tuple[str, Any]]:
    """(path, value as the probe prints it) for every leaf, arrays flattened."""
    out: list[tuple[str, Any]] = []

    def scalar(node: Node, value: Any, path: str) -> None:
        if isinstance(node, TextNode):
            out.append((path, value.encode("utf-8", "surrogateescape").hex() or "-"))
        elif isinstance(node, CharNode):
            out.append((path, value.encode("utf-8", "surrogateescape")[0] if value else 0))
        elif isinstance(node, BoolNode):
            out.append((path, int(value)))
        elif isinstance(node, ArrayNode):
            for k, v in enumerate(value):
                scalar(node.item, v, f"{path}[{k}]")
        else:
            out.append((path, value))

    for path, node in leaves:
        scalar(node, _get_path(plain, parse_path(path)), path)
    return out


def _same_value(want: Any, text: str) -> bool:
    if isinstance(want, float):
        try:
            got = float.fromhex(text.strip().replace("-nan", "nan"))
        except ValueError:
            return False
        return got == want or (got != got and want != want)
    return str(want) == text.strip()


def _probe_source(cname: str, include: str, paths: Sequence[str],
                  leaves: Sequence[tuple[str, Node]]) -> str:
    lines = [
        "#include <stdio.h>", "#include <stddef.h>", "#include <string.h>",
        "static void mmapipc_probe_text(const char *s, size_t n)", "{",
        "    size_t i = 0;",
        "    for (; i < n && s[i]; i++)",
        "        printf(\"%02x\", (unsigned)(unsigned char)s[i]);",
        '    printf(i ? "\\n" : "-\\n");', "}",
        include.rstrip("\n"),
        f"static {cname} mmapipc_probe_rec;",
        "int main(void)", "{",
        f"    {cname} *mmapipc_probe_r = &mmapipc_probe_rec;",
        f'    printf("%zu %zu\\n", sizeof({cname}), (size_t)_Alignof({cname}));',
    ]
    for path in paths:
        lines.append(f'    printf("%zu %zu\\n", offsetof({cname}, {path}),'
                     f" sizeof((({cname} *)0)->{path}));")
    lines += ["    if (fread(mmapipc_probe_r, 1, sizeof *mmapipc_probe_r, stdin)"
              " != sizeof *mmapipc_probe_r)", "        return 3;",
              '    printf("values\\n");']
    for path, node in leaves:
        lines += _print_leaf(node, f"mmapipc_probe_r->{path}", 1)
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


def _print_leaf(node: Node, expr: str, depth: int) -> list[str]:
    pad = "    " * depth
    if isinstance(node, ArrayNode):
        i = f"mmapipc_probe_i{depth}"
        return [f"{pad}for (size_t {i} = 0; {i} < {node.length}; {i}++)", f"{pad}{{",
                *_print_leaf(node.item, f"{expr}[{i}]", depth + 1), f"{pad}}}"]
    if isinstance(node, TextNode):
        return [f"{pad}mmapipc_probe_text((const char *)({expr}), {node.size});"]
    if isinstance(node, CharNode):
        return [f'{pad}printf("%d\\n", (int)(unsigned char)({expr}));']
    if isinstance(node, BoolNode):
        return [f'{pad}printf("%d\\n", ({expr}) ? 1 : 0);']
    if isinstance(node, FloatNode):
        return [f'{pad}printf("%a\\n", (double)({expr}));']
    if isinstance(node, IntNode):
        if node.signed:
            return [f'{pad}printf("%lld\\n", (long long)({expr}));']
        return [f'{pad}printf("%llu\\n", (unsigned long long)({expr}));']
    raise LayoutError(f"cannot print a {node.ctype}")


def read_header(path: Path) -> str:
    """A header's text: a regular file of at most MAX_HEADER bytes (no FIFO, device or
    directory, which could hang or never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise LayoutError(f"{path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LayoutError(f"{path}: not a regular file (a header must be one)")
        if st.st_size > MAX_HEADER:
            raise LayoutError(f"{path}: {st.st_size} bytes, more than the {MAX_HEADER}-byte"
                              " limit of a header")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_HEADER + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_HEADER:
        raise LayoutError(f"{path}: more than the {MAX_HEADER}-byte limit of a header")
    return data.decode("utf-8", "surrogateescape")


def _get_path(data: Any, steps: Sequence[str | int]) -> Any:
    for step in steps:
        data = data[step]
    return data


def _set_path(data: Any, steps: Sequence[str | int], value: Any) -> None:
    for step in steps[:-1]:
        data = data[step]
    data[steps[-1]] = value
