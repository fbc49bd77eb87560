"""Struct layouts from cffi's own C parser: the fallback when no C compiler is at hand.

cffi (ABI mode, no compiler) parses plain declarations, comments and
``#define NAME <integer>`` constants, and lays structs out by the platform's natural
alignment.  Whatever needs a preprocessor or changes a layout beyond that (``#if``,
``#include``, function-like macros, ``#pragma``, attributes, ``_Alignas``) is refused
with one line saying a C compiler is needed: only the compiler can lay those out.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from mmapipc.fields import (
    ArrayNode,
    BoolNode,
    CharNode,
    FloatNode,
    IntNode,
    LayoutError,
    Node,
    StructNode,
    TextNode,
    check_field_name,
    class_name,
    item_count,
    join_path,
)

_FLOATS = {"float": 4, "double": 8}
_DEFINE = re.compile(r"#\s*define\s+[A-Za-z_]\w*\s+(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\s*$")
_NEEDS_CC = re.compile(r"\b(__attribute__|__attribute|_Alignas|alignas|__declspec|"
                       r"_Pragma|__extension__|__typeof__|typeof|_Static_assert)\b")
NEED_COMPILER = "needs a C compiler (set CC, or install cc/gcc/clang)"


def _strip_comments(text: str) -> str:
    """Comments out (each replaced by a space or its newlines), for the checks below."""
    def keep_lines(m: re.Match[str]) -> str:
        return " " + "\n" * m.group().count("\n")

    return re.sub(r"/\*.*?\*/|//[^\n]*", keep_lines, text, flags=re.S)


def refuse_preprocessing(text: str, filename: str) -> None:
    """LayoutError for the first line that only a C compiler can handle."""
    joined = re.sub(r"\\\n", " ", _strip_comments(text))
    for n, line in enumerate(joined.split("\n"), 1):
        stripped = line.strip()
        if stripped.startswith("#") and not _DEFINE.match(stripped):
            directive = "#" + (stripped[1:].split() or [""])[0]
            raise LayoutError(f"{filename}:{n}: {directive} {NEED_COMPILER}: without one only"
                              " plain declarations and #define NAME <integer> are read")
        if re.search(r"\.\.\.\s*[;\]]", line):
            raise LayoutError(f"{filename}:{n}: '...' in a struct or an array size is not C"
                              " (it is cffi's placeholder for what a compiler knows)")
        m = _NEEDS_CC.search(line)
        if m is not None:
            raise LayoutError(f"{filename}:{n}: {m.group()} {NEED_COMPILER}: without one only"
                              " plain declarations and #define NAME <integer> are read")


def layout_from_cffi(text: str, name: str, filename: str) -> tuple[StructNode, int, str]:
    """Parse plain declarations with cffi and lay out the struct called name."""
    import cffi

    refuse_preprocessing(text, filename)
    ffi = cffi.FFI()
    try:
        ffi.cdef(text)
    except Exception as e:  # cffi's CDefError, pycparser's errors
        message = " ".join(str(e).split())
        m = re.search(r"<cdef source string>:(\d+)(?::\d+)?:\s*(.*)", message)
        if m is not None:
            message = f"{filename}:{m.group(1)}: {m.group(2)}"
        raise LayoutError(f"cannot parse {filename}: {message}") from None
    ctype, cname = _resolve(ffi, text, name, filename)
    root = _struct_node(ffi, ctype, "", cname, {}, 0)
    assert isinstance(root, StructNode)
    return root, int(ffi.alignof(ctype)), cname


def _declared(text: str) -> list[str]:
    names = {f"struct {m.group(1)}" for m in re.finditer(r"\bstruct\s+([A-Za-z_]\w*)\s*\{",
                                                         text)}
    names |= {m.group(1) for m in re.finditer(r"\}\s*([A-Za-z_]\w*)\s*;", text)}
    return sorted(names)


def _resolve(ffi: Any, text: str, name: str, filename: str) -> tuple[Any, str]:
    name = " ".join(name.split())
    declared = set(_declared(text))
    candidates = [name]
    if re.fullmatch(r"[A-Za-z_]\w*", name):
        candidates.append(f"struct {name}")
    for candidate in candidates:
        if candidate.split()[0] in ("struct", "union") and not re.search(
                rf"\b{candidate.split()[0]}\s+{re.escape(candidate.split()[-1])}\s*\{{", text):
            continue  # cffi would make up an empty opaque type
        try:
            ctype = ffi.typeof(candidate)
        except TypeError as e:
            m = re.search(r"field '[^']*?\.(\w+)' has ctype '([^']*)' of unknown size", str(e))
            if m is None:
                raise LayoutError(f"{name}: {e}") from None
            raise LayoutError(f"{candidate}: field {m.group(1)} is {m.group(2)}, which is"
                              " declared but not defined") from None
        except Exception as e:  # cffi: CDefError, FFIError, KeyError for unknown names
            if candidate.split()[0] == "struct":  # declared, yet cffi cannot lay it out
                raise LayoutError(f"{candidate}: cffi cannot lay it out ("
                                  f"{' '.join(str(e).split()) or type(e).__name__})") from None
            continue
        if ctype.kind != "struct":
            what = {"union": "a union", "enum": "an enum", "pointer": "a pointer",
                    "array": "an array", "primitive": "not a struct"}.get(ctype.kind,
                                                                         ctype.kind)
            raise LayoutError(f"{name} is {what} ({ctype.cname}), not a struct")
        return ctype, candidate
    listing = ", ".join(sorted(declared)) or "no struct"
    raise LayoutError(f"no struct {name!r} in {filename} (it declares: {listing})")


def _refuse(top: str, path: str, what: str) -> LayoutError:
    return LayoutError(f"{top}: field {path} {what}" if path else f"{top} {what}")


def _struct_node(ffi: Any, ctype: Any, path: str, top: str, cache: dict[str, StructNode],
                 depth: int) -> Node:
    cname = ctype.cname
    anonymous = cname.split()[-1].startswith("$")
    if not anonymous and cname in cache:
        return cache[cname]
    if depth > 64:
        raise _refuse(top, path, "is nested more than 64 structs deep: refused")
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
        check_field_name(top, sub, name)
        if f.bitsize >= 0:
            raise _refuse(top, sub, f"is a bitfield ({f.type.cname} : {f.bitsize}): its bits"
                          " are not addressable bytes; use a whole integer")
        members.append((name, int(f.offset), _node(ffi, f.type, sub, top, cache, depth)))
    order = sorted(members, key=lambda m: m[1])
    for (a, a_off, a_node), (b, b_off, _) in itertools.pairwise(order):
        if b_off < a_off + a_node.size:
            raise _refuse(top, join_path(path, b), f"overlaps {join_path(path, a)} (an"
                          " anonymous union?): unions are not supported")
    label = (path.split(".")[-1].split("[")[0] or "record") if anonymous else cname
    node = StructNode("struct (anonymous)" if anonymous else cname, size, order,
                      class_name(label))
    cache[cname] = node
    return node


def _node(ffi: Any, ctype: Any, path: str, top: str, cache: dict[str, StructNode],
          depth: int) -> Node:
    kind = ctype.kind
    cname = ctype.cname
    if kind == "struct":
        return _struct_node(ffi, ctype, path, top, cache, depth + 1)
    if kind == "union":
        raise _refuse(top, path, f"is a union ({cname}): unions are not supported (the"
                      " bytes do not say which member is meant)")
    if kind == "pointer":
        raise _refuse(top, path, f"is a pointer ({cname}): an address means nothing in"
                      " another process")
    if kind == "function":
        raise _refuse(top, path, "is a function pointer: an address means nothing in"
                      " another process")
    if kind == "array":
        length = ctype.length
        if length is None:
            raise _refuse(top, path, f"is a flexible array member ({cname}): its length"
                          " is not part of the struct")
        if length == 0:
            raise _refuse(top, path, f"is a zero-length array ({cname}): its length is"
                          " not part of the struct")
        size = int(ffi.sizeof(ctype))
        if size > 1 << 24:
            raise _refuse(top, path, f"is {size} bytes, more than the {1 << 24}-byte limit"
                          " of a shared record")
        item = ctype.item
        if item.kind == "primitive" and item.cname == "char":
            return TextNode(int(length))
        array = ArrayNode(_node(ffi, item, f"{path}[0]", top, cache, depth), int(length))
        if item_count(array) > 1 << 16:
            raise _refuse(top, path, f"holds more than {1 << 16} values to decode one by one"
                          f" ({cname}): too many for a record")
        return array
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
