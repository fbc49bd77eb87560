"""Values of C struct members: validation, encoding and decoding, and immutable records.

A layout is a tree of nodes, one per member: integers, floats, bools, single chars,
char arrays (text), arrays of any of them, and nested structs.  Each node knows how to
check a Python value against its C type, flatten it into the values of one
``struct.Struct`` format, rebuild it from unpacked values, and show it as text.

Paths name members as C does: ``pos.x`` for a member of a nested struct, ``vals[2]``
for an array element, ``parts[1].x`` for both.
"""

from __future__ import annotations

import operator
import re
import string
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mmapipc._base import MmapipcError

Value = Any
Flat = list[Any]  # values for struct.pack, in layout order

_F32 = struct.Struct("=f")
_NAME = re.compile(r"[A-Za-z_]\w*")
_INDEX = re.compile(r"\[(\d+)\]")


class LayoutError(MmapipcError, ValueError):
    """A C declaration that cannot be laid out, or a struct that cannot be shared safely."""


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


def check_field_name(top: str, path: str, name: str) -> None:
    """Refuse a member name that Python reserves on a record class (__x__ names)."""
    if not _NAME.fullmatch(name):
        raise LayoutError(f"{top}: field {path}: {name!r} is not a C identifier")
    if name.startswith("__") and name.endswith("__"):
        raise LayoutError(f"{top}: field {path}: names of the form __x__ are Python's own"
                          " (a record could not have one as a field); rename the member")


def class_name(base: str) -> str:
    """A Python class name for a struct (its tag or typedef name)."""
    base = re.sub(r"\W", "_", base.split()[-1] if base.split() else "record")
    return base if base and not base[0].isdigit() else f"_{base}"


def parse_path(path: str) -> list[str | int]:
    """Split 'parts[1].x' into ['parts', 1, 'x']; ValueError if it is not a path."""
    bad = f"not a field path: {path!r} (write a member as a.b, an element as a[1])"
    m = _NAME.match(path)
    if m is None:
        raise ValueError(bad)
    steps: list[str | int] = [m.group()]
    pos = m.end()
    while pos < len(path):
        if path[pos] == ".":
            m = _NAME.match(path, pos + 1)
            if m is not None:
                steps.append(m.group())
        else:
            m = _INDEX.match(path, pos)
            if m is not None:
                steps.append(int(m.group(1)))
        if m is None:
            raise ValueError(bad)
        pos = m.end()
    return steps


def join_path(base: str, step: str | int) -> str:
    if isinstance(step, int):
        return f"{base}[{step}]"
    return f"{base}.{step}" if base else step


def _type_name(value: object) -> str:
    return type(value).__name__


class Node:
    """One C member type.  Subclasses fill in the behaviour."""

    kind: str = "?"
    ctype: str
    size: int

    def items(self, offset: int, out: list[tuple[int, str, int]]) -> None:
        """Append (offset, struct code, size) for every packed item of this member."""
        raise NotImplementedError

    def check(self, value: Value, path: str) -> Value:
        """The value, validated against the C type and normalised for storing."""
        raise NotImplementedError

    def flatten(self, value: Value, out: Flat) -> None:
        """Append the packable values of a checked value."""
        out.append(value)

    def build(self, vals: Sequence[Any], i: int) -> tuple[Value, int]:
        """Rebuild a value from unpacked values starting at i; never raises."""
        return vals[i], i + 1

    def zero(self) -> Value:
        """The value of all-zero bytes."""
        raise NotImplementedError

    def plain(self, value: Value) -> Any:
        """The value as plain Python data (dicts and lists), as JSON shows it."""
        return value

    def parse(self, text: str, path: str) -> Value:
        """A value from command line text (checked later)."""
        raise ValueError(f"{path} ({self.ctype}) cannot be set from text")

    def show(self, value: Value) -> str:
        """The value as the text after 'path='."""
        return str(value)

    def pairs(self, value: Value, path: str, out: list[str]) -> None:
        """Append 'path=value' for this member, expanding structs and nested arrays."""
        out.append(f"{path}={self.show(value)}")

    @property
    def scalar(self) -> bool:
        """Is a value of this type one number, bool or char (shown without commas)?"""
        return False


class IntNode(Node):
    """A C integer of 1, 2, 4 or 8 bytes (an enum too, with its constant names)."""

    kind = "int"
    _CODES: ClassVar[dict[int, str]] = {1: "b", 2: "h", 4: "i", 8: "q"}

    def __init__(self, ctype: str, size: int, signed: bool,
                 names: Mapping[int, str] | None = None) -> None:
        self.ctype = ctype
        self.size = size
        self.signed = signed
        code = self._CODES[size]
        self.code = code if signed else code.upper()
        bits = 8 * size
        self.lo = -(1 << (bits - 1)) if signed else 0
        self.hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
        self.names = dict(names or {})
        self.values = {name: v for v, name in sorted(self.names.items())}
        if self.names:
            self.kind = "enum"

    def items(self, offset: int, out: list[tuple[int, str, int]]) -> None:
        out.append((offset, self.code, self.size))

    def check(self, value: Value, path: str) -> Value:
        if type(value) is not int:
            if isinstance(value, str) and self.names:
                if value not in self.values:
                    raise ValueError(f"{path} must be one of {', '.join(self.values)}"
                                     f" or an integer, got {value!r}")
                return self.values[value]
            if isinstance(value, bool):
                raise TypeError(f"{path} must be an int, not bool")
            try:
                value = operator.index(value)
            except TypeError:
                raise TypeError(f"{path} must be an int, not {_type_name(value)}") from None
        if not self.lo <= value <= self.hi:
            raise ValueError(f"{path} must be in the {self.ctype} range"
                             f" {self.lo}..{self.hi}, got {value}")
        return value

    def zero(self) -> Value:
        return 0

    def parse(self, text: str, path: str) -> Value:
        if self.names and text.strip() in self.values:
            return text.strip()
        try:
            return int(text.strip(), 0)
        except ValueError:
            raise ValueError(f"{path} ({self.ctype}) needs an integer, got {text!r}") from None

    @property
    def scalar(self) -> bool:
        return True

    def wrap(self, value: int) -> int:
        """value + 1 as C's unsigned arithmetic (or two's complement) wraps it."""
        nxt = value + 1
        return self.lo if nxt > self.hi else nxt


class FloatNode(Node):
    """float (4 bytes) or double (8 bytes)."""

    kind = "float"

    def __init__(self, ctype: str, size: int) -> None:
        self.ctype = ctype
        self.size = size
        self.code = "f" if size == 4 else "d"

    def items(self, offset: int, out: list[tuple[int, str, int]]) -> None:
        out.append((offset, self.code, self.size))

    def check(self, value: Value, path: str) -> Value:
        if type(value) is not float:
            if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
                raise TypeError(f"{path} must be a float, not {_type_name(value)}")
            try:
                value = float(value)
            except OverflowError:
                raise ValueError(f"{path} is too large for a {self.ctype}: {value}") from None
        if self.size == 4:
            try:
                value = _F32.unpack(_F32.pack(value))[0]
            except OverflowError:
                raise ValueError(f"{path} must be within +-3.4028234663852886e+38 (the float"
                                 f" range), or inf or nan, got {value!r}") from None
        return value

    def zero(self) -> Value:
        return 0.0

    def parse(self, text: str, path: str) -> Value:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{path} ({self.ctype}) needs a number, got {text!r}") from None

    def show(self, value: Value) -> str:
        return repr(value)

    @property
    def scalar(self) -> bool:
        return True


class BoolNode(Node):
    """_Bool / bool: one byte, any non-zero byte reads as True."""

    kind = "bool"
    ctype = "_Bool"
    size = 1
    code = "?"
    _TEXT: ClassVar[dict[str, bool]] = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False}

    def items(self, offset: int, out: list[tuple[int, str, int]]) -> None:
        out.append((offset, "?", 1))

    def check(self, value: Value, path: str) -> Value:
        if value is True or value is False:
            return value
        if type(value) is int and value in (0, 1):
            return bool(value)
        raise TypeError(f"{path} must be a bool (or 0 or 1), not {value!r}")

    def zero(self) -> Value:
        return False

    def parse(self, text: str, path: str) -> Value:
        try:
            return self._TEXT[text.strip().lower()]
        except KeyError:
            raise ValueError(f"{path} (bool) needs true or false (or 1 or 0),"
                             f" got {text!r}") from None

    def show(self, value: Value) -> str:
        return "true" if value else "false"

    @property
    def scalar(self) -> bool:
        return True


class CharNode(Node):
    """A single char: one byte of text; the NUL byte is the empty string."""

    kind = "char"
    ctype = "char"
    size = 1

    def items(self, offset: int, out: list[tuple[int, str, int]]) -> None:
        out.append((offset, "c", 1))

    def check(self, value: Value, path: str) -> Value:
        raw = encode_text(value, path)
        if len(raw) > 1:
            raise ValueError(f"{path} must be one byte (a char), got {len(raw)}")
        return "" if raw in (b"", b"\0") else decode_text(raw)

    def flatten(self, value: Value, out: Flat) -> None:
        out.append(value.encode("utf-8", "surrogateescape") or b"\0")

    def build(self, vals: Sequence[Any], i: int) -> tuple[Value, int]:
        raw = vals[i]
        return ("" if raw == b"\0" else decode_text(raw)), i + 1

    def zero(self) -> Value:
        return ""

    def parse(self, text: str, path: str) -> Value:
        return text

    @property
    def scalar(self) -> bool:
        return True


class TextNode(Node):
    """char[N]: text up to its first NUL; at most N - 1 bytes written, so C finds a NUL."""

    kind = "text"

    def __init__(self, length: int) -> None:
        self.size = length
        self.ctype = f"char[{length}]"
        self.code = f"{length}s"

    def items(self, offset: int, out: list[tuple[int, str, int]]) -> None:
        out.append((offset, self.code, self.size))

    def check(self, value: Value, path: str) -> Value:
        raw = encode_text(value, path)
        if 0 in raw:
            raise ValueError(f"{path} must not contain a NUL byte")
        if len(raw) > self.size - 1:
            raise ValueError(
                f"{path} must be at most {self.size - 1} bytes in UTF-8 (the C field is"
                f" {self.ctype} with its NUL), got {len(raw)}")
        return value if isinstance(value, str) else decode_text(raw)

    def flatten(self, value: Value, out: Flat) -> None:
        out.append(value.encode("utf-8", "surrogateescape"))

    def build(self, vals: Sequence[Any], i: int) -> tuple[Value, int]:
        raw: bytes = vals[i]
        nul = raw.find(b"\0")
        return decode_text(raw if nul < 0 else raw[:nul]), i + 1

    def zero(self) -> Value:
        return ""

    def parse(self, text: str, path: str) -> Value:
        return text


class ArrayNode(Node):
    """T[N] for any member type T but char (char[N] is text): a tuple of N values."""

    kind = "array"

    def __init__(self, item: Node, length: int) -> None:
        self.item = item
        self.length = length
        self.size = item.size * length
        self.ctype = _array_ctype(item.ctype, length)
        # Numbers and bools pack and unpack as they are: copy them as a slice.
        self.direct = isinstance(item, (IntNode, FloatNode, BoolNode))

    def items(self, offset: int, out: list[tuple[int, str, int]]) -> None:
        if self.direct:
            code = self.item.code  # type: ignore[attr-defined]
            out.append((offset, f"{self.length}{code}", self.size))
            return
        step = self.item.size
        for k in range(self.length):
            self.item.items(offset + k * step, out)

    def check(self, value: Value, path: str) -> Value:
        if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Sequence):
            if not _is_array_like(value):
                raise TypeError(f"{path} must be a list or tuple of {self.length}"
                                f" ({self.ctype}), not {_type_name(value)}")
            value = list(value)
        if len(value) != self.length:
            raise ValueError(f"{path} must have {self.length} elements ({self.ctype}),"
                             f" got {len(value)}")
        check = self.item.check
        return tuple([check(v, f"{path}[{k}]") for k, v in enumerate(value)])

    def flatten(self, value: Value, out: Flat) -> None:
        if self.direct:
            out.extend(value)
            return
        flat = self.item.flatten
        for v in value:
            flat(v, out)

    def build(self, vals: Sequence[Any], i: int) -> tuple[Value, int]:
        if self.direct:
            end = i + self.length
            return tuple(vals[i:end]), end
        build = self.item.build
        got = []
        for _ in range(self.length):
            v, i = build(vals, i)
            got.append(v)
        return tuple(got), i

    def zero(self) -> Value:
        z = self.item.zero()
        return (z,) * self.length

    def plain(self, value: Value) -> Any:
        if self.direct:
            return list(value)
        plain = self.item.plain
        return [plain(v) for v in value]

    def parse(self, text: str, path: str) -> Value:
        if not self.item.scalar:
            raise ValueError(f"{path} is {self.ctype}: set its elements one by one,"
                             f" as {path}[0]=...")
        parts = text.split(",") if text.strip() else []
        return [self.item.parse(p, f"{path}[{k}]") for k, p in enumerate(parts)]

    def pairs(self, value: Value, path: str, out: list[str]) -> None:
        if self.item.scalar:
            show = self.item.show
            out.append(f"{path}=" + ",".join([show(v) for v in value]))
            return
        for k, v in enumerate(value):
            self.item.pairs(v, f"{path}[{k}]", out)


def _is_array_like(value: object) -> bool:
    return hasattr(value, "__len__") and hasattr(value, "__iter__") and not isinstance(
        value, (str, bytes, bytearray, Mapping))


def _array_ctype(item_ctype: str, length: int) -> str:
    """C's spelling: int[2] of int[3] is int[2][3]; struct pt[4]."""
    m = re.match(r"^(.*?)((\[\d*\])*)$", item_ctype)
    base, dims = (m.group(1), m.group(2)) if m else (item_ctype, "")
    return f"{base}[{length}]{dims}"


def struct_format(items: Sequence[tuple[int, str, int]], size: int) -> str:
    """A native-order, unaligned struct format placing every item at its offset."""
    parts = ["="]
    pos = 0
    for offset, code, length in items:
        if offset < pos:
            raise ValueError(f"members overlap at offset {offset}")
        if offset > pos:
            parts.append(f"{offset - pos}x")
        parts.append(code)
        pos = offset + length
    if size > pos:
        parts.append(f"{size - pos}x")
    return "".join(parts)


class StructNode(Node):
    """A struct: named members at offsets, and the record class of its values."""

    kind = "struct"

    def __init__(self, ctype: str, size: int, members: Sequence[tuple[str, int, Node]],
                 class_name: str, record_class: type[LayoutRecord] | None = None) -> None:
        self.ctype = ctype
        self.size = size
        self.members = tuple(members)
        self.names = tuple(name for name, _, _ in self.members)
        self.index = {name: k for k, name in enumerate(self.names)}
        items: list[tuple[int, str, int]] = []
        self.items(0, items)
        self.packer = struct.Struct(struct_format(items, size))
        if self.packer.size != size:
            raise ValueError(f"{ctype}: members end past its size {size}")
        if record_class is None:
            record_class = _make_record_class(class_name, self)
        else:  # a hand-written record class (Student) for this struct
            record_class.__mmapipc_node__ = self
        self.record_class: type[LayoutRecord] = record_class
        self.decode_fast = _decoder(self)

    def items(self, offset: int, out: list[tuple[int, str, int]]) -> None:
        for _, off, node in self.members:
            node.items(offset + off, out)

    def check(self, value: Value, path: str) -> Value:
        cls = self.record_class
        if type(value) is cls:
            return value
        if isinstance(value, LayoutRecord):
            value = LayoutRecord.as_dict(value)
        if not isinstance(value, Mapping):
            raise TypeError(f"{path or 'record'} must be a {cls.__name__} record or a dict"
                            f" ({self.ctype}), not {_type_name(value)}")
        return self.from_mapping(value, path)

    def from_mapping(self, value: Mapping[str, Any], path: str) -> LayoutRecord:
        for key in value:
            if key not in self.index:
                where = join_path(path, key) if isinstance(key, str) else repr(key)
                raise ValueError(f"unknown field {where} ({self.ctype} has"
                                 f" {', '.join(self.names)})")
        vals = []
        for name, _, node in self.members:
            if name in value:
                vals.append(node.check(value[name], join_path(path, name)))
            else:
                vals.append(node.zero())
        record: LayoutRecord = _new(self.record_class, tuple(vals))
        return record

    def flatten(self, value: Value, out: Flat) -> None:
        for (_, _, node), v in zip(self.members, value.__mmapipc_values__, strict=True):
            node.flatten(v, out)

    def build(self, vals: Sequence[Any], i: int) -> tuple[Value, int]:
        got = []
        for _, _, node in self.members:
            v, i = node.build(vals, i)
            got.append(v)
        return _new(self.record_class, tuple(got)), i

    def encode(self, record: LayoutRecord) -> bytes:
        """The struct's bytes for a checked record, padding zero."""
        out: Flat = []
        self.flatten(record, out)
        return self.packer.pack(*out)

    def decode(self, data: bytes) -> LayoutRecord:
        """A record from exactly size bytes; never raises for bytes of that size."""
        record: LayoutRecord = self.decode_fast(data)
        return record

    def zero(self) -> Value:
        return _new(self.record_class, tuple(node.zero() for _, _, node in self.members))

    def plain(self, value: Value) -> Any:
        return {name: node.plain(v)
                for (name, _, node), v in zip(self.members, value.__mmapipc_values__, strict=True)}

    def parse(self, text: str, path: str) -> Value:
        raise ValueError(f"{path} is a struct ({self.ctype}): set its fields, as"
                         f" {path}.{self.names[0]}=...")

    def pairs(self, value: Value, path: str, out: list[str]) -> None:
        for (name, _, node), v in zip(self.members, value.__mmapipc_values__, strict=True):
            node.pairs(v, join_path(path, name), out)

    def walk(self, path: str) -> Node:
        """The node at a path such as 'parts[1].x'; ValueError naming an unknown field."""
        node: Node = self
        done = ""
        for step in parse_path(path):
            if isinstance(step, str):
                if not isinstance(node, StructNode):
                    raise ValueError(f"unknown field {path}: {done} is {node.ctype},"
                                     " not a struct")
                if step not in node.index:
                    where = f"{done} ({node.ctype})" if done else node.ctype
                    raise ValueError(f"unknown field {path}: {where} has"
                                     f" {', '.join(node.names)}")
                node = node.members[node.index[step]][2]
            else:
                if not isinstance(node, ArrayNode):
                    raise ValueError(f"unknown field {path}: {done} is {node.ctype},"
                                     " not an array")
                if step >= node.length:
                    raise ValueError(f"unknown field {path}: {done} has {node.length}"
                                     f" elements (0..{node.length - 1})")
                node = node.item
            done = join_path(done, step)
        return node


# ---- records ---------------------------------------------------------------------


class LayoutRecord:
    """Base of the generated record classes: immutable, fields as attributes.

    Build one with keywords (or positionally in declaration order); fields left out
    are zero, as in a C initializer.  Nested structs are records of their own class
    (or dicts), arrays are tuples (or lists).  A field named like a method hides it:
    the Layout offers the same operations (layout.to_dict, layout.encode).
    """

    __slots__ = ("__mmapipc_bytes__", "__mmapipc_values__")
    __mmapipc_node__: ClassVar[StructNode]
    __mmapipc_values__: tuple[Any, ...]
    __mmapipc_bytes__: bytes | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        node = type(self).__mmapipc_node__
        if len(args) > len(node.names):
            raise TypeError(f"{type(self).__name__} takes at most {len(node.names)}"
                            f" positional fields, got {len(args)}")
        given = dict(zip(node.names, args, strict=False))
        for key, value in kwargs.items():
            if key in given:
                raise TypeError(f"{type(self).__name__} got two values for {key}")
            if key not in node.index:
                raise TypeError(f"{type(self).__name__} has no field {key!r}"
                                f" (fields: {', '.join(node.names)})")
            given[key] = value
        vals = tuple(
            node_.check(given[name], name) if name in given else node_.zero()
            for name, _, node_ in node.members
        )
        _set_values(self, vals)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """A record from a dict of fields (nested dicts, lists); validated."""
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a dict, not {_type_name(data)}")
        return cls.__mmapipc_node__.from_mapping(data, "")

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Any:
        """Decode the struct's bytes: any bytes of its size decode."""
        node = cls.__mmapipc_node__
        if len(data) != node.size:
            raise ValueError(f"a {node.ctype} is {node.size} bytes, got {len(data)}")
        return node.decode(bytes(data))

    def to_bytes(self) -> bytes:
        """The C struct's bytes, padding zero."""
        try:
            return self.__mmapipc_bytes__  # type: ignore[return-value]
        except AttributeError:  # not yet packed (a decoded or a nested record)
            data = type(self).__mmapipc_node__.encode(self)
            _set_bytes(self, data)
            return data

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain data: nested structs as dicts, arrays as lists."""
        result: dict[str, Any] = type(self).__mmapipc_node__.plain(self)
        return result

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed (validated like the constructor)."""
        node = type(self).__mmapipc_node__
        fields = dict(zip(node.names, self.__mmapipc_values__, strict=True))
        for key in changes:
            if key not in node.index:
                raise TypeError(f"{type(self).__name__} has no field {key!r}")
        fields.update(changes)
        return type(self)(**fields)

    if TYPE_CHECKING:  # the fields are generated: any attribute may be one

        def __getattr__(self, name: str) -> Any: ...

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; use replace()")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, LayoutRecord)
        return LayoutRecord.to_bytes(self) == LayoutRecord.to_bytes(other)

    def __hash__(self) -> int:
        return hash(LayoutRecord.to_bytes(self))

    def __repr__(self) -> str:
        node = type(self).__mmapipc_node__
        inner = ", ".join(f"{name}={v!r}" for name, v in zip(node.names,
                                                               self.__mmapipc_values__,
                                                               strict=True))
        return f"{type(self).__name__}({inner})"


_set_values = LayoutRecord.__dict__["__mmapipc_values__"].__set__
_set_bytes = LayoutRecord.__dict__["__mmapipc_bytes__"].__set__
_object_new = object.__new__


def _new(cls: type[LayoutRecord], values: tuple[Any, ...]) -> Any:
    """A record of cls holding checked values (no validation)."""
    self = _object_new(cls)
    _set_values(self, values)
    return self


def _getter(get: Callable[[Any], tuple[Any, ...]], k: int) -> Callable[[Any], Any]:
    def value(self: Any) -> Any:
        return get(self)[k]

    return value


def _make_record_class(name: str, node: StructNode) -> type[LayoutRecord]:
    get = LayoutRecord.__dict__["__mmapipc_values__"].__get__
    namespace: dict[str, Any] = {
        "__slots__": (),
        "__mmapipc_node__": node,
        "__doc__": f"One {node.ctype} ({node.size} bytes); immutable.",
        "__module__": "mmapipc.layout",
    }
    for k, field in enumerate(node.names):
        namespace[field] = property(_getter(get, k),
                                    doc=f"{field} ({node.members[k][2].ctype})")
    return type(name, (LayoutRecord,), namespace)


_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(\d*)[_,]?(?:\.(\d+))?[bcdeEfFgGnosxX%]?",
                   re.S)
MAX_WIDTH = 1000  # the widest field or precision a template may ask for


def safe_formatter(template: str) -> Callable[[LayoutRecord], str]:
    """A str.format-like template over a record's fields, limited to what is safe:
    field names and paths ('{id}', '{pos.x}', '{vals[0]}', '{parts[1].x:.2f}'),
    !s or !r, and format specs of at most MAX_WIDTH characters of width or precision.
    No attribute access beyond the record's own fields, no nested fields in a spec.
    ValueError (one line) for anything else."""
    bad = f"bad --format {template!r}"
    if not isinstance(template, str):
        raise TypeError("a format template must be str")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"{bad}: {e}") from None
    parts: list[tuple[str, list[str | int] | None, str, str | None, str]] = []
    for literal, field, spec, conv in parsed:
        if field is None:
            parts.append((literal, None, "", None, ""))
            continue
        if field == "" or field.isdigit():
            raise ValueError(f"{bad}: name the field, as {{id}} (no positional fields)")
        try:
            steps = parse_path(field)
        except ValueError:
            raise ValueError(f"{bad}: {field!r} is not a field path (a.b, a[1])") from None
        if conv not in (None, "s", "r"):
            raise ValueError(f"{bad}: only !s and !r conversions are allowed")
        spec = spec or ""
        if "{" in spec or "}" in spec:
            raise ValueError(f"{bad}: no fields inside a format spec")
        m = _SPEC.fullmatch(spec)
        if m is None:
            raise ValueError(f"{bad}: {spec!r} is not a format spec")
        for number in m.groups():
            if number and (len(number) > 4 or int(number) > MAX_WIDTH):
                raise ValueError(f"{bad}: widths and precisions are at most {MAX_WIDTH}")
        parts.append((literal, steps, spec, conv, field))

    def fmt(record: LayoutRecord) -> str:
        out: list[str] = []
        for literal, steps, spec, conv, field in parts:
            out.append(literal)
            if steps is None:
                continue
            try:
                value = _lookup(record, steps, field)
            except ValueError as e:
                raise ValueError(f"{bad}: {e}") from None
            if conv == "r":
                value = repr(value)
            elif conv == "s":
                value = str(value)
            try:
                out.append(format(value, spec))
            except (ValueError, TypeError, OverflowError) as e:  # e.g. {id:c} of a big id
                raise ValueError(f"{bad}: {field}={value!r}: {e}") from None
        return "".join(out)

    return fmt


def _lookup(record: Any, steps: Sequence[str | int], field: str) -> Any:
    """The value at a path, through records' fields and tuples' elements only."""
    value = record
    for step in steps:
        if isinstance(step, str):
            if not isinstance(value, LayoutRecord):
                raise ValueError(f"unknown field {field!r}: not a struct there")
            node = type(value).__mmapipc_node__
            k = node.index.get(step)
            if k is None:
                raise ValueError(f"unknown field {field!r}")
            value = value.__mmapipc_values__[k]
        else:
            if not isinstance(value, tuple):
                raise ValueError(f"unknown field {field!r}: not an array there")
            if step >= len(value):
                raise ValueError(f"unknown field {field!r}: index out of range")
            value = value[step]
    return value


def record_pairs(record: LayoutRecord) -> list[str]:
    """'path=value' for every member: nested as a.b, arrays of numbers as 1,2,3."""
    out: list[str] = []
    type(record).__mmapipc_node__.pairs(record, "", out)
    return out


def item_count(node: Node) -> int:
    """How many values the node unpacks to one by one (an array of numbers is one)."""
    if isinstance(node, StructNode):
        return sum(item_count(child) for _, _, child in node.members)
    if isinstance(node, ArrayNode) and not node.direct:
        return node.length * item_count(node.item)
    return 1


def expands(node: Node) -> bool:
    """Is this an array shown element by element (it holds structs)?"""
    if not isinstance(node, ArrayNode):
        return False
    return isinstance(node.item, StructNode) or expands(node.item)


def _decoder(root: StructNode) -> Callable[[bytes], Any]:
    """A decoder for the struct made for it: one unpack and one expression building the
    record, without a Python call per member (the generated code names only values and
    classes, never a member)."""
    env: dict[str, Any] = {"_unpack": root.packer.unpack, "_new": _new,
                           "_error": struct.error, "_bad": _bad_size(root)}
    budget = [4096]  # expressions longer than this many items fall back to build()

    def ref(value: Any) -> str:
        key = f"_k{len(env)}"
        env[key] = value
        return key

    def expr(node: Node, i: int) -> tuple[str, int]:
        budget[0] -= 1
        if type(node) in (IntNode, FloatNode, BoolNode):
            return f"v[{i}]", i + 1
        if type(node) is TextNode:
            return f'v[{i}].partition(b"\\0")[0].decode("utf-8", "surrogateescape")', i + 1
        if type(node) is CharNode:
            return (f'("" if v[{i}] == b"\\0" else v[{i}].decode("utf-8",'
                    f' "surrogateescape"))'), i + 1
        if isinstance(node, ArrayNode) and node.direct:
            return f"v[{i}:{i + node.length}]", i + node.length
        if isinstance(node, ArrayNode) and budget[0] > node.length:
            parts = []
            for _ in range(node.length):
                e, i = expr(node.item, i)
                parts.append(e)
            return "(" + ", ".join(parts) + ",)", i
        if isinstance(node, StructNode) and budget[0] > len(node.members):
            parts = []
            for _, _, child in node.members:
                e, i = expr(child, i)
                parts.append(e)
            return f"_new({ref(node.record_class)}, (" + ", ".join(parts) + ",))", i
        items: list[tuple[int, str, int]] = []
        node.items(0, items)
        count = len(node.packer.unpack(bytes(node.size))) if isinstance(
            node, StructNode) else sum(_count_items(code) for _, code, _ in items)
        return f"{ref(node.build)}(v, {i})[0]", i + count

    body, _ = expr(root, 0)
    source = ("def decode(data):\n    try:\n        v = _unpack(data)\n"
              "    except _error:\n        raise _bad(data) from None\n"
              f"    return {body}\n")
    try:
        exec(compile(source, f"<decoder of {root.ctype}>", "exec"), env)
    except (SyntaxError, RecursionError, MemoryError):  # too deeply nested to be one expression
        unpack, build, bad = root.packer.unpack, root.build, env["_bad"]

        def generic(data: bytes) -> Any:
            try:
                v = unpack(data)
            except struct.error:
                raise bad(data) from None
            return build(v, 0)[0]

        return generic
    decode: Callable[[bytes], Any] = env["decode"]
    return decode


def _bad_size(root: StructNode) -> Callable[[Any], ValueError]:
    def bad(data: Any) -> ValueError:
        try:
            n = len(data)
        except TypeError:
            return ValueError(f"a {root.ctype} is decoded from bytes, not"
                              f" {type(data).__name__}")
        return ValueError(f"a {root.ctype} is {root.size} bytes, got {n}")

    return bad


def _count_items(code: str) -> int:
    """How many values struct.unpack gives for one item code ('5i': 5, '16s': 1)."""
    digits = code[:-1]
    if code[-1] in "sp":
        return 1
    return int(digits) if digits else 1
