"""Record layouts of any C struct, from its declaration, laid out as the C ABI does.

``Layout.from_c(text, "struct sensor")`` parses the declaration with cffi (a fresh
``cffi.FFI`` per layout, ABI mode: no compiler needed) and computes the size and
every member's offset.  The layout is a codec for ``Writer`` and ``Reader``
(``layout=``): it encodes a record (its generated record class, or a dict) to the
struct's bytes with zero padding, decodes any bytes of that size, and keeps the
sequence lock in three padding bytes when the struct has them.  ``check()`` compares
the layout with what the system C compiler makes of the same declaration.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmapipc.cdecl import LayoutError, Statement, cdef, preprocess
from mmapipc.fields import (
    ArrayNode,
    BoolNode,
    CharNode,
    FloatNode,
    IntNode,
    LayoutRecord,
    Node,
    StructNode,
    TextNode,
    expands,
    join_path,
    parse_path,
    record_fields,
    record_pairs,
)

__all__ = ["CheckReport", "Field", "Layout", "LayoutCheckError", "LayoutError",
           "LayoutRecord"]

_FLOATS = {"float": 4, "double": 8}
# Arrays of structs longer than this are shown (and checked) by their first elements
# and their last one.
_SAMPLE = 8
_HEAD = 3


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

    def __str__(self) -> str:
        return (f"{self.compiler} agrees: size {self.size}, alignment {self.align},"
                f" {self.offsets} member offsets and sizes")


class Layout:
    """The layout of one C struct, and the codec of its records.

    Attributes: ``name`` (the C type), ``size``, ``align``, ``fields`` (the top-level
    members), ``members`` (every member, nested ones with their paths), ``leaves``
    (the members that hold bytes themselves: numbers, text, arrays of them), ``padding``
    ((offset, length) runs), ``lock_offsets`` ((marker, seq) padding offsets, or None
    when no 3-byte padding run exists: readers then compare two copies), ``Record``
    (the generated immutable record class, also ``record_class``).
    """

    def __init__(self, name: str, root: StructNode, align: int, source: str,
                 filename: str, include_dir: str | None) -> None:
        self.name = name
        self.size: int = root.size
        self.align = align
        self.source = source
        self.filename = filename
        self.include_dir = include_dir
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

    # ---- construction -----------------------------------------------------------

    @classmethod
    def from_c(cls, source: str, name: str, *, filename: str = "<source>",
               include_dir: str | None = None) -> Layout:
        """Parse C declarations (a header's text) and lay out the struct called name:
        'struct sensor', 'sensor' (the tag) or a typedef name.  LayoutError if the text
        cannot be parsed or the struct holds what cannot be shared (pointers, bitfields,
        flexible arrays, unions, long double)."""
        if not isinstance(source, str):
            raise TypeError(f"source must be C text (str), not {type(source).__name__}")
        name = " ".join(name.split())
        if not name:
            raise LayoutError("no struct name given")
        statements = preprocess(source)
        ffi = cdef(statements, filename)
        ctype, cname = _resolve(ffi, name, statements, filename)
        cache: dict[str, StructNode] = {}
        root = _struct_node(ffi, ctype, "", cname, cache)
        assert isinstance(root, StructNode)
        _refuse_problems(statements, set(cache) | {cname, name}, cname)
        return cls(cname, root, int(ffi.alignof(ctype)), source, filename, include_dir)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], name: str) -> Layout:
        """Layout.from_c on a header file (its directory is searched by check())."""
        p = Path(path)
        text = p.read_text(encoding="utf-8", errors="surrogateescape")
        return cls.from_c(text, name, filename=str(p), include_dir=str(p.resolve().parent))

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
        return self._root.decode(bytes(data))

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

    def format_fields(self, record: LayoutRecord) -> dict[str, Any]:
        """What a --format string sees: '{id}', '{pos.x}', '{vals[0]}', '{parts[1].x}'."""
        return record_fields(record)

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
        out = [f"{self.name}: {self.size} bytes, aligned to {self.align}",
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

    def check(self, cc: str = "cc", cflags: Sequence[str] = (),
              timeout: float = 60.0) -> CheckReport:
        """Compile a probe of the same declaration with the C compiler and compare its
        sizeof, alignment and every member's offsetof and sizeof with this layout.
        Returns a CheckReport; raises LayoutCheckError on any difference."""
        command = shlex.split(cc) if isinstance(cc, str) else list(cc)
        if not command:
            raise LayoutCheckError("no C compiler given")
        members = list(_members(self._root, sample=True))
        with tempfile.TemporaryDirectory(prefix="mmapipc-probe-") as tmp:
            header = Path(tmp, "decl.h")
            header.write_text(self.source, encoding="utf-8", errors="surrogateescape")
            probe = Path(tmp, "probe.c")
            probe.write_text(_probe_source(self.name, [p for p, _, _ in members]))
            exe = Path(tmp, "probe")
            cmd = [*command, *cflags, "-std=gnu11", "-w", "-I", tmp]
            if self.include_dir:
                cmd += ["-I", self.include_dir]
            cmd += ["-o", str(exe), str(probe)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                      check=False)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise LayoutCheckError(f"cannot run the C compiler {command[0]!r}: {e}"
                                       ) from None
            if proc.returncode != 0:
                errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
                first = (errors or proc.stderr.strip().splitlines() or ["failed"])[0]
                first = first.replace(str(header), self.filename).replace(str(probe),
                                                                          "probe.c")
                raise LayoutCheckError(f"{command[0]} could not compile {self.name}: {first}")
            try:
                run = subprocess.run([str(exe)], capture_output=True, text=True,
                                     timeout=timeout, check=False)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise LayoutCheckError(f"the probe did not run: {e}") from None
        lines = run.stdout.split("\n")
        if run.returncode != 0 or len(lines) < len(members) + 1:
            raise LayoutCheckError(f"the probe failed (status {run.returncode})")
        head = lines[0].split()
        wrong: list[str] = []
        if int(head[0]) != self.size:
            wrong.append(f"sizeof is {head[0]} with {command[0]}, {self.size} here")
        if int(head[1]) != self.align:
            wrong.append(f"alignment is {head[1]} with {command[0]}, {self.align} here")
        for (path, node, off), text in zip(members, lines[1:1 + len(members)], strict=True):
            c_off, c_size = (int(v) for v in text.split())
            if c_off != off:
                wrong.append(f"offsetof {path} is {c_off} with {command[0]}, {off} here")
            if c_size != node.size:
                wrong.append(f"sizeof {path} is {c_size} with {command[0]},"
                             f" {node.size} here")
        if wrong:
            more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
            raise LayoutCheckError(f"{command[0]} lays out {self.name} differently: "
                                   + "; ".join(wrong[:3]) + more)
        return CheckReport(command[0], self.size, self.align, len(members))

    def __repr__(self) -> str:
        return f"<Layout {self.name}: {self.size} bytes, {len(self.fields)} fields>"


# ---- from cffi types to nodes ----------------------------------------------------


def _resolve(ffi: Any, name: str, statements: list[Statement], filename: str
             ) -> tuple[Any, str]:
    declared = {d for st in statements for d in st.defines}
    candidates = [name]
    if re.fullmatch(r"[A-Za-z_]\w*", name):
        candidates.append(f"struct {name}")
    for candidate in candidates:
        if candidate.split()[0] in ("struct", "union") and candidate not in declared:
            continue  # cffi would make up an empty opaque type
        try:
            ctype = ffi.typeof(candidate)
        except TypeError as e:
            m = re.search(r"field '[^']*?\.(\w+)' has ctype '([^']*)' of unknown size", str(e))
            if m is None:
                raise LayoutError(f"{name}: {e}") from None
            raise LayoutError(f"{name}: field {m.group(1)} is {m.group(2)}, which is"
                              " declared but not defined") from None
        except Exception:  # cffi: CDefError, FFIError, KeyError for unknown names
            continue
        if ctype.kind != "struct":
            what = {"union": "a union", "enum": "an enum", "pointer": "a pointer",
                    "array": "an array", "primitive": "not a struct"}.get(ctype.kind,
                                                                         ctype.kind)
            raise LayoutError(f"{name} is {what} ({ctype.cname}), not a struct")
        return ctype, candidate
    listing = ", ".join(sorted(d for d in declared if not d.startswith("enum "))
                        ) or "no struct"
    raise LayoutError(f"no struct {name!r} in {filename} (it declares: {listing})")


def _refuse(cname: str, path: str, what: str) -> LayoutError:
    return LayoutError(f"{cname}: field {path} {what}" if path else f"{cname} {what}")


def _class_name(cname: str, path: str) -> str:
    base = cname.split()[-1] if not cname.split()[-1].startswith("$") else (
        path.split(".")[-1].split("[")[0] or "record")
    base = re.sub(r"\W", "_", base)
    return base if base and not base[0].isdigit() else f"_{base}"


def _struct_node(ffi: Any, ctype: Any, path: str, top: str,
                 cache: dict[str, StructNode]) -> Node:
    cname = ctype.cname
    if not cname.split()[-1].startswith("$") and cname in cache:
        return cache[cname]
    try:
        size = int(ffi.sizeof(ctype))
        fields = ctype.fields
    except Exception:  # an incomplete (opaque) struct
        raise _refuse(top, path, f"is {cname}, which is declared but not defined") from None
    if not fields:
        raise _refuse(top, path, f"({cname}) has no members" if path else "has no members")
    members: list[tuple[str, int, Node]] = []
    for name, f in fields:
        sub = join_path(path, name)
        if f.bitsize >= 0:
            raise _refuse(top, sub, f"is a bitfield ({f.type.cname} : {f.bitsize}):"
                          " its bits are laid out by the compiler, not addressable")
        members.append((name, int(f.offset), _node(ffi, f.type, sub, top, cache)))
    order = sorted(members, key=lambda m: m[1])
    for (a, a_off, a_node), (b, b_off, _) in itertools.pairwise(order):
        if b_off < a_off + a_node.size:
            raise _refuse(top, join_path(path, b), f"overlaps {join_path(path, a)}"
                          " (an anonymous union?): unions are not supported")
    node = StructNode(cname, size, order, _class_name(cname, path))
    cache[cname] = node
    return node


def _node(ffi: Any, ctype: Any, path: str, top: str, cache: dict[str, StructNode]) -> Node:
    kind = ctype.kind
    cname = ctype.cname
    if kind == "struct":
        return _struct_node(ffi, ctype, path, top, cache)
    if kind == "union":
        raise _refuse(top, path, f"is a union ({cname}): unions are not supported (the"
                      " bytes do not say which member is meant)")
    if kind == "pointer":
        raise _refuse(top, path, f"is a pointer ({cname}): an address means nothing in"
                      " another process")
    if kind == "function":
        raise _refuse(top, path, f"is a function pointer ({cname}): an address means"
                      " nothing in another process")
    if kind == "array":
        length = ctype.length
        if length is None:
            raise _refuse(top, path, f"is a flexible array member ({cname}): its length"
                          " is not part of the struct")
        if length == 0:
            raise _refuse(top, path, f"is a zero-length array ({cname}): its length is"
                          " not part of the struct")
        item = ctype.item
        if item.kind == "primitive" and item.cname == "char":
            return TextNode(int(length))
        return ArrayNode(_node(ffi, item, f"{path}[0]", top, cache), int(length))
    if kind == "enum":
        size = int(ffi.sizeof(ctype))
        signed = int(ffi.cast(ctype, -1)) < 0
        names = {int(v): str(k) for v, k in dict(ctype.elements).items()}
        return IntNode(cname, size, signed, names)
    if kind == "primitive":
        size = int(ffi.sizeof(ctype))
        if cname == "char":
            return CharNode()
        if cname == "_Bool":
            return BoolNode()
        if cname in _FLOATS and size == _FLOATS[cname]:
            return FloatNode(cname, size)
        if cname == "long double":
            raise _refuse(top, path, "is a long double: no Python type holds it exactly")
        if "complex" in cname or cname in _FLOATS:
            raise _refuse(top, path, f"has type {cname}, which is not supported")
        try:
            signed = int(ffi.cast(ctype, -1)) < 0
        except Exception:
            raise _refuse(top, path, f"has type {cname}, which is not supported") from None
        if size not in (1, 2, 4, 8):
            raise _refuse(top, path, f"is a {size}-byte integer ({cname}): not supported")
        return IntNode(cname, size, signed)
    raise _refuse(top, path, f"has type {cname} ({kind}), which is not supported")


def _refuse_problems(statements: list[Statement], used: set[str], cname: str) -> None:
    """Refuse a struct whose declaration (or a nested one's) had what cffi cannot lay
    out: it would be laid out differently from the compiler's."""
    for st in statements:
        if st.problems and st.defines & used:
            defined = sorted(st.defines & used)[0]
            inside = "" if defined == cname or cname in st.defines else f"in {defined}, "
            raise LayoutError(f"{cname}: {inside}{st.problems[0]}")


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


def _probe_source(cname: str, paths: Sequence[str]) -> str:
    lines = [
        "#include <stdio.h>", "#include <stddef.h>", "#include <stdint.h>",
        "#include <stdbool.h>", "#include <wchar.h>", "#include <uchar.h>",
        '#include "decl.h"',
        "int main(void)", "{",
        f'    printf("%zu %zu\\n", sizeof({cname}), (size_t)_Alignof({cname}));',
    ]
    for path in paths:
        lines.append(f'    printf("%zu %zu\\n", offsetof({cname}, {path}),'
                     f" sizeof((({cname} *)0)->{path}));")
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


def _get_path(data: Any, steps: Sequence[str | int]) -> Any:
    for step in steps:
        data = data[step]
    return data


def _set_path(data: Any, steps: Sequence[str | int], value: Any) -> None:
    for step in steps[:-1]:
        data = data[step]
    data[steps[-1]] = value
