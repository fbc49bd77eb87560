"""Watching benchmarks: latency, misses and CPU of Reader.watch() against writers that cannot
notify (plain memcpy, as mmap_w does), next to the stdlib alternative in the same run.

Each case runs a C writer process (compiled here with the system compiler) that stamps
every record's name with its CLOCK_MONOTONIC time just before storing it, and a reader
process that notes when it has each decoded record.  Latency = seen - stored.  CPU = the
reader's own user + system time (getrusage) over its whole watch, including the 0.3 s
before the first change, divided by that wall time.  A record "stayed" from its store to
the next one; one that stayed at least max_gap and was not seen is a miss.  The reader's
late looks (a wake-up later than the bound it planned for) are counted, so that a miss the
VM caused (a sleeper woken milliseconds late) is told apart from a miss of the design.

    cd /tmp && python /path/to/benchmarks/watch.py [--quick] [--case TEXT] [--json out.json]
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import mmap
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
import timeit
from functools import partial
from pathlib import Path
from typing import Any

import mmapipc
from mmapipc import Reader, Student, Writer
from mmapipc._ffi import ffi, lib
from mmapipc.mapping import IDLE_AFTER, IDLE_GAP, MAX_GAP
from mmapipc.peers import CompilerError, compile_c

SCRIPT = Path(__file__).resolve()
RECORD = struct.Struct("=i20sc3x")
IDLE_END = 0.5  # the reader stops after this long without a change
NOTIFIED_STAY = 50e-6  # a notifying writer's record that stayed this long must be seen
LEAD = 0.3      # the reader watches this long before the writer starts

C_HEAD = r"""
#define _GNU_SOURCE
#include "mmapipc_record.h"
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

struct STU { int id; char name[20]; char sex; };

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static long long cpu_ns(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1000000000LL +
           (u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1000LL;
}

/* What watch.py's Python reader prints at its end: the records seen and when, its wall
 * and CPU time (ns), its looks (-1: not counted). */
static void report(const struct STU *got, const long long *at, int n, long long wall,
                   long long cpu, long long looks)
{
    printf("{\"seen\": [");
    for (int i = 0; i < n; i++)
        printf("%s[%d, \"%.19s\", %lld]", i ? ", " : "", got[i].id, got[i].name, at[i]);
    printf("], \"wall_ns\": %lld, \"cpu_ns\": %lld, \"stats\": {", wall, cpu);
    if (looks >= 0)
        printf("\"polls\": %lld", looks);
    printf("}}\n");
}
"""

WRITER_C = C_HEAD + r"""
static void at(long long t)
{
    struct timespec ts = {t / 1000000000LL, t % 1000000000LL};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

/* writer PATH COUNT MODE GAP_NS [BURST_COUNT BURST_GAP_NS]
 * MODE: abs (absolute schedule), rel (sleep GAP after each store, like mmap_w's
 * sleep(1)), poisson (random gaps of mean GAP, absolute schedule), burst (COUNT
 * stores GAP apart, then BURST_COUNT stores BURST_GAP apart).  A mode starting
 * with n ("nabs", "npoisson") stores through mmapipc_record.h instead: the
 * sequence lock, and a futex wake-up after each store. */
int main(int argc, char **argv)
{
    if (argc < 5)
        return 2;
    long count = atol(argv[2]), extra = argc > 5 ? atol(argv[5]) : 0;
    long long gap = atoll(argv[4]), burst_gap = argc > 6 ? atoll(argv[6]) : 0;
    const char *mode = argv[3];
    mmapipc_rec *rec = NULL;
    int fd = open(argv[1], O_RDWR);
    struct STU s = {0, "", 'm'};
    struct STU *m = mmap(NULL, sizeof s, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    long long *stamps = calloc((size_t)(count + extra), sizeof *stamps), next = now_ns();
    unsigned long long rng = 88172645463325252ULL;
    if (fd < 0 || m == MAP_FAILED || stamps == NULL)
        return 3;
    if (mode[0] == 'n') {
        rec = mmapipc_rec_open(argv[1], sizeof s, MMAPIPC_STU_MARKER, MMAPIPC_STU_SEQ,
                               MMAPIPC_REC_WRITE);
        if (rec == NULL)
            return 4;
        mode++;
    }
    for (long i = 0; i < count + extra; i++) {
        long long g = i >= count ? burst_gap : gap;
        if (strcmp(mode, "poisson") == 0) {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            g = (long long)(-log(((rng >> 11) + 1.0) / 9007199254740993.0) * (double)gap);
        }
        if (strcmp(mode, "rel") == 0) {
            if (i > 0) {
                struct timespec ts = {g / 1000000000LL, g % 1000000000LL};
                nanosleep(&ts, NULL);
            }
        } else {
            next += g;
            at(next);
        }
        s.id = (int)i + 1;
        stamps[i] = now_ns();
        memset(s.name, 0, sizeof s.name);
        snprintf(s.name, sizeof s.name, "%lld", stamps[i]);
        if (rec != NULL)
            mmapipc_rec_store(rec, &s);
        else
            memcpy(m, &s, sizeof s);
    }
    for (long i = 0; i < count + extra; i++)
        printf("%lld\n", stamps[i]);
    return 0;
}
"""


READER_C = C_HEAD + r"""
/* reader PATH LAST IDLE_NS: what watch.py's reader does, in C on the header (its
 * mmapipc_rec_wait: futex sleeps on a notifying writer, else a look every 1 ms). */
int main(int argc, char **argv)
{
    if (argc < 4)
        return 2;
    int last = atoi(argv[2]), n = 0, cap = 1 << 16;
    long long idle = atoll(argv[3]), t0, c0, *at = malloc(cap * sizeof *at);
    struct STU s, *got = malloc(cap * sizeof *got);
    mmapipc_rec *r = mmapipc_rec_open(argv[1], sizeof s, MMAPIPC_STU_MARKER, MMAPIPC_STU_SEQ, 0);
    if (r == NULL || at == NULL || got == NULL || mmapipc_rec_load(r, &s) != 0)
        return 3;
    printf("ready\n");
    fflush(stdout);
    t0 = mmapipc_rec__now_ns();
    c0 = cpu_ns();
    while (n < cap && mmapipc_rec_wait(r, &s, idle) == 1) {
        at[n] = mmapipc_rec__now_ns();
        got[n++] = s;
        if (s.id >= last)
            break;
    }
    report(got, at, n, mmapipc_rec__now_ns() - t0, cpu_ns() - c0, -1);
    return 0;
}
"""

FLOOR_C = C_HEAD + r"""
/* floor PATH LAST IDLE_NS GAP_NS: the least any poller can do, in C with no guard and no
 * prediction: compare the 28 bytes, sleep GAP_NS (timer slack 1 us; 0: spin), again;
 * ends at id LAST or after IDLE_NS without a change.  Prints what watch.py's reader does. */
int main(int argc, char **argv)
{
    if (argc < 5)
        return 2;
    int fd = open(argv[1], O_RDONLY), last = atoi(argv[2]), n = 0, cap = 1 << 16;
    long long idle = atoll(argv[3]), gap = atoll(argv[4]), looks = 0;
    struct STU *m = mmap(NULL, sizeof *m, PROT_READ, MAP_SHARED, fd, 0), had;
    long long *at = malloc(cap * sizeof *at);
    struct STU *got = malloc(cap * sizeof *got);
    struct timespec nap = {gap / 1000000000LL, gap % 1000000000LL};
    if (fd < 0 || m == MAP_FAILED || at == NULL || got == NULL)
        return 3;
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    memcpy(&had, m, sizeof had);
    printf("ready\n");
    fflush(stdout);
    long long t0 = now_ns(), c0 = cpu_ns(), quiet = t0;
    while (n < cap) {
        looks++;
        if (memcmp(m, &had, sizeof had) != 0) {
            memcpy(&had, m, sizeof had);
            at[n] = now_ns();
            got[n++] = had;
            quiet = at[n - 1];
            if (had.id >= last)
                break;
        } else if (now_ns() - quiet > idle) {
            break;
        }
        if (gap > 0)
            clock_nanosleep(CLOCK_MONOTONIC, 0, &nap, NULL);
    }
    report(got, at, n, now_ns() - t0, cpu_ns() - c0, looks);
    return 0;
}
"""


def build_reader(tmp: Path) -> Path | None:
    """Compile the C reader on mmapipc_record.h: the floor under a Python watcher."""
    return _build_c(tmp, "reader", READER_C)


def c_reader_case(exe: Path, reader: Path, tmp: Path, label: str, writer: list[str],
                  stay: float) -> dict[str, Any]:
    """The same exchange with the C reader on the header instead of a Python one."""
    path = tmp / "watch.bin"
    with Writer(path) as w:  # a notifying writer's record, as the C writer's will be
        w.write(Student(0, "0", "m"))
    stored, data = exchange(label, [str(exe), str(path), *writer],
                            [str(reader), str(path), writer[0], str(int(IDLE_END * 1e9))])
    return summarize(label, stored, data, "C rec_wait", max_gap=stay)


def floor_command(floor: Path, path: Path, last: int, idle: float, look: float) -> list[str]:
    """The C floor's command line: looks every `look` seconds (0: spinning) at path."""
    return [str(floor), str(path), str(last), str(int(idle * 1e9)), str(int(look * 1e9))]


def floor_name(look: float) -> str:
    return f"C floor, a look every {look * 1e3:g} ms" if look else "C floor, spinning"


def _build_c(tmp: Path, name: str, source: str, *libs: str) -> Path | None:
    """Compile a C program on mmapipc_record.h with the system compiler (None if none)."""
    src = tmp / f"{name}.c"
    src.write_text(source)
    try:
        return compile_c(src, tmp / name, flags=[f"-I{mmapipc.get_include()}", *libs])
    except CompilerError:
        return None


def build_writer(tmp: Path) -> Path | None:
    """Compile the stamping writer with the system compiler (None, said, if there is none)."""
    exe = _build_c(tmp, "writer", WRITER_C, "-lm")
    if exe is None:
        print("watch benchmark skipped: no working C compiler", file=sys.stderr)
    return exe


def _cpu_ns() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return int((r.ru_utime + r.ru_stime) * 1e9)


def mark(cpu0: int, t0: int) -> tuple[int, int]:
    """This process's CPU time and the wall time (ns) since cpu0 and t0."""
    return _cpu_ns() - cpu0, time.clock_gettime_ns(time.CLOCK_MONOTONIC) - t0


def reader_main(cfg: dict[str, Any]) -> None:
    """The reader process: watch until the last id, then print one JSON line."""
    clock, mono = time.clock_gettime_ns, time.CLOCK_MONOTONIC
    path, last_id, how = cfg["path"], int(cfg["last"]), cfg.get("how", "mmapipc")
    seen: list[tuple[int, str, int]] = []
    late: list[int] = []   # the late looks so far, at each change seen
    stats: dict[str, int] = {}
    first: tuple[int, int] | None = None
    cpu0, t0 = _cpu_ns(), clock(mono)
    if how == "stdlib":
        fd = os.open(path, os.O_RDONLY)
        mm = mmap.mmap(fd, RECORD.size, prot=mmap.PROT_READ)
        os.close(fd)
        gap, last = float(cfg["gap"]), mm[0:28]
        ready = mark(cpu0, t0)
        print("ready", flush=True)
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < cfg.get("idle_end", IDLE_END):
            cur = mm[0:28]
            if cur != last:
                last = cur
                first = first or mark(cpu0, t0)
                i, n, _ = RECORD.unpack(cur)
                seen.append((i, n.split(b"\0", 1)[0].decode(), clock(mono)))
                quiet_since = time.monotonic()
                if i >= last_id:
                    break
            else:
                time.sleep(gap)
    else:
        options = {k: cfg[k] for k in ("busy", "max_gap", "idle_gap", "idle_after") if k in cfg}
        with Reader[Student](path, **options) as reader:
            # the late looks so far at each change (one C call, ~1 us): a record missed
            # between two changes with a late look between them was missed by the machine
            counts, get_stats, ch = ffi.new("struct mmapipc_stats *"), lib.mmapipc_get_stats, \
                reader._ch
            feed = reader.watch(cfg.get("idle_end", IDLE_END))
            next(feed)
            ready = mark(cpu0, t0)
            print("ready", flush=True)
            for s in feed:
                first = first or mark(cpu0, t0)
                seen.append((s.id, s.name, clock(mono)))
                get_stats(ch, counts)
                late.append(counts.late_polls)
                if s.id >= last_id:
                    break
            stats = reader.stats
    cpu, wall = mark(cpu0, t0)
    print(json.dumps({"seen": seen, "late": late, "wall_ns": wall, "cpu_ns": cpu,
                      "ready": ready, "first": first, "stats": stats}), flush=True)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def exchange(label: str, writer: list[str], reader: list[str],
             cwd: Path | None = None) -> tuple[list[int], dict[str, Any]]:
    """Start the reader command, wait for its "ready", give it LEAD, run the writer command
    to its end; the writer's store times (ns, one a line) and the reader's JSON line."""
    proc = subprocess.Popen(reader, stdout=subprocess.PIPE, text=True, cwd=cwd)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{label}: the reader did not start")
    try:
        time.sleep(LEAD)
        w = subprocess.run(writer, capture_output=True, text=True, check=True, timeout=600)
    except BaseException:  # a failed writer (or Ctrl-C) leaves no reader behind
        proc.kill()
        proc.wait()
        raise
    out, _ = proc.communicate(timeout=120)
    return [int(x) for x in w.stdout.split()], json.loads(out)


def cpu_since(data: dict[str, Any], key: str) -> float:
    """The reader's CPU (% of a core) from its mark key ("ready": the opening left out;
    "first": from its first record on) to its end."""
    if not data.get(key):
        return float("nan")
    cpu, wall = (int(x) for x in data[key])
    return 100 * (int(data["cpu_ns"]) - cpu) / (int(data["wall_ns"]) - wall)


def summarize(label: str, stored: list[int], data: dict[str, Any], how: str, *,
              skip_first: int = 0, max_gap: float = MAX_GAP) -> dict[str, Any]:
    """What the reader saw of the stored records, how late (us), and its CPU."""
    seen = {i: (name, t) for i, name, t in data["seen"]}
    lat = [(t - stored[i - 1]) / 1000 for i, (_, t) in seen.items()
           if skip_first < i <= len(stored)]
    stayed = [(stored[i] - stored[i - 1]) / 1e9 for i in range(1, len(stored))] + [1.0]
    missed = [i for i in range(1, len(stored) + 1) if i not in seen]
    missed_long = [i for i in missed if stayed[i - 1] >= max_gap]
    # The contract's max_gap holds from the first change the reader sees after a silence
    # (it cannot know the writer is back before): a record that landed while the reader
    # had seen no change for idle_after, and was replaced within idle_gap, may be missed.
    times = sorted(t for _, t in seen.values())
    # (A notifying writer's waiters sleep until its store: no such exception.)
    after_silence = [i for i in missed_long if max_gap == MAX_GAP and stayed[i - 1] < IDLE_GAP
                     and not any(0 <= (stored[i - 1] - t) / 1e9 < IDLE_AFTER for t in times)]
    missed_long = [i for i in missed_long if i not in after_silence]
    # a miss with a late look between the changes seen before and after it: the machine's
    # (the Python reader notes its late looks at each change; the others do not)
    late_at = dict(zip((i for i, _, _ in data["seen"]), data.get("late", []), strict=False))
    ids = sorted(late_at)

    def woke_late(i: int) -> bool:
        at = bisect.bisect(ids, i)
        return 0 < at < len(ids) and late_at[ids[at]] > late_at[ids[at - 1]]

    missed_late = [i for i in missed_long if woke_late(i)]
    return {
        "case": label, "written": len(stored), "seen": len(seen), "missed": len(missed),
        "missed_stayed_max_gap": len(missed_long), "stay_us": max_gap * 1e6,
        "missed_with_late_look": len(missed_late),
        "missed_after_silence": len(after_silence),
        "missed_examples_ms": [round(stayed[i - 1] * 1e3, 3) for i in missed_long[:5]],
        "p50_us": _pct(lat, 50), "p99_us": _pct(lat, 99), "max_us": max(lat, default=0.0),
        "cpu_percent": 100 * data["cpu_ns"] / data["wall_ns"],
        "cpu_from_ready_percent": cpu_since(data, "ready"),
        "cpu_from_first_percent": cpu_since(data, "first"),
        "late_polls": data["stats"].get("late_polls", 0),
        "polls": data["stats"].get("polls", 0), "reader": how,
        "latencies_us": [round(x, 1) for x in lat[:50]],
    }


def run_case(exe: Path | list[str], tmp: Path, label: str, writer: list[str],
             reader: dict[str, Any], *, skip_first: int = 0, max_gap: float = MAX_GAP,
             floor: tuple[Path, float] | None = None) -> dict[str, Any]:
    """One writer process (exe, a C writer or any command taking the same arguments) and
    one reader process (floor: the C floor and its look, instead of the Python reader);
    what the reader saw, how late, CPU."""
    path = tmp / "watch.bin"
    path.write_bytes(RECORD.pack(0, b"0", b"m"))
    count = int(writer[0]) + (int(writer[3]) if len(writer) > 3 else 0)
    cfg = {"path": str(path), "last": count, **reader}
    command = [str(exe)] if isinstance(exe, Path) else exe
    how = reader.get("how", "mmapipc")
    watcher = [sys.executable, str(SCRIPT), "--reader", json.dumps(cfg)]
    if floor is not None:
        how, watcher = floor_name(floor[1]), floor_command(floor[0], path, count, IDLE_END,
                                                           floor[1])
    stored, data = exchange(label, [*command, str(path), *writer], watcher, cwd=tmp)
    return summarize(label, stored, data, how, skip_first=skip_first, max_gap=max_gap)


def idle_case(seconds: float, how: str, notifying: bool = False,
              floor: Path | None = None) -> dict[str, Any]:
    """No writer at all: what waiting costs (on a plain record, or on one that a notifying
    Writer stored last, where the wait sleeps on its futex; or the C floor's looks every
    idle_gap)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "idle.bin"
        if notifying:
            with Writer(path) as w:
                w.write(Student(1, "idle", "m"))
        else:
            path.write_bytes(RECORD.pack(1, b"idle", b"m"))
        cfg = {"path": str(path), "last": 1, "how": how, "gap": IDLE_GAP,
               "idle_end": seconds}
        command = [sys.executable, str(SCRIPT), "--reader", json.dumps(cfg)]
        if floor is not None:
            command, how = floor_command(floor, path, 2, seconds, IDLE_GAP), floor_name(IDLE_GAP)
        proc = subprocess.run(command, capture_output=True, text=True, check=True,
                              timeout=seconds + 60)
        data = json.loads(proc.stdout.splitlines()[-1])
    label = "idle: a notifying Writer's record" if notifying else "idle: no writer"
    return {"case": label, "reader": how,
            "cpu_percent": 100 * data["cpu_ns"] / data["wall_ns"],
            "cpu_from_ready_percent": cpu_since(data, "ready"),
            "polls": data["stats"].get("polls", 0)}


# A floor: how often the C floor looks (seconds; 0: spinning) and the row's number it bounds
# from below (a Python watcher seeing every change must wake at least that often, or spin).
Floor = tuple[float, str]
CASES: list[tuple[str, list[str], dict[str, Any], int, dict[str, float], Floor | None]] = [
    # label, writer args (count, mode, gap ns, [burst count, burst gap]), reader, skip,
    # targets, floor
    ("mmap_w-like, 1 Hz (sleep(1) after each store)", ["8", "rel", "1000000000"],
     {"idle_end": 2.5}, 3,
     {"p50_us": 100, "cpu_percent": 1.5}, None),
    ("C writer, 1 kHz regular (absolute clock)", ["2000", "abs", "1000000"], {}, 0,
     {"p50_us": 100, "p99_us": 1000, "cpu_percent": 5}, (MAX_GAP, "cpu_percent")),
    ("C writer, 1 kHz Poisson gaps", ["2000", "poisson", "1000000"], {}, 0,
     {"p50_us": 500, "cpu_percent": 5}, (MAX_GAP, "cpu_percent")),
    ("burst: 20 stores 50 ms apart, then 6 stores 3 ms apart",
     ["20", "abs", "50000000", "6", "3000000"], {}, 0, {}, None),
    ("C writer, 1 kHz regular, busy=True", ["2000", "abs", "1000000"], {"busy": True}, 0,
     {"p50_us": 5}, (0.0, "p50_us")),
    ("notifying C writer (mmapipc_record.h), 1 kHz Poisson gaps",
     ["2000", "npoisson", "1000000"], {}, 0, {"p50_us": 20, "p99_us": 200, "cpu_percent": 1},
     None),
]
ALTERNATIVE = {"how": "stdlib", "gap": MAX_GAP}


def _targets(row: dict[str, Any], targets: dict[str, float]) -> str:
    marks = []
    if row.get("reader") == "mmapipc" and "missed_stayed_max_gap" in row:
        missed, late = row["missed_stayed_max_gap"], row.get("missed_with_late_look", 0)
        stay = "max_gap" if row["stay_us"] == MAX_GAP * 1e6 else f"{row['stay_us']:g} us"
        why = f" ({late} of {missed} beside a late look)" if missed else ""
        marks.append(f"none missed that stayed >= {stay}: {'met' if not missed else 'MISSED'}"
                     + why)
    for key, limit in targets.items():
        name = {"p50_us": "p50", "p99_us": "p99", "cpu_percent": "CPU"}[key]
        unit = "%" if key == "cpu_percent" else " us"
        floor = row.get("floor", {}).get(key)
        below = "" if floor is None else f" (C floor {floor:.{1 if unit == ' us' else 2}f}{unit})"
        marks.append(f"{name} <= {limit:g}{unit}: {'met' if row[key] <= limit else 'MISSED'}"
                     + below)
    return "; ".join(marks)


def write_costs(tmp_dir: Path | None) -> str:
    """ns per Writer.write() of a prebuilt Student, waking waiters or not, in one run."""
    with tempfile.TemporaryDirectory(dir=tmp_dir) as d:
        rec, n = Student(1, "cost", "m"), 100_000
        best = {False: math.inf, True: math.inf}
        with Writer(Path(d) / "plain.bin", notify=False) as plain, \
                Writer(Path(d) / "notifying.bin") as notifying:
            for _ in range(7):  # interleaved rounds: both see the same machine
                for notify, w in ((False, plain), (True, notifying)):
                    best[notify] = min(best[notify], timeit.timeit(
                        partial(w.write, rec), number=n) / n)
    ratio = best[True] / best[False]
    return ("| write of a prebuilt Student | ns |\n|---|---:|\n"
            f"| notify=False | {best[False] * 1e9:.0f} |\n| notify=True (default) |"
            f" {best[True] * 1e9:.0f} |\n| ratio (target <= 2) | {ratio:.2f}:"
            f" {'met' if ratio <= 2 else 'MISSED'} |")


def markdown(rows: list[tuple[dict[str, Any], dict[str, float]]]) -> str:
    lines = ["| case | reader | seen / stored (missed that stayed >= max_gap; + after a"
             " silence) | p50 (us) |"
             " p99 (us) | max (us) | CPU (% of a core) | looks (late) | targets |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r, t in rows:
        if "written" in r:
            seen = f"{r['seen']}/{r['written']} ({r['missed_stayed_max_gap']}"
            seen += f"; +{r['missed_after_silence']})" if r["missed_after_silence"] else ")"
            nums = f"{r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['max_us']:.0f}"
        else:
            seen, nums = "-", "- | - | -"
        looks = f"{r['polls']} ({r.get('late_polls', 0)})" if r.get("polls") else "-"
        lines.append(f"| {r['case']} | {r['reader']} | {seen} | {nums} |"
                     f" {r['cpu_percent']:.2f} | {looks} | {_targets(r, t)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short runs, for smoke tests")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    parser.add_argument("--case", metavar="TEXT", default="",
                        help="only the cases whose name holds TEXT (e.g. mmap_w, idle)")
    parser.add_argument("--reader", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reader is not None:
        reader_main(json.loads(args.reader))
        return 0
    print(f"# Watching (max_gap {MAX_GAP * 1e3:g} ms, idle_gap {IDLE_GAP * 1e3:g} ms,"
          f" idle_after {IDLE_AFTER * 1e3:g} ms){' quick run' if args.quick else ''}\n")
    rows: list[tuple[dict[str, Any], dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="mmapipc-watch-") as d:
        tmp = Path(d)
        exe = build_writer(tmp)
        if exe is None:
            return 0
        idle_s = 0.5 if args.quick else 5.0
        floor = _build_c(tmp, "floor", FLOOR_C)
        if args.case in "idle: no writer":
            row = idle_case(idle_s, "mmapipc")
            rows.append((row, {"cpu_percent": 0.5}))
            rows.append((idle_case(idle_s, "stdlib"), {}))
            if floor is not None:
                lowest = idle_case(idle_s, "", floor=floor)
                row["floor"] = {"cpu_percent": lowest["cpu_percent"]}
                rows.append((lowest, {}))
        if args.case in "idle: a notifying Writer's record":
            rows.append((idle_case(idle_s, "mmapipc", notifying=True), {"cpu_percent": 0.1}))
        for label, writer, reader, skip, targets, bound in CASES:
            if args.case not in label:
                continue
            if args.quick:  # a smoke run: every change counts, the first ones too
                writer = [str(min(int(writer[0]), 200 if writer[1] != "rel" else 2)),
                          *writer[1:]]
                skip = 0
            # a notifying writer's changes are to be seen unless replaced within 50 us
            stay = NOTIFIED_STAY if writer[1].startswith("n") else MAX_GAP
            row = run_case(exe, tmp, label, writer, reader, skip_first=skip, max_gap=stay)
            rows.append((row, targets))
            if not reader.get("busy"):
                alt = run_case(exe, tmp, label, writer, {**reader, **ALTERNATIVE},
                               skip_first=skip, max_gap=stay)
                rows.append((alt, {}))
            if floor is not None and bound is not None:
                look, key = bound
                lowest = run_case(exe, tmp, label, writer, reader, skip_first=skip,
                                  max_gap=stay, floor=(floor, look))
                row["floor"] = {key: lowest[key]}
                rows.append((lowest, {}))
            c_reader = build_reader(tmp) if writer[1].startswith("n") else None
            if c_reader is not None:
                rows.append((c_reader_case(exe, c_reader, tmp, label, writer, stay), {}))
    print(markdown(rows))
    print("\n" + write_costs(tmp_dir=None))
    print("\nstdlib = mmap + a check every max_gap with time.sleep (same contract, by hand);"
          " C rec_wait = a C program on mmapipc_record.h in place of the Python watcher;\n"
          "C floor = a bare C loop that compares the 28 bytes and sleeps (or spins): the least"
          " a poller can cost or be late, on this machine, in this run.")
    if args.json:
        Path(args.json).write_text(json.dumps([r for r, _ in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
