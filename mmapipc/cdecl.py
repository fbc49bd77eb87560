"""From a C header's text to cffi declarations: what cffi's cdef cannot take itself.

cffi parses plain declarations only.  A header also has comments, include guards,
#include lines, integer macros used as array sizes, ``#pragma pack`` and
``__attribute__((packed))``, function prototypes and inline functions.  This module
turns such text into top-level statements cffi can take, each with the packing it was
declared under, and keeps what it could not express so that a struct depending on it
is refused rather than laid out wrongly.
"""

from __future__ import annotations

import ast
import platform
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from mmapipc.errors import MmapipcError


class LayoutError(MmapipcError, ValueError):
    """A C declaration that cannot be parsed, or a struct that cannot be shared safely."""


@dataclass
class Statement:
    """One top-level declaration, as cffi will see it."""

    text: str
    line: int  # first line in the original text
    pack: int  # 0: natural alignment; 1: packed; n: #pragma pack(n)
    defines: set[str] = field(default_factory=set)  # 'struct x', 'union y', 'T'
    problems: list[str] = field(default_factory=list)


# Attributes that do not change a struct's layout.
_HARMLESS = {"deprecated", "unavailable", "unused", "used", "maybe_unused", "may_alias",
             "visibility", "warn_unused_result", "nonstring", "designated_init",
             "nodiscard", "cold", "hot"}
_ATTR = re.compile(r"\b(__attribute__|__attribute|_Alignas|alignas|__declspec)\s*\(")
_TAG = re.compile(r"\b(struct|union|enum)\s+([A-Za-z_]\w*)\s*\{")
_INNER_TAG = re.compile(r"\b(struct|union)\b(\s+[A-Za-z_]\w*)?\s*\{")
_IDENT = re.compile(r"[A-Za-z_]\w*")
_WORD = re.compile(r"\b[A-Za-z_]\w*")
_INT_SUFFIX = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b")
_KEYWORDS = {"struct", "union", "enum", "typedef", "const", "volatile", "unsigned",
             "signed", "int", "char", "short", "long", "float", "double", "void", "_Bool",
             "bool"}


def strip_comments(text: str) -> str:
    """Remove /* */ and // comments, keeping every newline and string literal."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(" " + "\n" * text.count("\n", i, end))
            i = end
        elif c == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in "/\"'":
                j += 1
            if j == i:
                j += 1
            out.append(text[i:j])
            i = j
    return "".join(out)


def expand(text: str, macros: dict[str, str]) -> str:
    """Replace object-like macros by their text, as the preprocessor does."""
    for _ in range(16):
        new = _WORD.sub(lambda m: macros.get(m.group(), m.group()), text)
        if new == text:
            break
        text = new
    return text


def eval_int(expr: str, macros: dict[str, str], unknown: int | None = None
             ) -> int | None:
    """An integer constant expression, or None if it is anything else.

    Macros are expanded first; an identifier left over is `unknown` (0 in #if, as in
    C) or makes the expression unknown (None).
    """
    expr = expand(expr, macros)
    expr = _INT_SUFFIX.sub(r"\1", expr.strip())
    expr = re.sub(r"\b0[xX]([0-9a-fA-F]+)\b", lambda m: str(int(m.group(1), 16)), expr)
    expr = re.sub(r"\b0([0-7]+)\b", lambda m: str(int(m.group(1), 8)), expr)
    if _WORD.search(expr):
        if unknown is None:
            return None
        expr = _WORD.sub(str(unknown), expr)
    expr = expr.replace("&&", " and ").replace("||", " or ")
    expr = re.sub(r"!(?!=)", " not ", expr)
    if not expr.strip():
        return None
    try:
        tree = ast.parse(expr.strip(), mode="eval")
        return int(_eval_node(tree.body))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def _eval_node(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp):
        v = _eval_node(node.operand)
        if isinstance(node.op, ast.USub):
            return -v
        if isinstance(node.op, ast.UAdd):
            return v
        if isinstance(node.op, ast.Invert):
            return ~v
        if isinstance(node.op, ast.Not):
            return int(not v)
    if isinstance(node, ast.BoolOp):
        values = [_eval_node(v) for v in node.values]
        if isinstance(node.op, ast.And):
            return int(all(values))
        return int(any(values))
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        a, b = _eval_node(node.left), _eval_node(node.comparators[0])
        compare = {ast.Eq: a == b, ast.NotEq: a != b, ast.Lt: a < b, ast.LtE: a <= b,
                   ast.Gt: a > b, ast.GtE: a >= b}
        for kind, result in compare.items():
            if isinstance(node.ops[0], kind):
                return int(result)
    if isinstance(node, ast.BinOp):
        a, b = _eval_node(node.left), _eval_node(node.right)
        op = node.op
        if isinstance(op, ast.Add):
            return a + b
        if isinstance(op, ast.Sub):
            return a - b
        if isinstance(op, ast.Mult):
            return a * b
        if isinstance(op, (ast.Div, ast.FloorDiv)):
            q = abs(a) // abs(b)
            return q if (a >= 0) == (b >= 0) else -q
        if isinstance(op, ast.Mod):
            q = abs(a) // abs(b)
            return a - b * (q if (a >= 0) == (b >= 0) else -q)
        if isinstance(op, ast.LShift) and 0 <= b < 256:
            return a << b
        if isinstance(op, ast.RShift) and 0 <= b < 256:
            return a >> b
        if isinstance(op, ast.BitAnd):
            return a & b
        if isinstance(op, ast.BitOr):
            return a | b
        if isinstance(op, ast.BitXor):
            return a ^ b
    raise ValueError("not an integer constant expression")


def _skip_balanced(text: str, pos: int) -> int:
    """Index just past the parenthesis group starting at text[pos] == '('."""
    depth = 0
    for i in range(pos, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def _split_top(text: str) -> list[str]:
    """Split at commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


class _Pragmas:
    """The #pragma pack state: a current value and a push/pop stack."""

    def __init__(self) -> None:
        self.value = 0
        self.stack: list[int] = []

    def apply(self, args: str, line: int) -> None:
        parts = [p.strip() for p in args.split(",")] if args.strip() else []
        if not parts:
            self.value = 0
            return
        head = parts[0]
        if head in ("push", "pop"):
            rest = [p for p in parts[1:] if not _IDENT.fullmatch(p)]  # labels ignored
            if head == "push":
                self.stack.append(self.value)
                if rest:
                    self.value = self._number(rest[0], line)
            else:
                if self.stack:
                    self.value = self.stack.pop()
                if rest:
                    self.value = self._number(rest[0], line)
            return
        if len(parts) == 1:
            self.value = self._number(head, line)
            return
        raise LayoutError(f"line {line}: #pragma pack({args}) is not understood")

    @staticmethod
    def _number(text: str, line: int) -> int:
        if text.isdigit() and int(text) in (1, 2, 4, 8, 16):
            return int(text)
        raise LayoutError(f"line {line}: #pragma pack value must be 1, 2, 4, 8 or 16,"
                          f" got {text!r}")


def predefined() -> dict[str, str]:
    """The compiler's own macros that headers test most (what gcc defines here)."""
    macros = {"__STDC__": "1", "__STDC_VERSION__": "201710L", "__GNUC__": "4",
              "__STDC_HOSTED__": "1", "__CHAR_BIT__": "8"}
    if sys.platform.startswith("linux"):
        macros.update({"__linux__": "1", "__linux": "1", "__unix__": "1", "__unix": "1"})
    if sys.maxsize > 2**32:
        macros.update({"__LP64__": "1", "_LP64": "1"})
    arch = {"x86_64": "__x86_64__", "amd64": "__x86_64__", "aarch64": "__aarch64__",
            "arm64": "__aarch64__", "i686": "__i386__", "i386": "__i386__",
            "armv7l": "__arm__", "ppc64le": "__powerpc64__", "riscv64": "__riscv",
            "s390x": "__s390x__"}.get(platform.machine().lower())
    if arch:
        macros[arch] = "1"
    if sys.byteorder == "little":
        macros["__ORDER_LITTLE_ENDIAN__"] = "1234"
        macros["__BYTE_ORDER__"] = "1234"
    else:
        macros["__ORDER_BIG_ENDIAN__"] = "4321"
        macros["__BYTE_ORDER__"] = "4321"
    return macros


def _condition(directive: str, rest: str, macros: dict[str, str]) -> bool:
    """Does the #if / #ifdef / #ifndef / #elif branch hold?  Unknown: assume it does."""
    if directive in ("ifdef", "ifndef"):
        name = rest.split()[0] if rest.split() else ""
        return (name in macros) == (directive == "ifdef")
    expr = re.sub(r"\bdefined\s*(?:\(\s*([A-Za-z_]\w*)\s*\)|([A-Za-z_]\w*))",
                  lambda m: "1" if (m.group(1) or m.group(2)) in macros else "0", rest)
    value = eval_int(expr, macros, unknown=0)
    return True if value is None else value != 0


def preprocess(text: str) -> list[Statement]:
    """The top-level declarations of a header, with packing and known problems."""
    text = strip_comments(text).replace("\r\n", "\n")
    lines = text.split("\n")
    macros = predefined()
    pragmas = _Pragmas()
    # (active, taken, parent_active) for every open #if
    conds: list[tuple[bool, bool, bool]] = []
    active = True
    kept: list[str] = []
    pack_by_line: list[int] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        start = i
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i]
        joined = i - start
        i += 1
        m = re.match(r"\s*#\s*(\w*)\s*(.*)$", line)
        if m is None:
            kept.append(line if active else "")
            kept.extend([""] * joined)
            pack_by_line.extend([pragmas.value] * (joined + 1))
            continue
        directive, rest = m.group(1), m.group(2).strip()
        if directive in ("if", "ifdef", "ifndef"):
            branch = active and _condition(directive, rest, macros)
            conds.append((branch, branch, active))
            active = branch
        elif directive in ("elif", "else") and conds:
            _, taken, parent = conds[-1]
            branch = parent and not taken and (
                directive == "else" or _condition("if", rest, macros))
            conds[-1] = (branch, taken or branch, parent)
            active = branch
        elif directive == "endif" and conds:
            active = conds.pop()[2]
        elif active and directive == "define":
            d = re.match(r"([A-Za-z_]\w*)(\(?)\s*(.*)$", rest)
            if d is not None:
                # function-like macros are known to be defined, never expanded
                macros[d.group(1)] = d.group(3) if not d.group(2) else d.group(1)
        elif active and directive == "undef":
            macros.pop(rest.split()[0] if rest.split() else "", None)
        elif active and directive == "pragma":
            p = re.match(r"pack\s*\((.*)\)\s*$", rest)
            if p is not None:
                pragmas.apply(p.group(1), start + 1)
            elif rest.startswith("pack"):
                raise LayoutError(f"line {start + 1}: #pragma {rest} is not understood")
        kept.extend([""] * (joined + 1))
        pack_by_line.extend([pragmas.value] * (joined + 1))
    body = expand("\n".join(kept), {k: v for k, v in macros.items() if k != v})
    body = re.sub(r"\[([^\[\]]*[^\[\]\s\d][^\[\]]*)\]", _bracket, body)
    return _statements(body, pack_by_line)


def _bracket(m: re.Match[str]) -> str:
    value = eval_int(m.group(1), {})
    return m.group(0) if value is None else f"[{value}]"


def _statements(body: str, pack_by_line: list[int]) -> list[Statement]:
    """Split at ';' outside braces, and after function bodies."""
    out: list[Statement] = []
    depth = 0
    start = opened = 0
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == "{":
            if depth == 0:
                opened = i
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0 and _without_attributes(body[start:opened]).rstrip().endswith(")"):
                # a function definition: its body ends the statement
                out.append(_statement(body, start, i + 1, pack_by_line, function=True))
                start = i + 1
        elif c == ";" and depth == 0:
            out.append(_statement(body, start, i + 1, pack_by_line))
            start = i + 1
        elif c == "(":
            i = _skip_balanced(body, i) - 1
        i += 1
    if body[start:].strip():
        out.append(_statement(body + ";", start, n + 1, pack_by_line))
    return [s for s in out if s.text.strip()]


def _without_attributes(text: str) -> str:
    while (m := _ATTR.search(text)) is not None:
        text = text[:m.start()] + " " + text[_skip_balanced(text, m.end() - 1):]
    return text


def _line_of(body: str, pos: int) -> int:
    return body.count("\n", 0, pos) + 1


def _statement(body: str, start: int, end: int, pack_by_line: list[int],
               function: bool = False) -> Statement:
    # Leading blank lines stay out of the statement so that its line is its first.
    raw = body[start:end]
    lead = len(raw) - len(raw.lstrip())
    line = _line_of(body, start + lead)
    text = raw[lead:]
    pack = pack_by_line[min(line, len(pack_by_line)) - 1] if pack_by_line else 0
    st = Statement(text, line, pack)
    if function:
        st.text = ""
        return st
    _attributes(st)
    flat = st.text
    typedef = re.match(r"\s*typedef\b", flat) is not None
    if not typedef and "{" not in flat and not _FORWARD.match(flat):
        st.text = ""  # a prototype, a variable, a static assert: no type in it
        return st
    if not typedef and "{" in flat:
        if "(" in _outside_braces(flat):
            st.text = ""  # a function returning a struct defined in place
            return st
        # a definition with variables: keep the type only
        flat = st.text = flat[:flat.rfind("}") + 1] + ";"
    for kind, tag in _TAG.findall(st.text):
        st.defines.add(f"{kind} {tag}")
    if flat.lstrip().startswith("typedef"):
        tail = _outside_braces(flat)
        names = [w for w in _IDENT.findall(tail) if w not in _KEYWORDS]
        if names:
            last_decl = tail.rstrip(" ;\n\t").split(",")
            for decl in last_decl:
                idents = [w for w in _IDENT.findall(decl) if w not in _KEYWORDS]
                if idents:
                    st.defines.add(idents[-1])
    return st


_FORWARD = re.compile(r"\s*(struct|union|enum)\s+[A-Za-z_]\w*\s*;\s*$")


def _outside_braces(text: str) -> str:
    out, depth = [], 0
    for c in text:
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif depth == 0:
            out.append(c)
    return "".join(out)


def _member_at(text: str, start: int, end: int) -> str | None:
    """The member declared around text[start:end] (an attribute), if inside braces."""
    lo = max(text.rfind(";", 0, start), text.rfind("{", 0, start)) + 1
    hi_candidates = [i for i in (text.find(";", end), text.find("}", end)) if i >= 0]
    hi = min(hi_candidates) if hi_candidates else len(text)
    decl = text[lo:start] + " " + text[end:hi]
    decl = re.sub(r"\[[^\]]*\]", " ", re.sub(r"\([^()]*\)", " ", decl))
    names = [w for w in _IDENT.findall(decl) if w not in _KEYWORDS]
    return names[-1] if names else None


def _attributes(st: Statement) -> None:
    """Take the attributes out of a statement: packed sets st.pack, the rest of what
    changes a layout is recorded as a problem."""
    text = st.text
    packed_attr = False
    while True:
        m = _ATTR.search(text)
        if m is None:
            break
        open_at = m.end() - 1
        end = _skip_balanced(text, open_at)
        inner = text[open_at + 1:end - 1].strip()
        depth = text.count("{", 0, m.start()) - text.count("}", 0, m.start())
        line = st.line + text.count("\n", 0, m.start())
        member = _member_at(text, m.start(), end) if depth > 0 else None
        where = f"field {member}: " if member else ""
        keyword = m.group(1)
        if keyword.startswith("__attribute"):
            if inner.startswith("(") and inner.endswith(")"):
                inner = inner[1:-1]
            for attr in _split_top(inner):
                name = attr.split("(")[0].strip().strip("_")
                if name == "packed" and depth == 0:
                    st.pack = 1
                    packed_attr = True
                elif name == "packed":
                    st.problems.append(f"{where}__attribute__((packed)) on a member (line"
                                       f" {line}) is not supported: pack the whole struct")
                elif name not in _HARMLESS:
                    st.problems.append(f"{where}__attribute__(({attr})) (line {line}) is"
                                       " not supported: cffi cannot lay it out")
        else:
            st.problems.append(f"{where}{keyword}({inner}) (line {line}) is not supported:"
                               " cffi cannot lay it out")
        span = text[m.start():end]
        text = text[:m.start()] + re.sub(r"[^\n]", " ", span) + text[end:]
    text = re.sub(r"\b__extension__\b", " ", text)
    st.text = text
    if packed_attr:
        body = text[text.find("{") + 1:] if "{" in text else ""
        inner_def = _INNER_TAG.search(body)
        if inner_def is not None:
            what = (inner_def.group(1) + (inner_def.group(2) or "")).strip()
            if " " not in what:
                what = f"an anonymous {what}"
            st.problems.append(
                f"{what} is defined inside a packed struct (line {st.line}): cffi would"
                " pack it too, the compiler does not; declare it before")


def cdef(statements: list[Statement], filename: str) -> Any:
    """A fresh cffi FFI holding the statements, each cdef'd with its packing."""
    import cffi  # deferred: pycparser takes a while to import

    ffi = cffi.FFI()
    groups: list[tuple[int, list[Statement]]] = []
    for st in statements:
        if groups and groups[-1][0] == st.pack:
            groups[-1][1].append(st)
        else:
            groups.append((st.pack, [st]))
    for pack, sts in groups:
        parts: list[str] = []
        line = 1
        for st in sts:
            if st.line > line:
                parts.append("\n" * (st.line - line))
                line = st.line
            parts.append(st.text)
            line += st.text.count("\n")
        source = "".join(parts)
        options: dict[str, Any] = {}
        if pack == 1:
            options["packed"] = True
        elif pack > 1:
            options["pack"] = pack
        try:
            ffi.cdef(source, **options)
        except Exception as e:  # cffi raises CDefError, FFIError, TypeError, ...
            hint = _unknown_type(statements, ffi)
            if hint is not None:
                raise LayoutError(f"{filename}:{hint}") from None
            raise LayoutError(cffi_message(e, filename)) from None
    return ffi


_MEMBER = re.compile(r"[{;]\s*((?:(?:const|volatile|signed|unsigned|struct|union|enum)\s+)*)"
                     r"([A-Za-z_]\w*)\s+\**\s*[A-Za-z_]\w*")


def _unknown_type(statements: list[Statement], ffi: Any) -> str | None:
    """'line: unknown type name' for the first member whose type nobody declared
    (pycparser only says 'Invalid specifier list')."""
    typedefs = {d for st in statements for d in st.defines if " " not in d}
    for st in statements:
        for m in _MEMBER.finditer(st.text):
            word = m.group(2)
            if "struct" in m.group(1) or "union" in m.group(1) or "enum" in m.group(1):
                continue
            if word in typedefs or word in _KEYWORDS or word in ("void", "wchar_t"):
                continue
            try:
                ffi.typeof(word)
                continue
            except Exception:  # not a type cffi knows
                pass
            line = st.line + st.text.count("\n", 0, m.start(2))
            return (f"{line}: unknown type name {word!r} (declare it in the same text;"
                    " #include lines are not read)")
    return None


def cffi_message(exc: BaseException, filename: str) -> str:
    """cffi's (often multi-line) error as one line, with the original line number."""
    text = str(exc)
    m = re.search(r"<cdef source string>:(\d+)(?::\d+)?:\s*(.*)", text)
    if m is not None:
        detail = m.group(2).strip() or "parse error"
        first = text.strip().splitlines()[0]
        if first.startswith("cannot parse"):
            detail = f"cannot parse: {detail}"
        elif not first.startswith("<cdef"):
            detail = f"{first.split(':')[0]}: {detail}" if "<cdef" in first else detail
        return f"{filename}:{m.group(1)}: {detail}"
    text = text.split(".  Please look", 1)[0]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    joined = "; ".join(lines[:2]) if lines else type(exc).__name__
    return f"{filename}: {joined}"
