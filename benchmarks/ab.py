#!/usr/bin/env python3
"""Time struct STU's write and read with whichever mmapipc this Python imports, as JSON.

Two builds cannot be imported in one process, so an A/B comparison runs this script with
each build's Python in turn, several times, and keeps each number's minimum:

    for i in 1 2 3 4 5 6; do
        /tmp/before/.venv/bin/python benchmarks/ab.py >> /tmp/before.jsonl
        .venv/bin/python benchmarks/ab.py >> /tmp/after.jsonl
    done

Rows (ns): write (a prebuilt Student), read changed (a read after a write of the next of
1024 records, less that write timed alone), read unchanged, Student.from_bytes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import timeit

from mmapipc import Reader, Student, Writer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmapipc-ab-") as tmp:
        students = [Student(i, f"student{i}", "mf"[i % 2]) for i in range(1, 1025)]
        w = Writer(os.path.join(tmp, "rec"))
        w.write(students[0])
        r = Reader(w.path)
        ns = {"w": w, "r": r, "s": students[0], "nxt": itertools.cycle(students).__next__,
              "from_bytes": Student.from_bytes, "b": students[0].to_bytes()}
        stmts = {"write": "w.write(s)", "write+read": "w.write(nxt()); r.read()",
                 "write-ring": "w.write(nxt())", "read unchanged": "r.read()",
                 "from_bytes": "from_bytes(b)"}
        best = dict.fromkeys(stmts, float("inf"))
        timers = {k: timeit.Timer(v, globals=ns) for k, v in stmts.items()}
        for _ in range(args.rounds):
            for key, timer in timers.items():
                best[key] = min(best[key], timer.timeit(args.number) / args.number * 1e9)
        r.close()
        w.close()
    best["read changed"] = best["write+read"] - best["write-ring"]
    print(json.dumps({k: round(v) for k, v in best.items()}))


if __name__ == "__main__":
    main()
