#!/usr/bin/env python3
"""Torn records from a lock-free C writer: measured, not asserted.

    python benchmarks/torn.py [--seconds 3]

A C writer memcpy's whole `struct STU` records into the mapping as fast as the CPU goes,
with no lock (as `mmap_w` stores, only without its sleep), while 3 processes read() (copy
until two copies agree) and 3 read_raw() (one copy, as `mmap_r` does) for a few seconds.
Every record's fields follow from its id, so a record that is half one write and half
another shows.  Prints how many reads, and how many distinct results, were torn.  Such a
writer preempted between the two 16-byte stores of its memcpy leaves a torn record in
place, so two copies can agree on it: the counts depend on the machine and its load.
Against an mmapipc Writer (seq lock) read() returns none, which tests/test_torn.py asserts;
this script uses that file's writers and readers, so both measure the same thing.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from mmapipc.peers import find_compiler

ROOT = Path(__file__).resolve().parent.parent


def _torn_tests() -> ModuleType:
    spec = importlib.util.spec_from_file_location("test_torn", ROOT / "tests" / "test_torn.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0, help="how long the readers run")
    args = parser.parse_args()
    torn = _torn_tests()
    torn.__dict__["SECONDS"] = args.seconds  # how long _stress lets the readers run
    cc = find_compiler()
    if cc is None:
        print("torn.py: needs a C compiler (set CC, or install cc/gcc/clang)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="mmapipc-torn-") as name:
        tmp = Path(name)
        src, exe = tmp / "memcpy_writer.c", tmp / "memcpy_writer"
        src.write_text(torn.C_WRITER)
        subprocess.run([cc, "-O2", "-std=gnu11", f"-I{ROOT / 'csrc'}", "-o", str(exe),
                        str(src)], check=True)
        totals = torn._stress([str(exe), str(tmp / "stress.bin")], tmp / "stress.bin")
    torn._report("C memcpy", totals)
    read = totals["read"]
    share = read["torn_changes"] / read["changes"] if read["changes"] else 0.0
    print(f"read() by agreement: {share:.0%} of its distinct results were torn"
          f" (copies by seq lock: {read['seqlock_reads']}, expected 0 without a marker)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
