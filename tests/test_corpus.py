"""A corpus of headers: every layout agrees with the C compiler, or is refused clearly.

Each header in tests/headers/ names its struct on its first line and what to expect:
``ok``, ``size=N``/``align=N`` (the compiler's numbers, also checked), or
``refused="words"`` (a one-line LayoutError containing them, or one of "a|b"), and
``timeout=SEC`` for the compiler where the default would only make the test slow.  A
laid-out struct is then cross-checked with ``Layout.check()``: a C program compiled from
the same header prints sizeof, _Alignof, every member's offsetof and sizeof, and every
field of a record encoded here.  Nothing may hang, explode or end in a traceback.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from mmapipc import Layout, LayoutError
from mmapipc.dwarf import TIMEOUT

HEADERS = Path(__file__).resolve().parent / "headers"
SPEC = re.compile(r"mmapipc-corpus:\s*(?P<name>(?:struct\s+)?\w+)\s+(?P<rest>.*?)\s*\*/")


def corpus() -> list[Path]:
    return sorted(HEADERS.glob("*.h"))


def spec(header: Path) -> tuple[str, dict[str, str]]:
    m = SPEC.search(header.read_text().splitlines()[0])
    assert m is not None, f"{header.name}: no mmapipc-corpus line"
    expect: dict[str, str] = {}
    for item in re.finditer(r'(\w+)(?:=(?:"([^"]*)"|(\S+)))?', m.group("rest")):
        expect[item.group(1)] = item.group(2) or item.group(3) or ""
    return m.group("name"), expect


def test_the_corpus_is_large_enough() -> None:
    headers = corpus()
    assert len(headers) >= 40
    refused = [h for h in headers if "refused" in spec(h)[1]]
    assert 10 <= len(refused) < len(headers) - 30


@pytest.mark.parametrize("header", corpus(), ids=lambda p: p.stem)
def test_header(header: Path, cc: str) -> None:
    name, expect = spec(header)
    timeout = float(expect.get("timeout", TIMEOUT))
    start = time.monotonic()
    if "refused" in expect:
        with pytest.raises(LayoutError) as info:
            Layout.from_file(header, name, timeout=timeout)
        message = str(info.value)
        assert any(words in message for words in expect["refused"].split("|")), message
        assert "\n" not in message and "Traceback" not in message
    else:
        layout = Layout.from_file(header, name)
        assert layout.origin == "dwarf"
        if "size" in expect:
            assert layout.size == int(expect["size"])
        if "align" in expect:
            assert layout.align == int(expect["align"])
        report = layout.check()
        assert (report.size, report.align) == (layout.size, layout.align)
        assert report.offsets >= len(layout.fields) > 0 and report.values > 0
        # the JSON view lists every member, nested ones by path
        fields = layout.as_json()["fields"]
        assert [f["path"] for f in fields] == [m.name for m in layout.members]
    assert time.monotonic() - start < 15  # refused or done within seconds, never a hang
