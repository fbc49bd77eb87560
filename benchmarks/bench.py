#!/usr/bin/env python3
"""Benchmarks of mmapipc against the ways to do without it, measured in one run.

    python benchmarks/bench.py                  # about 20 s; Markdown tables on stdout
    python benchmarks/bench.py --quick          # a few seconds: smoke run, numbers indicative
    python benchmarks/bench.py --json out.json  # also write every number as JSON
    python benchmarks/bench.py --tune           # also try other wait parameters

Part 1 times single operations on struct STU (ns per operation, the minimum over several
timeit repeats, all libraries interleaved) for mmapipc, stdlib mmap + struct, ctypes and
numpy.memmap.  Part 2 watches a C writer that changes the record at 1 kHz from another
process, and measures what each reader saw, how late, and at what CPU cost.  Both print
their targets and whether this run met them; nothing here fails on a missed target.
See benchmarks/README.md for the exact definition of every operation.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import mmap
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mmapipc
from mmapipc import Reader, Student, Writer
from mmapipc.mapping import IDLE_AFTER, IDLE_GAP, MAX_GAP
from mmapipc.peers import CompilerError, compile_c

SCRIPT = Path(__file__).resolve()
RECORD = struct.Struct("=i20sc3x")  # struct STU: int id; char name[20]; char sex; (3 pad)
LIBS = ("mmapipc", "mmap + struct", "ctypes", "numpy.memmap")
ALTERNATIVES = LIBS[1:]
RING = 1024  # distinct prebuilt records cycled through when a read must see a change

# --------------------------------------------------------------------------------------
# Part 1: operations
# --------------------------------------------------------------------------------------

OPERATIONS: dict[str, str] = {
    "write": "store a prebuilt record: each library stores its own natural prebuilt record "
    "object, whole, into the mapping",
    "read changed": "return the record decoded (id int, name str up to its NUL, sex str) when "
    "it changed since the last read: before each read a writer in the same process stores "
    "the next of 1024 distinct prebuilt records, and the cost of that write, timed alone in "
    "the same run, is subtracted",
    "read changed (no seq lock)": "the same, but the writer keeps no sequence lock "
    "(Writer(seqlock=False): plain whole-record copies, as the C mmap_w does), so mmapipc "
    "checks its copies by agreement; the alternatives' numbers are those of read changed",
    "read unchanged": "return the record decoded, as above, when nothing was written since "
    "the last read",
    "change check": "tell whether the record changed since the last read",
}

IDIOMS: dict[str, dict[str, str]] = {
    "mmapipc": {
        "write": "w.write(student)",
        "read changed": "r.read()",
        "read changed (no seq lock)": "r.read()",
        "read unchanged": "r.read()",
        "change check": "r.changed()",
    },
    "mmap + struct": {
        "write": "mm[0:28] = S.pack(*fields)",
        "read": "i, n, x = S.unpack_from(mm, 0); "
        "(i, n.split(b'\\0', 1)[0].decode(), x.decode())",
        "change check": "mm[0:28] != last",
    },
    "ctypes": {
        "write": "mm[0:28] = rec or p[0] = rec with p = ctypes.pointer(STU.from_buffer(mm)), "
        "whichever is faster",
        "read": "(v.id, v.name.decode(), v.sex.decode()) with v = STU.from_buffer(mm)",
        "change check": "bytes(v) != last",
    },
    "numpy.memmap": {
        "write": "arr[0] = rec (rec: 0-d np.void of the aligned structured dtype)",
        "read": "i, n, x = arr.item(0); (i, n.decode(), x.decode())",
        "change check": "arr.tobytes() != last",
    },
}

TARGETS_MICRO = {"write": 1.0, "read unchanged": 1.0, "read changed": 1.5}


class Timings:
    """timeit statements timed in interleaved rounds; each keeps its best ns per run."""

    def __init__(self, seconds_per_run: float, rounds: int) -> None:
        self.seconds = seconds_per_run
        self.rounds = rounds
        self.timers: dict[str, timeit.Timer] = {}
        self.numbers: dict[str, int] = {}
        self.best: dict[str, float] = {}

    def add(self, key: str, stmt: str, ns: dict[str, Any]) -> None:
        timer = timeit.Timer(stmt, globals=ns)
        calib = 200
        took = timer.timeit(calib)  # also a warm-up
        number = max(100, int(calib * self.seconds / max(took, 1e-9)))
        self.timers[key] = timer
        self.numbers[key] = number
        self.best[key] = float("inf")

    def run(self) -> dict[str, float]:
        for _ in range(self.rounds):
            for key, timer in self.timers.items():
                number = self.numbers[key]
                self.best[key] = min(self.best[key], timer.timeit(number) / number * 1e9)
        return dict(self.best)


def _students() -> list[Student]:
    return [Student(i, f"student{i}", "mf"[i % 2]) for i in range(1, RING + 1)]


def _fields(s: Student) -> tuple[int, bytes, bytes]:
    return (s.id, s.name_bytes, s.sex_byte)


def _plain_file(path: Path) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        os.ftruncate(fd, RECORD.size)
        return mmap.mmap(fd, RECORD.size)
    finally:
        os.close(fd)


def micro(tmp: Path, quick: bool) -> dict[str, Any]:
    """ns per operation for every library; the key 'ns' maps operation -> library -> ns."""
    try:
        import numpy as np
    except ImportError:
        sys.exit("bench: numpy is needed for the comparison (pip install numpy)")

    students = _students()
    first = students[0]
    t = Timings(0.002, 2) if quick else Timings(0.04, 7)
    closers: list[Callable[[], None]] = []

    # mmapipc, with the sequence lock (the default) and without (as mmap_w writes).
    for tag, seqlock in (("", True), (" plain", False)):
        w: Writer[Student] = Writer(tmp / f"mmapipc{tag.strip()}.bin", seqlock=seqlock)
        w.write(first)
        r: Reader[Student] = Reader(w.path)
        ns: dict[str, Any] = {
            "w": w, "r": r, "student": first, "last": r.read(),
            "nxt": itertools.cycle(students).__next__,
        }
        closers += [r.close, w.close]
        t.add(f"mmapipc{tag} write+read", "w.write(nxt()); r.read()", ns)
        t.add(f"mmapipc{tag} write-ring", "w.write(nxt())", ns)
        if seqlock:
            t.add("mmapipc write", "w.write(student)", ns)
            t.add("mmapipc read unchanged", "r.read()", ns)
            t.add("mmapipc change check", "r.changed()", ns)

    # stdlib mmap + struct: the record is a tuple of fields ready to pack.
    mm = _plain_file(tmp / "stdlib.bin")
    closers.append(mm.close)
    recs = [_fields(s) for s in students]
    mm[0:28] = RECORD.pack(*recs[0])
    ns = {"mm": mm, "S": RECORD, "fields": recs[0], "last": mm[0:28],
          "nxt": itertools.cycle(recs).__next__}
    read = "i, n, x = S.unpack_from(mm, 0); rec = (i, n.split(b'\\0', 1)[0].decode(), x.decode())"
    t.add("mmap + struct write", "mm[0:28] = S.pack(*fields)", ns)
    t.add("mmap + struct write-ring", "mm[0:28] = S.pack(*nxt())", ns)
    t.add("mmap + struct write+read", f"mm[0:28] = S.pack(*nxt()); {read}", ns)
    t.add("mmap + struct read unchanged", read, ns)
    t.add("mmap + struct change check", "mm[0:28] != last", ns)

    # ctypes: a Structure view of the mapping; the record is a Structure instance.
    class STU(ctypes.Structure):
        _fields_ = [("id", ctypes.c_int), ("name", ctypes.c_char * 20), ("sex", ctypes.c_char)]

    assert ctypes.sizeof(STU) == RECORD.size
    mc = _plain_file(tmp / "ctypes.bin")
    crecs = [STU(*_fields(s)) for s in students]
    view = STU.from_buffer(mc)
    ptr = ctypes.pointer(view)
    mc[0:28] = crecs[0]
    ns = {"mm": mc, "v": view, "p": ptr, "rec": crecs[0], "last": bytes(view),
          "nxt": itertools.cycle(crecs).__next__}
    read = "rec = (v.id, v.name.decode(), v.sex.decode())"
    t.add("ctypes write slice", "mm[0:28] = rec", ns)
    t.add("ctypes write pointer", "p[0] = rec", ns)
    t.add("ctypes write-ring", "mm[0:28] = nxt()", ns)
    t.add("ctypes write+read", f"mm[0:28] = nxt(); {read}", ns)
    t.add("ctypes read unchanged", read, ns)
    t.add("ctypes change check", "bytes(v) != last", ns)

    # numpy.memmap with the aligned structured dtype; the record is a 0-d np.void.
    dt = np.dtype([("id", "i4"), ("name", "S20"), ("sex", "S1")], align=True)
    assert dt.itemsize == RECORD.size
    path_np = tmp / "numpy.bin"
    _plain_file(path_np).close()
    arr = np.memmap(path_np, dtype=dt, mode="r+", shape=(1,))
    nrecs = [np.array(_fields(s), dtype=dt)[()] for s in students]
    arr[0] = nrecs[0]
    ns = {"arr": arr, "rec": nrecs[0], "last": arr.tobytes(),
          "nxt": itertools.cycle(nrecs).__next__}
    read = "i, n, x = arr.item(0); rec = (i, n.decode(), x.decode())"
    t.add("numpy.memmap write", "arr[0] = rec", ns)
    t.add("numpy.memmap write-ring", "arr[0] = nxt()", ns)
    t.add("numpy.memmap write+read", f"arr[0] = nxt(); {read}", ns)
    t.add("numpy.memmap read unchanged", read, ns)
    t.add("numpy.memmap change check", "arr.tobytes() != last", ns)

    raw = t.run()
    for close in closers:
        close()
    del view, ptr, arr

    def changed(prefix: str) -> float:
        # A difference of two noisy minimums: never below 1 ns, even in a quick run.
        return max(1.0, raw[f"{prefix} write+read"] - raw[f"{prefix} write-ring"])

    ctypes_write = min(raw["ctypes write slice"], raw["ctypes write pointer"])
    table: dict[str, dict[str, float]] = {
        "write": {"mmapipc": raw["mmapipc write"], "mmap + struct": raw["mmap + struct write"],
                  "ctypes": ctypes_write, "numpy.memmap": raw["numpy.memmap write"]},
        "read changed": {lib: changed(lib) for lib in LIBS},
        "read changed (no seq lock)": {"mmapipc": changed("mmapipc plain")},
        "read unchanged": {lib: raw[f"{lib} read unchanged"] for lib in LIBS},
        "change check": {lib: raw[f"{lib} change check"] for lib in LIBS},
    }
    for alt in ALTERNATIVES:
        table["read changed (no seq lock)"][alt] = table["read changed"][alt]
    ratios = {op: {lib: row[lib] / min(row[a] for a in ALTERNATIVES) for lib in LIBS}
              for op, row in table.items()}
    return {"ns": table, "ratio": ratios, "raw_ns": raw,
            "ctypes_write_idiom": "mm[0:28] = rec" if raw["ctypes write slice"] <= raw[
                "ctypes write pointer"] else "p[0] = rec"}


def micro_markdown(res: dict[str, Any]) -> str:
    head = "| operation | " + " | ".join(LIBS) + " | mmapipc / fastest alternative | target |"
    lines = [head, "|---|" + "---:|" * len(LIBS) + "---:|---|"]
    for op, row in res["ns"].items():
        cells = [f"{row[lib]:.0f} ({res['ratio'][op][lib]:.2f}x)" for lib in LIBS]
        ratio = res["ratio"][op]["mmapipc"]
        target = TARGETS_MICRO.get(op)
        verdict = "" if target is None else (
            f"<= {target:.1f}: {'met' if ratio <= target else 'missed'}")
        lines.append(f"| {op} | " + " | ".join(cells) + f" | {ratio:.2f} | {verdict} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Part 1b: records (one record system for struct STU and any layout)
# --------------------------------------------------------------------------------------

SENSOR_H = """
#define NAME_LEN 16
struct point { int16_t x, y; double z; };
typedef struct sensor {
    uint8_t kind; int64_t stamp; uint32_t count; char name[NAME_LEN]; int32_t samples[4];
    struct point pos; struct point track[3]; _Bool ok;
} sensor_t;
"""

# ns targets of the record rows: (row, reference row, at most this ratio to it)
TARGETS_RECORDS = [
    ("write a Student", "bare cffi call, one argument", 2.0),
    ("decode the sensor layout", "unpack_from + namedtuples by hand", 1.5),
]
READ_CHANGED_NS = 400.0  # a changed read() of struct STU, in ns


def records(tmp: Path, quick: bool) -> dict[str, Any]:
    """ns per operation of the record codecs, against the bare calls they cannot beat."""
    from collections import namedtuple

    from mmapipc import Layout, LayoutError
    from mmapipc._ffi import lib
    from mmapipc.record import STUDENT

    students = _students()
    t = Timings(0.002, 2) if quick else Timings(0.04, 7)
    w: Writer[Student] = Writer(tmp / "records.bin")
    w.write(students[0])
    r: Reader[Student] = Reader(w.path)
    closed: Writer[Student] = Writer(tmp / "closed.bin")
    closed.close()
    try:
        sensor = Layout.from_c("#include <stdint.h>\n" + SENSOR_H, "sensor_t")
    except LayoutError:  # no C compiler: cffi's parser knows the <stdint.h> types itself
        sensor = Layout.from_c(SENSOR_H, "sensor_t", use_compiler=False)
    rng = __import__("random").Random(5)
    srec = sensor.Record(kind=3, stamp=rng.randrange(2**62), count=7, name="probe",
                         samples=[1, 2, 3, 4], pos={"x": 1, "y": 2, "z": 0.5},
                         track=[{"x": k, "y": -k, "z": k / 3} for k in range(3)], ok=True)
    sdata = srec.to_bytes()
    unpack_from = sensor._root.packer.unpack_from  # the same format, item by item
    Point = namedtuple("Point", "x y z")
    Sensor = namedtuple("Sensor", "kind stamp count name samples pos track ok")

    def by_hand(b: bytes) -> Any:
        v = unpack_from(b, 0)
        return Sensor(v[0], v[1], v[2], v[3].split(b"\0", 1)[0].decode("utf-8",
                                                                       "surrogateescape"),
                      v[4:8], Point(v[8], v[9], v[10]),
                      (Point(v[11], v[12], v[13]), Point(v[14], v[15], v[16]),
                       Point(v[17], v[18], v[19])), v[20])

    assert tuple(by_hand(sdata)._asdict().values())[:4] == (3, srec.stamp, 7, "probe")
    ns: dict[str, Any] = {
        "w": w, "r": r, "s": students[0], "lib": lib, "ch": closed._ch,
        "nxt": itertools.cycle(students).__next__, "b": students[0].to_bytes(),
        "Student": Student, "decode": STUDENT.decode, "S": RECORD, "sensor": sensor,
        "sdata": sdata, "by_hand": by_hand, "sdecode": sensor.decode,
    }
    rows = {
        "bare cffi call, one argument": "lib.mmapipc_close(ch)",
        "write a Student": "w.write(s)",
        "read() of a changed Student": None,
        "Student.from_bytes": "Student.from_bytes(b)",
        "struct.unpack + decode, a tuple by hand": "i, n, x = S.unpack(b);"
        " (i, n.split(b'\\0', 1)[0].decode(), x.decode())",
        "decode the sensor layout": "sdecode(sdata)",
        "unpack_from + namedtuples by hand": "by_hand(sdata)",
    }
    for key, stmt in rows.items():
        if stmt is not None:
            t.add(key, stmt, ns)
    t.add("write+read", "w.write(nxt()); r.read()", ns)
    t.add("write-ring", "w.write(nxt())", ns)
    raw = t.run()
    r.close()
    w.close()
    ns_row = {k: raw[k] for k in rows if k in raw}
    ns_row["read() of a changed Student"] = max(1.0, raw["write+read"] - raw["write-ring"])
    return {"ns": ns_row, "raw_ns": raw}


def records_markdown(res: dict[str, Any]) -> str:
    ns = res["ns"]
    bare = ns["bare cffi call, one argument"]
    lines = ["| operation | ns | / bare cffi call | target |", "|---|---:|---:|---|"]
    targets = {row: (ref, limit) for row, ref, limit in TARGETS_RECORDS}
    for key, value in ns.items():
        target = ""
        if key in targets:
            ref, limit = targets[key]
            ratio = value / ns[ref]
            target = (f"<= {limit:.1f}x {ref}: {ratio:.2f}x,"
                      f" {'met' if ratio <= limit else 'missed'}")
        elif key == "read() of a changed Student":
            target = (f"<= {READ_CHANGED_NS:.0f} ns:"
                      f" {'met' if value <= READ_CHANGED_NS else 'missed'}")
        lines.append(f"| {key} | {value:.0f} | {value / bare:.2f} | {target} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Part 2: watching a C writer from another process
# --------------------------------------------------------------------------------------

WRITER_C = r"""
/* Changes struct STU COUNT times, every INTERVAL_NS: id = 1..COUNT, name = the
 * CLOCK_MONOTONIC time of the write in ns (decimal), memcpy'd whole as mmap_w does.
 * A late writer does not catch up in a burst: each record stays at least half an
 * interval.  At the end, prints the time of every write, one per line. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

struct STU {
    int id;
    char name[20];
    char sex;
};

static long long ns_of(const struct timespec *t)
{
    return (long long)t->tv_sec * 1000000000LL + t->tv_nsec;
}

static void set_ns(struct timespec *t, long long ns)
{
    t->tv_sec = (time_t)(ns / 1000000000LL);
    t->tv_nsec = (long)(ns % 1000000000LL);
}

int main(int argc, char *argv[])
{
    struct STU s, *mm;
    struct timespec now;
    long count, i;
    long long interval, next, *stamps;
    int fd;

    if (argc != 4) {
        fprintf(stderr, "usage: %s FILE COUNT INTERVAL_NS\n", argv[0]);
        return 2;
    }
    count = atol(argv[2]);
    interval = atoll(argv[3]);
    stamps = calloc((size_t)(count > 0 ? count : 1), sizeof *stamps);
    fd = open(argv[1], O_RDWR);
    if (fd < 0 || stamps == NULL) {
        perror(argv[1]);
        return 1;
    }
    mm = mmap(NULL, sizeof s, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mm == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    close(fd);
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);   /* write on time */
    memset(&s, 0, sizeof s);
    s.sex = 'm';
    clock_gettime(CLOCK_MONOTONIC, &now);
    next = ns_of(&now);
    for (i = 1; i <= count; i++) {
        struct timespec until;
        next += interval;
        set_ns(&until, next);
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL);
        clock_gettime(CLOCK_MONOTONIC, &now);
        stamps[i - 1] = ns_of(&now);
        s.id = (int)i;
        memset(s.name, 0, sizeof s.name);
        snprintf(s.name, sizeof s.name, "%lld", stamps[i - 1]);
        memcpy(mm, &s, sizeof s);
        if (next < stamps[i - 1] - interval / 2)
            next = stamps[i - 1] - interval / 2;   /* late: no burst */
    }
    munmap(mm, sizeof s);
    for (i = 0; i < count; i++)
        printf("%lld\n", stamps[i]);
    free(stamps);
    return 0;
}
"""

POLL_SLEEP = 0.0005  # the stdlib loop's sleep between checks
IDLE_END = 0.5  # a reader stops after this long without a change


def build_writer(tmp: Path) -> Path | None:
    src = tmp / "stamp_writer.c"
    src.write_text(WRITER_C)
    try:
        return compile_c(src, tmp / "stamp_writer")
    except CompilerError as e:
        print(f"bench: watching skipped: {e}", file=sys.stderr)
        return None


def _ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()


def reader_main(cfg: dict[str, Any]) -> None:
    """The reader process: watch until the last id, then print one JSON line of samples."""
    clock = time.clock_gettime_ns
    mono = time.CLOCK_MONOTONIC
    cpu = time.process_time_ns
    path, last_id, mode = cfg["path"], int(cfg["count"]), cfg["mode"]
    ids: list[int] = []
    names: list[str] = []
    stamps: list[int] = []
    cpu_first = cpu_last = t_first = t_last = 0
    if mode == "poll":
        fd = os.open(path, os.O_RDONLY)
        mm = mmap.mmap(fd, RECORD.size, prot=mmap.PROT_READ)
        os.close(fd)
        unpack = RECORD.unpack
        sleep = time.sleep
        idle_limit = int(IDLE_END / POLL_SLEEP)
        last = mm[0:28]
        _ready()
        idle = 0
        while idle < idle_limit:
            cur = mm[0:28]
            if cur != last:
                last = cur
                i, n, x = unpack(cur)
                rec = (i, n.split(b"\0", 1)[0].decode(), x.decode())
                now = clock(mono)
                t_last, cpu_last = now, cpu()
                if not ids:
                    t_first, cpu_first = t_last, cpu_last
                ids.append(rec[0])
                names.append(rec[1])
                stamps.append(now)
                if rec[0] >= last_id:
                    break
                idle = 0
            else:
                sleep(POLL_SLEEP)
                idle += 1
        mm.close()
    else:
        options: dict[str, Any] = {"busy": mode == "busy", "predict": mode != "nopredict"}
        for key in ("max_gap", "idle_gap", "idle_after"):
            if key in cfg:
                options[key] = float(cfg[key])
        with Reader[Student](path, **options) as reader:
            feed = reader.watch(IDLE_END)
            next(feed)  # the current record
            _ready()
            for s in feed:
                now = clock(mono)
                t_last, cpu_last = now, cpu()
                if not ids:
                    t_first, cpu_first = t_last, cpu_last
                ids.append(s.id)
                names.append(s.name)
                stamps.append(now)
                if s.id >= last_id:
                    break
    wall = t_last - t_first
    out = {"ids": ids, "names": names, "stamps": stamps, "wall_ns": wall,
           "cpu_ns": cpu_last - cpu_first}
    sys.stdout.write(json.dumps(out) + "\n")


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def watch_once(exe: Path, tmp: Path, mode: str, seconds: float, rate: float,
               params: dict[str, float] | None = None) -> dict[str, Any]:
    """One writer process and one reader process; what the reader saw, how late, CPU."""
    count = max(1, int(seconds * rate))
    path = tmp / f"watch-{mode}.bin"
    path.write_bytes(RECORD.pack(0, b"0", b"m"))
    cfg: dict[str, Any] = {"path": str(path), "count": count, "mode": mode, **(params or {})}
    reader = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--reader", json.dumps(cfg)],
        stdout=subprocess.PIPE, text=True, cwd=tmp,
    )
    assert reader.stdout is not None
    try:
        if reader.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{mode} reader failed to start")
        writer = subprocess.run([str(exe), str(path), str(count), str(int(1e9 / rate))],
                                check=True, timeout=seconds * 3 + 30, capture_output=True,
                                text=True)
        written = [int(line) for line in writer.stdout.split()]
        out, _ = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    if reader.returncode != 0:
        raise RuntimeError(f"{mode} reader exited with status {reader.returncode}")
    data = json.loads(out)
    ids: list[int] = data["ids"]
    latencies: list[float] = []
    torn = 0
    for name, stamp in zip(data["names"], data["stamps"], strict=True):
        try:
            latencies.append((stamp - int(name)) / 1000.0)
        except ValueError:
            torn += 1
    wanted = set(range(1, count + 1))
    seen = len(wanted.intersection(ids))
    missed = sorted(wanted.difference(ids))
    # How long each missed record was there to be seen (until the next write).
    shown = [(written[i] - written[i - 1]) / 1000.0 for i in missed if i < count]
    reported = [i for i in ids if 1 <= i <= count]
    duplicates = len(reported) - len(set(reported))
    counts: dict[int, int] = {}
    for i in reported:
        counts[i] = counts.get(i, 0) + 1
    twice = [(i, n) for i, n in zip(ids, data["names"], strict=True) if counts.get(i, 0) > 1]
    out_of_order = sum(1 for a, b in itertools.pairwise(reported) if b < a)
    wall = data["wall_ns"]
    return {
        "mode": mode, "params": params or {}, "written": count, "seen": seen,
        "missed_ids": missed[:20],
        "reported_twice": twice[:10],
        "missed_shown_us": [min(shown), max(shown)] if shown else [],
        "duplicates": duplicates, "out_of_order": out_of_order, "torn": torn,
        "p50_us": _percentile(latencies, 50), "p99_us": _percentile(latencies, 99),
        "max_us": max(latencies) if latencies else float("nan"),
        "cpu_percent": 100.0 * data["cpu_ns"] / wall if wall > 0 else float("nan"),
    }


WATCH_LABELS = {
    "default": "Reader.watch() default",
    "busy": "Reader.watch() busy=True",
    "nopredict": "Reader.watch() predict=False",
    "poll": "stdlib mmap, sleep 0.5 ms between checks",
}


def _watch_row(label: str, r: dict[str, Any]) -> str:
    extra = []
    if r["missed_shown_us"]:
        lo, hi = r["missed_shown_us"]
        extra.append(f"missed ones shown {lo:.0f}-{hi:.0f} us")
    for key in ("duplicates", "out_of_order", "torn"):
        if r[key]:
            extra.append(f"{r[key]} {key.replace('_', ' ')}")
    seen = f"{r['seen']}/{r['written']}" + (f" ({', '.join(extra)})" if extra else "")
    return (f"| {label} | {seen} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['max_us']:.0f} |"
            f" {r['cpu_percent']:.1f} |")


def _watch_targets(r: dict[str, Any]) -> str:
    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    if r["mode"] == "default":
        return (f"all seen: {mark(r['seen'] == r['written'] and not r['duplicates'])};"
                f" p50 <= 100: {mark(r['p50_us'] <= 100)}; p99 <= 1000:"
                f" {mark(r['p99_us'] <= 1000)}; CPU <= 5%: {mark(r['cpu_percent'] <= 5)}")
    if r["mode"] == "busy":
        return f"p50 <= 5: {mark(r['p50_us'] <= 5)}"
    return ""


def watch_markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| reader | updates seen / written | p50 latency (us) | p99 latency (us) |"
             " max (us) | reader CPU (% of a core) | targets |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(_watch_row(WATCH_LABELS[r["mode"]], r) + f" {_watch_targets(r)} |")
    return "\n".join(lines)


def _default_ok(r: dict[str, Any]) -> bool:
    return bool(r["seen"] == r["written"] and not r["duplicates"] and r["p50_us"] <= 100
                and r["p99_us"] <= 1000 and r["cpu_percent"] <= 5)


# --------------------------------------------------------------------------------------
# Targets and main
# --------------------------------------------------------------------------------------

def targets(micro_res: dict[str, Any] | None, watch_res: dict[str, dict[str, Any]],
            records_res: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, measured: str, met: bool) -> None:
        out.append({"target": name, "measured": measured, "met": met})

    rec = records_res
    if rec is not None:
        for row, ref, limit in TARGETS_RECORDS:
            ratio = rec["ns"][row] / rec["ns"][ref]
            add(f"{row}: <= {limit:.1f}x {ref}", f"{ratio:.2f}", ratio <= limit)
        changed = rec["ns"]["read() of a changed Student"]
        add(f"read() of a changed Student <= {READ_CHANGED_NS:.0f} ns", f"{changed:.0f} ns",
            changed <= READ_CHANGED_NS)
    if micro_res is not None:
        for op, limit in TARGETS_MICRO.items():
            ratio = micro_res["ratio"][op]["mmapipc"]
            add(f"{op}: ratio to the fastest alternative <= {limit:.1f}", f"{ratio:.2f}",
                ratio <= limit)
    d = watch_res.get("default")
    if d is not None:
        add("default mode: every update seen at 1 kHz", f"{d['seen']}/{d['written']}",
            d["seen"] == d["written"] and not d["duplicates"])
        add("default mode: p50 <= 100 us", f"{d['p50_us']:.1f} us", d["p50_us"] <= 100)
        add("default mode: p99 <= 1 ms", f"{d['p99_us']:.1f} us", d["p99_us"] <= 1000)
        add("default mode: CPU <= 5% of a core", f"{d['cpu_percent']:.1f}%",
            d["cpu_percent"] <= 5)
    b = watch_res.get("busy")
    if b is not None:
        add("busy mode: p50 <= 5 us", f"{b['p50_us']:.1f} us", b["p50_us"] <= 5)
    return out


def targets_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | this run | |", "|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['measured']} | {'met' if r['met'] else 'MISSED'} |")
    return "\n".join(lines)


def definitions_text(ctypes_idiom: str) -> str:
    lines = ["Operations (ns per operation, minimum over repeats; (Nx) = ratio to the fastest"
             " alternative):"]
    for op, text in OPERATIONS.items():
        lines.append(f"- {op}: {text}.")
    lines.append("Idioms:")
    for lib, idioms in IDIOMS.items():
        parts = "; ".join(f"{k}: `{v}`" for k, v in idioms.items())
        lines.append(f"- {lib}: {parts}.")
    lines.append(f"  (ctypes write in this run: `{ctypes_idiom}`.)")
    lines.append("Watching: a C process memcpy's whole records (id, name = its CLOCK_MONOTONIC"
                 " time in ns) at the rate given; the reader, another process, takes"
                 " CLOCK_MONOTONIC when it has the decoded record. Latency = that minus the"
                 " write's time. CPU = the reader's process time / wall time between its"
                 " first and last update.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few seconds, for smoke runs")
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON to PATH")
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds of writing per watched reader (default 3, quick 0.3)")
    parser.add_argument("--rate", type=float, default=1000.0, help="writes per second (1000)")
    parser.add_argument("--no-micro", action="store_true", help="skip the operation timings")
    parser.add_argument("--reader", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reader is not None:
        reader_main(json.loads(args.reader))
        return 0
    seconds = args.seconds if args.seconds is not None else (0.3 if args.quick else 3.0)
    if not seconds > 0 or not args.rate > 0:
        parser.error("--seconds and --rate must be > 0")

    info = {
        "python": platform.python_version(), "machine": platform.machine(),
        "system": platform.platform(), "cpus": os.cpu_count(),
        "mmapipc": mmapipc.__version__, "quick": args.quick, "seconds": seconds,
        "rate": args.rate, "defaults": {"max_gap": MAX_GAP, "idle_gap": IDLE_GAP,
                                        "idle_after": IDLE_AFTER},
        "command": " ".join(["python", "benchmarks/bench.py", *sys.argv[1:]]),
    }
    print(f"# mmapipc {mmapipc.__version__} benchmarks (Python {info['python']},"
          f" {info['cpus']} CPUs{', quick run: numbers indicative only' if args.quick else ''})")
    results: dict[str, Any] = {"info": info}
    with tempfile.TemporaryDirectory(prefix="mmapipc-bench-") as d:
        tmp = Path(d)
        micro_res = None
        records_res = None
        if not args.no_micro:
            micro_res = micro(tmp, args.quick)
            results["micro"] = micro_res
            print("\n## Operations (ns per operation)\n")
            print(micro_markdown(micro_res))
            records_res = records(tmp, args.quick)
            results["records"] = records_res
            print("\n## Records (ns per operation)\n")
            print(records_markdown(records_res))
        exe = build_writer(tmp)
        watch_res: dict[str, dict[str, Any]] = {}
        if exe is not None:
            for mode in ("default", "busy", "nopredict", "poll"):
                watch_res[mode] = watch_once(exe, tmp, mode, seconds, args.rate)
            results["watch"] = watch_res
            print(f"\n## Watching a C writer at {args.rate:g} Hz for {seconds:g} s"
                  " (reader in another process)\n")
            print(watch_markdown(list(watch_res.values())))
    rows = targets(micro_res, watch_res, records_res)
    results["targets"] = rows
    print("\n## Targets\n")
    print(targets_markdown(rows))
    print()
    print(definitions_text(micro_res["ctypes_write_idiom"] if micro_res else "-"))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
