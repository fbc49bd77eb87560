"""Struct layouts taken from the C compiler itself, through its debug information.

A probe that includes the header is compiled with ``cc -g -c`` (nothing is linked or
run) and the struct is read from the object's DWARF with pyelftools, as ``pahole``
does: size, every member's offset and type, nested structs, arrays, enums and typedefs.
The layout is then the compiler's, for any header it accepts (system headers,
``#include``, ``#if``, attributes, ``#pragma pack``, vector types).  The alignment,
which DWARF does not record, comes from the probe too: ``char a[_Alignof(T)]``.
"""

from __future__ import annotations

import io
import itertools
import os
import resource
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
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

# Limits that keep a hostile header from hanging or exhausting memory.
TIMEOUT = 5.0  # seconds for one compiler run
MEMORY_LIMIT = 2 << 30  # bytes of address space for the compiler's processes
MAX_SIZE = 1 << 24  # bytes in a struct (16 MiB)
MAX_DEPTH = 64  # structs nested in structs
MAX_ITEMS = 1 << 16  # separately decoded values in a struct (members of arrays of structs)
MAX_ENTRIES = 20000  # relocated names in the debug information: reading each costs ~100 us
_ALIGN = "mmapipc_probe_align_"
_OBJECT = "mmapipc_probe_object_"
_SENTINEL = "mmapipc_probe_sentinel_"

# DW_ATE_* encodings of base types
_ATE_BOOLEAN = 0x02
_ATE_COMPLEX = 0x03
_ATE_FLOAT = 0x04
_ATE_SIGNED = 0x05
_ATE_SIGNED_CHAR = 0x06
_ATE_UNSIGNED = 0x07
_ATE_UNSIGNED_CHAR = 0x08
_ATE_UTF = 0x10


class CompilerError(LayoutError):
    """The C compiler is missing, failed on the probe, or took too long."""


class CompilerTimeout(CompilerError):
    """The C compiler took longer than its time-out and was killed."""


def _is_ident(text: str) -> bool:
    return text.isidentifier() and text.isascii()


@dataclass(frozen=True)
class Compiler:
    """How to run the C compiler: the command ($CC), flags ($CFLAGS), -I and -D."""

    command: tuple[str, ...]
    cflags: tuple[str, ...] = ()
    include_dirs: tuple[str, ...] = ()
    defines: tuple[tuple[str, str | None], ...] = ()
    timeout: float = TIMEOUT

    @classmethod
    def find(cls, cc: str | Sequence[str] | None = None, cflags: Sequence[str] | None = None,
             include_dirs: Sequence[str | os.PathLike[str]] = (),
             defines: Mapping[str, str | None] | Sequence[str] = (),
             timeout: float = TIMEOUT) -> Compiler | None:
        """The compiler to use: cc if given, else $CC, cc, gcc or clang; None if none.
        cflags default to $CFLAGS; defines are NAME=VALUE texts or a dict."""
        if cc is None:
            command = _find_cc()
            if command is None:
                return None
        else:
            try:
                command = shlex.split(cc) if isinstance(cc, str) else [str(c) for c in cc]
            except ValueError as e:
                raise LayoutError(f"cannot read the compiler command {cc!r}: {e}") from None
            if not command:
                raise LayoutError("the C compiler command is empty")
        flags = (_split(os.environ.get("CFLAGS", ""), "$CFLAGS") if cflags is None
                 else [str(f) for f in cflags])
        return cls(tuple(command), tuple(flags), tuple(os.fspath(d) for d in include_dirs),
                   _defines(defines), timeout)

    def args(self) -> list[str]:
        """The flags for every run: $CFLAGS, then -I and -D in the order given."""
        out = [*self.cflags]
        for d in self.include_dirs:
            out += ["-I", d]
        for name, value in self.defines:
            out.append(f"-D{name}" if value is None else f"-D{name}={value}")
        return out

    def run(self, cmd: Sequence[str], what: str, names: Mapping[str, str]) -> None:
        """Run the compiler; CompilerError with its first error line (temporary paths
        replaced by the names the user knows)."""
        if shutil.which(self.command[0]) is None:
            raise CompilerError(f"cannot run the C compiler {self.command[0]!r}: not found"
                                " or not executable")
        try:
            proc = subprocess.Popen([*_limited(), *self.command, *cmd],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE,
                                    env={**os.environ, "LC_ALL": "C", "LANG": "C"},
                                    start_new_session=True)
        except OSError as e:
            raise CompilerError(f"cannot run the C compiler {self.command[0]!r}:"
                                f" {e.strerror or e}") from None
        try:
            _, err_bytes = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise CompilerTimeout(f"{self.command[0]} took more than {self.timeout:g} s on"
                                  f" {what}: refused") from None
        except BaseException:
            _kill_group(proc)
            raise
        stderr = err_bytes.decode("utf-8", "replace")
        if proc.returncode != 0 and not stderr.strip() and proc.returncode < 0:
            stderr = (f"killed by signal {-proc.returncode} (more than"
                      f" {MEMORY_LIMIT >> 20} MiB of memory?)")
        if proc.returncode != 0:
            lines = stderr.strip().splitlines()
            errors = [ln for ln in lines if "error" in ln]
            first = (errors or lines or [f"exit status {proc.returncode}"])[0]
            for tmp, real in names.items():
                first = first.replace(tmp, real)
            if what in first:  # the compiler's own "file:line:col: error: ..." says it all
                raise CompilerError(f"{self.command[0]}: {first.strip()}")
            raise CompilerError(f"{self.command[0]} could not compile {what}: {first.strip()}")


def _limited() -> list[str]:
    """A prefix that runs a command with at most MEMORY_LIMIT bytes of address space (the
    shell's ulimit, so that nothing runs between fork and exec), so that a header that
    explodes (macros expanding without end) fails instead of eating the machine's memory.
    Empty where there is no shell, or the current limit is already lower."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if not os.path.exists("/bin/sh") or 0 <= soft <= MEMORY_LIMIT:
        return []
    return ["/bin/sh", "-c", f'ulimit -v {MEMORY_LIMIT >> 10} 2>/dev/null; exec "$@"', "sh"]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the compiler and everything it started (cc1, as), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    proc.communicate()


def _split(text: str, what: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as e:
        raise LayoutError(f"cannot read {what} ({text!r}): {e}") from None


def run_probe(exe: Path, data: bytes, timeout: float) -> tuple[int, bytes]:
    """Run a compiled probe with data on its stdin: (status, stdout).  It runs in its own
    process group, killed whole at the time-out (subprocess.TimeoutExpired)."""
    proc = subprocess.Popen([os.fspath(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = proc.communicate(data, timeout=timeout)
    except BaseException:
        _kill_group(proc)
        raise
    return proc.returncode, out


def _find_cc() -> list[str] | None:
    env = os.environ.get("CC")
    if env and env.strip():
        return _split(env, "$CC")
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return [name]
    return None


def _defines(defines: Mapping[str, str | None] | Sequence[str]
             ) -> tuple[tuple[str, str | None], ...]:
    items: list[tuple[str, str | None]] = []
    if isinstance(defines, Mapping):
        items = [(str(k), None if v is None else str(v)) for k, v in defines.items()]
    else:
        for text in defines:
            key, sep, val = str(text).partition("=")
            items.append((key, val if sep else None))
    for name, value in items:
        if not name or not (name[0].isalpha() or name[0] == "_") or not all(
                c.isalnum() or c == "_" for c in name):
            raise LayoutError(f"not a macro name: {name!r} (define NAME or NAME=VALUE)")
        if value is not None and "\n" in value:
            raise LayoutError(f"the value of {name} must be one line")
    return tuple(items)


def include_line(header: Path) -> str:
    """The #include of a header by its absolute path (which must be quotable)."""
    text = os.fspath(header.resolve())
    if any(c in text for c in '"\n\\'):
        raise LayoutError(f"{header}: a header path with quotes, backslashes or newlines"
                          " cannot be included")
    return f'#include "{text}"\n'


# ---- reading DWARF -------------------------------------------------------------------


def _dies(obj: Path) -> tuple[list[Any], list[str]]:
    """The top-level DIEs of the object's compilation unit, and its file names."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection

    if True:  # the whole object in memory: DIEs are read lazily, after this returns
        elf = ELFFile(io.BytesIO(obj.read_bytes()))
        if not elf.has_dwarf_info():
            raise CompilerError("the compiler wrote no debug information (DWARF)")
        relocations = elf.get_section_by_name(".rela.debug_info") or elf.get_section_by_name(
            ".rel.debug_info")
        if isinstance(relocations, RelocationSection) and (
                relocations.num_relocations() > MAX_ENTRIES):
            raise LayoutError(f"the header's debug information has more than {MAX_ENTRIES}"
                              " named entries to read (a struct with that many members?):"
                              " refused")
        info = elf.get_dwarf_info()
        tops: list[Any] = []
        files: list[str] = []
        for cu in info.iter_CUs():
            top = cu.get_top_DIE()
            tops.extend(top.iter_children())
            program = info.line_program_for_CU(cu)
            if program is not None:
                version = program.header.get("version", 4)
                entries = program.header.get("file_entry", [])
                dirs = program.header.get("include_directory", [])
                names = []
                for e in entries:
                    name = _text(e.name)
                    d = e.get("dir_index", 0)
                    if not os.path.isabs(name) and version < 5 and 0 < d <= len(dirs):
                        name = os.path.join(_text(dirs[d - 1]), name)
                    names.append(name)
                # DWARF 4 numbers files from 1, DWARF 5 from 0
                files = ["", *names] if version < 5 else names
        return tops, files


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _name(die: Any) -> str | None:
    attr = die.attributes.get("DW_AT_name")
    return None if attr is None else _text(attr.value)


def _int_attr(die: Any, name: str) -> int | None:
    attr = die.attributes.get(name)
    if attr is None:
        return None
    value = attr.value
    return value if isinstance(value, int) else None


def _type(die: Any) -> Any | None:
    return die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None


@dataclass
class Index:
    """The named types of a probe: struct, union and enum tags, and typedefs."""

    tags: dict[tuple[str, str], Any]
    typedefs: dict[str, Any]
    variables: dict[str, Any]
    files: list[str]

    @classmethod
    def of(cls, obj: Path) -> Index:
        tops, files = _dies(obj)
        tags: dict[tuple[str, str], Any] = {}
        typedefs: dict[str, Any] = {}
        variables: dict[str, Any] = {}
        kinds = {"DW_TAG_structure_type": "struct", "DW_TAG_union_type": "union",
                 "DW_TAG_enumeration_type": "enum"}
        for die in tops:
            name = _name(die)
            if name is None:
                continue
            if die.tag in kinds:
                key = (kinds[die.tag], name)
                # a definition wins over a declaration
                if key not in tags or "DW_AT_declaration" in tags[key].attributes:
                    tags[key] = die
            elif die.tag == "DW_TAG_typedef":
                typedefs[name] = die
            elif die.tag == "DW_TAG_variable":
                variables[name] = die
        return cls(tags, typedefs, variables, files)

    def declared_in(self, header: Path) -> list[str]:
        """The structs and typedefs of structs declared in the header itself."""
        target = os.path.realpath(header)

        def here(die: Any) -> bool:
            k = _int_attr(die, "DW_AT_decl_file")
            if k is None or not 0 <= k < len(self.files):
                return False
            return os.path.realpath(self.files[k]) == target

        out = [f"struct {n}" for (kind, n), d in self.tags.items()
               if kind == "struct" and here(d)]
        for n, d in self.typedefs.items():
            if here(d) and _strip(d).tag == "DW_TAG_structure_type":
                out.append(n)
        return sorted(out)


def _strip(die: Any) -> Any:
    """Through typedefs and qualifiers to the type itself."""
    seen = 0
    while die is not None and die.tag in ("DW_TAG_typedef", "DW_TAG_const_type",
                                          "DW_TAG_volatile_type", "DW_TAG_atomic_type",
                                          "DW_TAG_restrict_type"):
        nxt = _type(die)
        if nxt is None:
            return die
        die = nxt
        seen += 1
        if seen > 1000:
            raise LayoutError("a typedef loop in the debug information")
    return die


def resolve(index: Index, name: str, filename: str, header: Path) -> str:
    """The C spelling of the struct called name ('struct s', a tag, a typedef name)."""
    words = name.split()
    if len(words) == 2 and words[0] in ("struct", "union", "enum"):
        kind, tag = words
        die = index.tags.get((kind, tag))
        if die is None:
            raise _not_found(index, name, filename, header)
        return _spelling_of(die, name, name)
    if len(words) != 1:
        raise LayoutError(f"not a struct name: {name!r} (give 'struct NAME', the tag or a"
                          " typedef name)")
    if name in index.typedefs:
        return _spelling_of(_strip(index.typedefs[name]), name, name)
    for kind in ("struct", "union", "enum"):
        if (kind, name) in index.tags:
            return _spelling_of(index.tags[(kind, name)], name, f"{kind} {name}")
    raise _not_found(index, name, filename, header)


def _spelling_of(die: Any, name: str, spelling: str) -> str:
    what = {"DW_TAG_union_type": "a union", "DW_TAG_enumeration_type": "an enum",
            "DW_TAG_pointer_type": "a pointer", "DW_TAG_array_type": "an array",
            "DW_TAG_subroutine_type": "a function type"}
    if die is None:
        raise LayoutError(f"{name} is void, not a struct")
    if die.tag != "DW_TAG_structure_type":
        kind = what.get(die.tag)
        shown = f"{kind} ({spell(die)})" if kind else spell(die)
        raise LayoutError(f"{name} is {shown}, not a struct")
    if "DW_AT_declaration" in die.attributes:
        raise LayoutError(f"{name} is {spell(die)}, which is declared but not defined")
    return spelling


def _not_found(index: Index, name: str, filename: str, header: Path) -> LayoutError:
    listing = ", ".join(index.declared_in(header)) or "no struct"
    return LayoutError(f"no struct {name!r} in {filename} (it declares: {listing})")


# The compiler's names of base types, as C programs usually spell them.
_BASE_NAMES = {
    "short int": "short", "short unsigned int": "unsigned short", "long int": "long",
    "long unsigned int": "unsigned long", "long long int": "long long",
    "long long unsigned int": "unsigned long long", "__int128 unsigned": "unsigned __int128",
}


def spell(die: Any | None) -> str:
    """A C spelling of a type, for messages and tables."""
    if die is None:
        return "void"
    tag = die.tag
    name = _name(die)
    if tag == "DW_TAG_base_type":
        return _BASE_NAMES.get(name or "?", name or "?")
    if tag == "DW_TAG_typedef":
        return name or "?"
    if tag == "DW_TAG_structure_type":
        return f"struct {name}" if name else "struct (anonymous)"
    if tag == "DW_TAG_union_type":
        return f"union {name}" if name else "union (anonymous)"
    if tag == "DW_TAG_enumeration_type":
        return f"enum {name}" if name else "enum (anonymous)"
    if tag == "DW_TAG_pointer_type":
        target = _type(die)
        if target is not None and _strip(target).tag == "DW_TAG_subroutine_type":
            return "a function pointer"
        return spell(target) + " *"
    if tag == "DW_TAG_const_type":
        return "const " + spell(_type(die))
    if tag == "DW_TAG_volatile_type":
        return "volatile " + spell(_type(die))
    if tag == "DW_TAG_atomic_type":
        return "_Atomic " + spell(_type(die))
    if tag == "DW_TAG_array_type":
        return spell(_type(die)) + "".join(f"[{n if n is not None else ''}]"
                                           for n in _dims(die))
    if tag == "DW_TAG_subroutine_type":
        return "a function"
    return str(tag).removeprefix("DW_TAG_")


def _dims(die: Any) -> list[int | None]:
    """The lengths of an array type's dimensions (None: no length, a flexible array)."""
    out: list[int | None] = []
    for sub in die.iter_children():
        if sub.tag != "DW_TAG_subrange_type":
            continue
        count = _int_attr(sub, "DW_AT_count")
        upper = _int_attr(sub, "DW_AT_upper_bound")
        if count is not None:
            out.append(count)
        elif upper is not None:
            # an unsigned form holding -1 is a zero-length array
            out.append(0 if upper in (-1, (1 << 64) - 1, (1 << 32) - 1) else upper + 1)
        else:
            out.append(None)
    return out or [None]


# ---- from DWARF types to nodes --------------------------------------------------------


class Builder:
    """Turns the struct's DIE into layout nodes, refusing what cannot be shared."""

    def __init__(self, top: str) -> None:
        self.top = top
        self.cache: dict[int, StructNode] = {}

    def refuse(self, path: str, what: str) -> LayoutError:
        if len(path) > 80:  # a path through many nested structs: its two ends
            path = f"{path[:36]}...{path[-36:]}"
        return LayoutError(f"{self.top}: field {path} {what}" if path else f"{self.top} {what}")

    def struct(self, die: Any, path: str, shown: str | None, depth: int) -> StructNode:
        cached = self.cache.get(die.offset)
        if cached is not None:
            return cached
        if depth > MAX_DEPTH:
            raise self.refuse(path, f"is nested more than {MAX_DEPTH} structs deep: refused")
        if "DW_AT_declaration" in die.attributes:
            raise self.refuse(path, f"is {spell(die)}, which is declared but not defined")
        size = _int_attr(die, "DW_AT_byte_size") or 0
        if size > MAX_SIZE:
            raise self.refuse(path, f"is {size} bytes, more than the {MAX_SIZE}-byte limit"
                              " of a shared record")
        members: list[tuple[str, int, Node]] = []
        self._members(die, path, 0, members, depth)
        if not members:
            raise self.refuse(path, f"({spell(die)}) has no members" if path
                              else "has no members")
        tag = _name(die)
        if depth == 0 and shown:  # the struct asked for, by its typedef name
            ctype = shown
        else:
            ctype = f"struct {tag}" if tag else (shown or "struct (anonymous)")
        cls = class_name(shown or tag or path.split(".")[-1].split("[")[0] or "record")
        seen: dict[str, str] = {}
        for name, _, _ in members:
            if name in seen:
                raise self.refuse(join_path(path, name), "is declared twice")
            seen[name] = name
        order = sorted(members, key=lambda m: m[1])
        for (a, a_off, a_node), (b, b_off, _) in itertools.pairwise(order):
            if b_off < a_off + a_node.size:
                raise self.refuse(join_path(path, b), f"overlaps {join_path(path, a)}")
        try:
            node = StructNode(ctype, size, members, cls)
        except ValueError as e:
            raise self.refuse(path, f"cannot be laid out: {e}") from None
        self.cache[die.offset] = node
        return node

    def _members(self, die: Any, path: str, base: int, out: list[tuple[str, int, Node]],
                 depth: int) -> None:
        for m in die.iter_children():
            if m.tag != "DW_TAG_member":
                continue
            name = _name(m)
            offset = _int_attr(m, "DW_AT_data_member_location")
            mtype = _type(m)
            if offset is None:
                where = join_path(path, name) if name else path
                raise self.refuse(where, "has an offset the debug information does not give"
                                  " as a number")
            if name is None:  # an anonymous struct or union: its members are the struct's
                inner = _strip(mtype)
                if inner is not None and inner.tag == "DW_TAG_union_type":
                    first = next((_name(c) for c in inner.iter_children()
                                  if c.tag == "DW_TAG_member"), None)
                    raise self.refuse(join_path(path, first or "?"),
                                      "is in an anonymous union: unions are not supported"
                                      " (the bytes do not say which member is meant)")
                if inner is None or inner.tag != "DW_TAG_structure_type":
                    raise self.refuse(path, f"has an unnamed member of type {spell(mtype)}")
                self._members(inner, path, base + offset, out, depth + 1)
                continue
            sub = join_path(path, name)
            check_field_name(self.top, sub, name)
            if "DW_AT_bit_size" in m.attributes:
                bits = _int_attr(m, "DW_AT_bit_size")
                raise self.refuse(sub, f"is a bitfield ({spell(mtype)} : {bits}): its bits"
                                  " are not addressable bytes; use a whole integer")
            out.append((name, base + offset, self.node(mtype, sub, None, depth)))

    def node(self, die: Any, path: str, shown: str | None, depth: int) -> Node:
        """The node of a member's type; shown is the typedef name it was declared with."""
        if die is None:
            raise self.refuse(path, "is void")
        tag = die.tag
        if tag == "DW_TAG_typedef":
            return self.node(_type(die), path, shown or _name(die), depth)
        if tag in ("DW_TAG_const_type", "DW_TAG_volatile_type", "DW_TAG_atomic_type"):
            return self.node(_type(die), path, shown, depth)
        if tag == "DW_TAG_structure_type":
            return self.struct(die, path, shown, depth + 1)
        if tag == "DW_TAG_union_type":
            raise self.refuse(path, f"is a union ({shown or spell(die)}): unions are not"
                              " supported (the bytes do not say which member is meant)")
        if tag == "DW_TAG_pointer_type":
            s = spell(die)
            if s == "a function pointer":
                raise self.refuse(path, "is a function pointer: an address means nothing"
                                  " in another process")
            raise self.refuse(path, f"is a pointer ({s}): an address means nothing in"
                              " another process")
        if tag == "DW_TAG_array_type":
            return self.array(die, path, shown, depth)
        if tag == "DW_TAG_enumeration_type":
            return self.enum(die, path, shown)
        if tag == "DW_TAG_base_type":
            return self.base(die, path, shown)
        raise self.refuse(path, f"has type {spell(die)}, which is not supported")

    def array(self, die: Any, path: str, shown: str | None, depth: int) -> Node:
        dims = _dims(die)
        item_die = _type(die)
        vector = "DW_AT_GNU_vector" in die.attributes
        if dims[0] is None:
            raise self.refuse(path, f"is a flexible array member ({spell(die)}): its length"
                              " is not part of the struct")
        if 0 in dims:
            raise self.refuse(path, f"is a zero-length array ({spell(die)}): its length is"
                              " not part of the struct")
        total = _int_attr(die, "DW_AT_byte_size")
        if total is not None and total > MAX_SIZE:
            raise self.refuse(path, f"is {total} bytes, more than the {MAX_SIZE}-byte limit"
                              " of a shared record")
        inner_path = path + "[0]" * len(dims)
        item = self.node(item_die, inner_path, None, depth)
        if vector and isinstance(item, CharNode):
            item = IntNode("char", 1, True)
        count = 1
        for n in dims:
            count *= n or 1
        if count * item.size > MAX_SIZE:
            raise self.refuse(path, f"is {count * item.size} bytes, more than the"
                              f" {MAX_SIZE}-byte limit of a shared record")
        node: Node = item
        for k, n in enumerate(reversed(dims)):
            assert n is not None
            last = k == len(dims) - 1
            if isinstance(node, CharNode) and not vector:
                node = TextNode(n)
            else:
                node = ArrayNode(node, n)
            if last and shown is not None and isinstance(node, ArrayNode) and vector:
                node.ctype = shown
        if item_count(node) > MAX_ITEMS:
            raise self.refuse(path, f"holds more than {MAX_ITEMS} values to decode one by"
                              f" one ({spell(die)}): too many for a record")
        if vector and total is not None and node.size != total:
            raise self.refuse(path, f"is a vector of {total} bytes whose elements do not"
                              " fill it")
        return node

    def enum(self, die: Any, path: str, shown: str | None) -> Node:
        size = _int_attr(die, "DW_AT_byte_size") or 0
        if size not in (1, 2, 4, 8):
            raise self.refuse(path, f"is a {size}-byte enum: not supported")
        under = _strip(_type(die))
        values: list[int] = []
        names: list[str] = []
        for e in die.iter_children():
            if e.tag == "DW_TAG_enumerator":
                attr = e.attributes["DW_AT_const_value"]
                values.append(int(attr.value))
                names.append(_name(e) or "?")
        if under is not None and under.tag == "DW_TAG_base_type":
            enc = _int_attr(under, "DW_AT_encoding")
            signed = enc in (_ATE_SIGNED, _ATE_SIGNED_CHAR)
        else:
            signed = any(v < 0 for v in values)
        bits = 8 * size
        fixed = {}
        for v, n in zip(values, names, strict=True):
            if signed and v >= 1 << (bits - 1):
                v -= 1 << bits
            fixed[v] = n
        return IntNode(shown or spell(die), size, signed, fixed)

    def base(self, die: Any, path: str, shown: str | None) -> Node:
        enc = _int_attr(die, "DW_AT_encoding")
        size = _int_attr(die, "DW_AT_byte_size") or 0
        cname = _name(die) or "?"
        ctype = shown or spell(die)
        if enc == _ATE_BOOLEAN and size == 1:
            return BoolNode()
        if enc == _ATE_FLOAT:
            if cname == "long double" or size > 8:
                raise self.refuse(path, f"is a long double ({ctype}): no Python type holds it"
                                  " exactly" if cname == "long double" else
                                  f"has type {ctype}, which is not supported")
            if size not in (4, 8):
                raise self.refuse(path, f"has type {ctype}, which is not supported")
            return FloatNode(ctype, size)
        if enc == _ATE_COMPLEX:
            raise self.refuse(path, f"has type {cname}, which is not supported")
        if cname == "char" and size == 1:
            return CharNode()
        if enc in (_ATE_SIGNED, _ATE_SIGNED_CHAR, _ATE_UNSIGNED, _ATE_UNSIGNED_CHAR,
                   _ATE_UTF, _ATE_BOOLEAN):
            if size not in (1, 2, 4, 8):
                raise self.refuse(path, f"is a {size}-byte integer ({ctype}): not supported")
            return IntNode(ctype, size, enc in (_ATE_SIGNED, _ATE_SIGNED_CHAR))
        raise self.refuse(path, f"has type {ctype}, which is not supported")


def _read_index(obj: Path) -> Index:
    """The probe's types; CompilerError when there is no object with DWARF to read (flags
    such as -E, -S or -flto, or a compiler that writes something else)."""
    try:
        return Index.of(obj)
    except LayoutError:
        raise
    except FileNotFoundError:
        raise CompilerError("the compiler wrote no object file (do CFLAGS hold -E, -S or"
                            " -fsyntax-only?)") from None
    except Exception as e:  # pyelftools: ELFError, DWARFError, or a malformed section
        raise CompilerError(f"cannot read the compiler's debug information:"
                            f" {' '.join(str(e).split()) or type(e).__name__}") from None


def layout_from_compiler(compiler: Compiler, header: Path, name: str, filename: str
                         ) -> tuple[StructNode, int, str]:
    """Compile a probe of the header and read the struct: (root node, alignment, the C
    spelling of the type).  Runs nothing it builds.

    The probe declares one object of the struct and an array as long as its alignment,
    spelling the type as given ('struct s', or a typedef name).  If that does not compile
    (the name is a tag, or not declared), a probe of the header alone says what the name
    is, and a second probe spells it right.
    """
    include = include_line(header)
    name = " ".join(name.split())
    names = {os.fspath(header.resolve()): filename}
    with tempfile.TemporaryDirectory(prefix="mmapipc-layout-") as tmp:
        probe = Path(tmp, "probe.c")
        obj = Path(tmp, "probe.o")
        names[os.fspath(probe)] = "probe.c"
        names[tmp + os.sep] = ""
        debug = ["-g", "-gdwarf-4", "-fno-lto", "-c", "-x", "c", "-o", os.fspath(obj),
                 os.fspath(probe)]

        def compile_probe(spelling: str | None) -> Index:
            """With spelling: the alignment and one object (only the types they use are in
            the debug information); without: every type the header declares."""
            text = include + f"\nchar {_SENTINEL};\n"  # debug information, whatever the header
            every = ["-fno-eliminate-unused-debug-types"]
            if spelling is not None:
                text += (f"\nchar {_ALIGN}[_Alignof({spelling})];\n"
                         f"{spelling} {_OBJECT};\n")
                every = []
            probe.write_text(text, encoding="utf-8", errors="surrogateescape")
            obj.unlink(missing_ok=True)
            compiler.run([*compiler.args(), *every, *debug], filename, names)
            return _read_index(obj)

        index: Index | None = None
        spelling = name
        words = name.split()
        if len(words) == 2 and words[0] == "struct" and _is_ident(words[1]):
            guesses = [name]
        elif len(words) == 1 and _is_ident(name):
            guesses = [name, f"struct {name}"]  # a typedef name, else a tag
        else:
            guesses = []
        for guess in guesses:
            try:
                index = compile_probe(guess)
            except CompilerTimeout:
                raise
            except CompilerError:
                continue  # not a type by that spelling
            try:
                found = resolve(index, name, filename, header)
            except LayoutError:
                found = None
            if found == guess:
                spelling = guess
                break
            index = None  # a macro made it compile: what the name is, the header says
            break
        if index is None:  # what is the name? every type of the header, then the probe
            spelling = resolve(compile_probe(None), name, filename, header)
            index = compile_probe(spelling)
    try:
        align_die = _type(index.variables[_ALIGN])
        object_die = _type(index.variables[_OBJECT])
    except KeyError:
        raise CompilerError("the probe's objects are missing from the debug information"
                            ) from None
    dims = _dims(_strip(align_die))
    align = dims[0] or 1
    root_die = _strip(object_die)
    shown = spelling if not spelling.startswith("struct ") else None
    builder = Builder(spelling)
    root = builder.struct(root_die, "", shown, 0)
    return root, align, spelling
