"""Torn records under stress: one writer as fast as it can against more readers than cores.

Every record's fields follow from its id, so a record that is half one write and half
another shows.  read() must return no torn record from an mmapipc Writer (seq lock).  The
torn counts of read_raw() (one copy, as mmap_r does) are reported, not asserted (run with
-s to see them); those of read() against a C writer that memcpy's whole records (copy until
two copies agree) are measured by benchmarks/torn.py: they depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import numbered

from mmapipc import Writer

SECONDS = 3.0  # how long the readers run, per writer
READERS = {"read": 3, "raw": 3}  # reader processes by method: 6 readers + 1 writer on 2 cores
PATIENCE = 60.0
PERIOD = 2002  # records the writers cycle through: a multiple of 14 and of 2



PY_WRITER = f"""
import sys
from mmapipc import Student, Writer
def numbered(n):
    return Student(n, f"n{{n % 100000:05d}}" + "abcdefghijklm"[: n % 14], "mf"[n % 2])
records = [numbered(n) for n in range({PERIOD})]
with Writer(sys.argv[1]) as w:
    write = w.write
    print("ready", flush=True)
    while True:
        for r in records:
            write(r)
"""

# The records of numbered(), built in C (the same in every C writer below).
FILL_TABLE = rf"""    for (int n = 0; n < {PERIOD}; n++) {{
        static const char tail[] = "abcdefghijklm";
        memset(&table[n], 0, sizeof table[n]);
        table[n].id = n;
        snprintf(table[n].name, sizeof table[n].name, "n%05d%.*s", n % 100000, n % 14, tail);
        table[n].sex = "mf"[n % 2];
    }}
"""

C_WRITER = rf"""
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "mmapipc.h"

/* Whole records, memcpy'd into the mapping as fast as the CPU goes; no seq lock. */
static struct STU table[{PERIOD}];

int main(int argc, char **argv)
{{
    if (argc != 2)
        return 2;
{FILL_TABLE}    int fd = open(argv[1], O_RDWR | O_CREAT, 0664);
    if (fd < 0 || ftruncate(fd, sizeof(struct STU)) != 0)
        return 3;
    struct STU *mm = mmap(NULL, sizeof(struct STU), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mm == MAP_FAILED)
        return 4;
    close(fd);
    memcpy(mm, &table[0], sizeof(struct STU));
    printf("ready\n");
    fflush(stdout);
    for (;;) {{
        for (int n = 0; n < {PERIOD}; n++) {{
            memcpy(mm, &table[n], sizeof(struct STU));
            atomic_signal_fence(memory_order_seq_cst);  /* keep every store */
        }}
    }}
}}
"""

CORE_WRITER = rf"""
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include "mmapipc.c"

/* The mmapipc C core's own store (seq lock in the padding), as fast as the CPU goes. */
static struct STU table[{PERIOD}];

int main(int argc, char **argv)
{{
    if (argc != 2)
        return 2;
{FILL_TABLE}    mmapipc_channel *ch = mmapipc_new(sizeof(struct STU), 25, 26);
    if (ch == NULL || mmapipc_guard_install() != 0 ||
        mmapipc_open(ch, argv[1], MMAPIPC_WRITE) != 0)
        return 3;
    if (mmapipc_store(ch, (const char *)&table[0]) != 0)
        return 4;
    printf("ready\n");
    fflush(stdout);
    for (;;) {{
        for (int n = 0; n < {PERIOD}; n++) {{
            if (mmapipc_store(ch, (const char *)&table[n]) != 0)
                return 5;
        }}
    }}
}}
"""

READER = f"""
import json, sys, time
from mmapipc import Reader, Student, UnstableRecordError
def numbered(n):
    return Student(n, f"n{{n % 100000:05d}}" + "abcdefghijklm"[: n % 14], "mf"[n % 2])
expected = [numbered(n) for n in range({PERIOD})]
path, method, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
reads = torn = unstable = changes = torn_changes = 0
examples = []
prev = None
with Reader(path) as r:
    get = r.read if method == "read" else r.read_raw
    end = time.monotonic() + seconds
    while True:
        for _ in range(200):
            try:
                rec = get()
            except UnstableRecordError:
                unstable += 1
                continue
            reads += 1
            changed = rec != prev
            changes += changed
            prev = rec
            if not (0 <= rec.id < {PERIOD} and rec == expected[rec.id]):
                torn += 1
                torn_changes += changed
                if changed and len(examples) < 3:
                    examples.append(repr(rec))
        if time.monotonic() > end:
            break
    stats = r.stats
print(json.dumps({{"method": method, "reads": reads, "torn": torn, "unstable": unstable,
                  "changes": changes, "torn_changes": torn_changes, "examples": examples,
                  "stats": stats}}))
"""


def _stress(writer_cmd: list[str], path: Path) -> dict[str, dict[str, Any]]:
    """Run the writer, then the readers for SECONDS; totals by read method."""
    writer = subprocess.Popen(writer_cmd, stdout=subprocess.PIPE)
    readers: list[subprocess.Popen[bytes]] = []
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == b"ready\n", "the writer did not start"
        for method, n in READERS.items():
            for _ in range(n):
                readers.append(subprocess.Popen(
                    [sys.executable, "-c", READER, str(path), method, str(SECONDS)],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        results = []
        for p in readers:
            out, err = p.communicate(timeout=PATIENCE)
            assert p.returncode == 0, err.decode()
            results.append(json.loads(out))
        assert writer.poll() is None, f"the writer died: status {writer.returncode}"
    finally:
        for p in [writer, *readers]:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=PATIENCE)
    totals: dict[str, dict[str, Any]] = {}
    for res in results:
        t = totals.setdefault(res["method"], {"examples": []})
        for key in ("reads", "torn", "unstable", "changes", "torn_changes"):
            t[key] = t.get(key, 0) + res[key]
        for key in ("seqlock_reads", "fallback_reads"):
            t[key] = t.get(key, 0) + res["stats"][key]
        t["examples"] += res["examples"][: 3 - len(t["examples"])]
    return totals


def _report(writer: str, totals: dict[str, dict[str, Any]]) -> str:
    lines = []
    for method in READERS:
        t = totals[method]
        lines.append(
            f"{writer} writer, {READERS[method]} x {method}(): {t['torn']} torn of"
            f" {t['reads']} reads; {t['torn_changes']} torn of {t['changes']} distinct"
            f" results ({t['unstable']} unstable; copies by seq lock {t['seqlock_reads']},"
            f" by agreement {t['fallback_reads']}); e.g. {t['examples']}"
        )
    text = "\n".join(lines)
    print("\n" + text)
    return text


def test_no_torn_record_from_an_mmapipc_writer(tmp_path: Path) -> None:
    path = tmp_path / "stress.bin"
    with Writer(path) as w:
        w.write(numbered(0))
    totals = _stress([sys.executable, "-c", PY_WRITER, str(path)], path)
    report = _report("mmapipc", totals)
    read, raw = totals["read"], totals["raw"]
    assert read["reads"] > 0 and raw["reads"] > 0, report
    assert read["torn"] == 0, report
    assert read["unstable"] == 0, report
    assert read["seqlock_reads"] > 0, report  # the seq lock was really used


def test_no_torn_record_from_the_c_core_writer(tmp_path: Path, build_c: Any) -> None:
    """The same seq lock driven by the C core at full speed: far more stores in flight."""
    exe = build_c("core_writer", CORE_WRITER)
    path = tmp_path / "stress.bin"
    totals = _stress([str(exe), str(path)], path)
    report = _report("mmapipc C core", totals)
    read, raw = totals["read"], totals["raw"]
    assert read["reads"] > 0 and raw["reads"] > 0, report
    assert read["torn"] == 0, report
    assert read["unstable"] == 0, report
    assert read["seqlock_reads"] > 0, report
