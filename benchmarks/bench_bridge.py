"""Bridge latency over loopback: a C writer's store in file A to the same record in file B.

A C writer stores a record 1000 times a second in A (its sequence number and the
CLOCK_MONOTONIC time of the store inside); `mmapipc bridge publish A` and `mmapipc bridge
subscribe B` run as separate processes connected over tcp/127.0.0.1; a C poller maps B and
notes when each sequence number appears.  The floor is the same hop through Zenoh with
no files: one Python process puts a message of the same size 1000 times a second, another
notes when each arrives.  Nothing is asserted: missed targets print as MISSED.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import zenoh

from mmapipc import Layout, Reader, Writer
from mmapipc.bridge import HEADER

TICK_H = """\
#include <stdint.h>
struct tick { int64_t seq; int64_t stored_ns; char name[16]; int32_t spare; };
"""

WRITER_C = r"""
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "tick.h"

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* tick_w FILE N PERIOD_NS: N stores, one per period, never catching up in a burst;
   prints "seq stored_ns" for each at the end. */
int main(int argc, char **argv) {
    long n = atol(argv[2]);
    int64_t period = atoll(argv[3]);
    int fd = open(argv[1], O_RDWR | O_CREAT, 0664);
    if (fd < 0 || ftruncate(fd, sizeof(struct tick)) != 0) { perror("open"); return 1; }
    struct tick *mm = mmap(NULL, sizeof *mm, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mm == MAP_FAILED) { perror("mmap"); return 1; }
    int64_t *stored = calloc(n + 1, sizeof *stored);
    struct tick rec;
    memset(&rec, 0, sizeof rec);
    strcpy(rec.name, "tick");
    int64_t next = now_ns();
    for (long k = 1; k <= n; k++) {
        struct timespec ts = {next / 1000000000, next % 1000000000};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        rec.seq = k;
        rec.stored_ns = now_ns();
        memcpy(mm, &rec, sizeof rec);
        stored[k] = rec.stored_ns;
        next += period;
        if (next < rec.stored_ns + period / 2)
            next = rec.stored_ns + period / 2;
    }
    for (long k = 1; k <= n; k++)
        printf("%ld %lld\n", k, (long long)stored[k]);
    return 0;
}
"""

POLLER_C = r"""
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "tick.h"

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* tick_p FILE LAST IDLE_MS: maps FILE, notes when each new seq appears (polling every
   20 us), until seq LAST or IDLE_MS without a change; prints "seq seen_ns" lines. */
int main(int argc, char **argv) {
    long last = atol(argv[2]);
    int64_t idle = atoll(argv[3]) * 1000000;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { perror("open"); return 1; }
    volatile struct tick *mm = mmap(NULL, sizeof(struct tick), PROT_READ, MAP_SHARED, fd, 0);
    if (mm == MAP_FAILED) { perror("mmap"); return 1; }
    int64_t *seen = calloc(last + 1, sizeof *seen);
    int64_t prev = -1, changed = now_ns();
    struct timespec nap = {0, 20000};
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int64_t s = mm->seq;
        int64_t t = now_ns();
        if (s != prev) {
            prev = s;
            changed = t;
            if (s >= 1 && s <= last && !seen[s])
                seen[s] = t;
            if (s == last)
                break;
        } else if (t - changed > idle) {
            break;
        }
        nanosleep(&nap, NULL);
    }
    for (long k = 1; k <= last; k++)
        if (seen[k])
            printf("%ld %lld\n", k, (long long)seen[k]);
    return 0;
}
"""

FLOOR_SUB = r"""
import json, sys, time, threading, zenoh
cfg = zenoh.Config.from_json5(sys.argv[1])
n = int(sys.argv[2])
lat, done = [], threading.Event()
def on(sample):
    data = sample.payload.to_bytes()
    lat.append(time.monotonic_ns() - int.from_bytes(data[:8], "little"))
    if len(lat) >= n:
        done.set()
with zenoh.open(cfg) as s:
    sub = s.declare_subscriber("bench/floor", on)
    print("ready", flush=True)
    done.wait(float(sys.argv[3]))
    t = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    print(json.dumps({"lat": lat, "cpu_ticks": int(t[11]) + int(t[12])}), flush=True)
"""

FLOOR_PUB = r"""
import sys, time, zenoh
cfg = zenoh.Config.from_json5(sys.argv[1])
n, size, period = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
with zenoh.open(cfg) as s:
    pub = s.declare_publisher("bench/floor", express=True)
    while not pub.matching_status.matching:
        time.sleep(0.001)
    pad = bytes(size - 8)
    nxt = time.monotonic()
    for _ in range(n):
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        pub.put(time.monotonic_ns().to_bytes(8, "little") + pad)
        nxt = max(nxt + period, time.monotonic() + period / 2)
    time.sleep(0.2)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def zconf(listen: int, connect: int | None = None) -> str:
    """JSON5 for a loopback-only peer: no multicast, no gossip, explicit endpoints."""
    return json.dumps({
        "mode": "peer",
        "scouting": {"multicast": {"enabled": False}, "gossip": {"enabled": False}},
        "listen": {"endpoints": [f"tcp/127.0.0.1:{listen}"]},
        "connect": {"endpoints": [] if connect is None else [f"tcp/127.0.0.1:{connect}"]},
    })


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def pairs(text: str) -> dict[int, int]:
    out = {}
    for line in text.strip().splitlines():
        k, t = line.split()
        out[int(k)] = int(t)
    return out


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_bridge: timed out waiting for {what}")
        time.sleep(0.005)


def stop(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM, then the seconds until the process has exited."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    return time.monotonic() - t0


def run_bridge(tmp: Path, n: int, period_ns: int) -> dict[str, Any]:
    header = tmp / "tick.h"
    header.write_text(TICK_H)
    layout = Layout.from_file(header, "struct tick")
    for name, src in (("tick_w", WRITER_C), ("tick_p", POLLER_C)):
        (tmp / f"{name}.c").write_text(src)
    cc = os.environ.get("CC", "gcc")
    subprocess.run([cc, "-O2", f"-I{tmp}", "-o", tmp / "tick_w", tmp / "tick_w.c"],
                   check=True)
    subprocess.run([cc, "-O2", f"-I{tmp}", "-o", tmp / "tick_p", tmp / "tick_p.c"],
                   check=True)
    a, b = tmp / "a.bin", tmp / "b.bin"
    p_sub, p_pub = free_port(), free_port()
    (tmp / "sub.json5").write_text(zconf(p_sub))
    (tmp / "pub.json5").write_text(zconf(p_pub, p_sub))
    struct = ["--struct-file", str(header), "--struct", "struct tick"]
    cli = [sys.executable, "-m", "mmapipc", "bridge"]
    sub = subprocess.Popen([*cli, "subscribe", b, "--key", "bench/tick", "--config",
                            tmp / "sub.json5", "--stats", "3600", *struct],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with Writer(a, layout=layout) as w:
        w.write(layout.Record(seq=0, name="ready"))
    pub = subprocess.Popen([*cli, "publish", a, "--key", "bench/tick", "--config",
                            tmp / "pub.json5", *struct],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def ready() -> bool:
        try:
            with Reader(b, layout=layout) as r:
                return bool(r.read().name == "ready")
        except OSError:
            return False

    try:
        wait_until(ready, 20, "the bridge to carry a first record")
    except SystemExit:
        for proc in (pub, sub):
            proc.kill()
            sys.stderr.write(proc.communicate()[1].decode())
        raise
    # A tap on the key, in this process: which sequence numbers were published at all.
    # It gets the record at hand when it appears (the publisher repeats it): seq 0.
    tapped: set[int] = set()
    tap: Any = zenoh.open(zenoh.Config.from_json5(zconf(free_port(), p_pub)))
    tap.declare_subscriber("bench/tick", lambda sample: tapped.add(
        int.from_bytes(sample.payload.to_bytes()[HEADER.size:HEADER.size + 8], "little")))
    wait_until(lambda: 0 in tapped, 20, "the tap")
    poller = subprocess.Popen([tmp / "tick_p", b, str(n), "2000"], stdout=subprocess.PIPE)
    assert poller.stdout is not None
    assert poller.stdout.readline() == b"ready\n"
    cpu0 = {"publish": cpu_seconds(pub.pid), "subscribe": cpu_seconds(sub.pid)}
    t0 = time.monotonic()
    writer = subprocess.run([tmp / "tick_w", a, str(n), str(period_ns)], capture_output=True,
                            check=True)
    seen_out, _ = poller.communicate(timeout=30)
    time.sleep(0.1)  # the last messages reach the tap
    tap.close()
    wall = time.monotonic() - t0
    cpu = {k: (cpu_seconds(p.pid) - cpu0[k]) / wall
           for k, p in (("publish", pub), ("subscribe", sub))}
    shutdown = {"publish": stop(pub), "subscribe": stop(sub)}
    sub_out = sub.communicate()[0].decode().strip().splitlines()
    sub_stats = json.loads(sub_out[-1]) if sub_out else {}
    stored = pairs(writer.stdout.decode())
    seen = pairs(seen_out.decode())
    lat = [(seen[k] - stored[k]) / 1000 for k in seen]
    stayed = [k for k in range(1, n) if stored[k + 1] - stored[k] >= 1_000_000] + [n]
    lost = [k for k in stayed if k not in tapped]
    return {
        "records": n, "seen": len(seen), "published": len(tapped & set(stored)),
        "stayed_1ms": len(stayed), "lost_of_stayed": len(lost),
        "lost_stayed_us": [(k, (stored.get(k + 1, 0) - stored[k]) // 1000) for k in lost],
        "p50_us": pct(lat, 0.50), "p99_us": pct(lat, 0.99), "max_us": max(lat),
        "cpu_publish": cpu["publish"], "cpu_subscribe": cpu["subscribe"],
        "shutdown_publish_s": shutdown["publish"], "shutdown_subscribe_s": shutdown["subscribe"],
        "subscriber": sub_stats,
    }


def run_floor(n: int, period_ns: int, size: int) -> dict[str, Any]:
    p_sub = free_port()
    sub = subprocess.Popen([sys.executable, "-c", FLOOR_SUB, zconf(p_sub), str(n),
                            str(n * period_ns / 1e9 + 20)], stdout=subprocess.PIPE)
    assert sub.stdout is not None
    assert sub.stdout.readline() == b"ready\n"
    t0 = time.monotonic()
    pub = subprocess.Popen([sys.executable, "-c", FLOOR_PUB, zconf(free_port(), p_sub), str(n),
                            str(size), str(period_ns / 1e9)])
    pub.wait(timeout=n * period_ns / 1e9 + 30)
    out = json.loads(sub.communicate(timeout=30)[0].decode().strip().splitlines()[-1])
    wall = time.monotonic() - t0
    lat = [v / 1000 for v in out["lat"]]
    return {"records": n, "seen": len(lat), "p50_us": pct(lat, 0.5), "p99_us": pct(lat, 0.99),
            "max_us": max(lat),
            "cpu_subscribe": out["cpu_ticks"] / os.sysconf("SC_CLK_TCK") / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 s of records, a smoke run")
    parser.add_argument("--seconds", type=float, default=None, help="seconds of records (10)")
    parser.add_argument("--rate", type=float, default=1000.0, help="stores per second (1000)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    seconds = args.seconds or (1.0 if args.quick else 10.0)
    n = max(2, int(seconds * args.rate))
    period_ns = int(1e9 / args.rate)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as tmp:
        bridged = run_bridge(Path(tmp), n, period_ns)
    floor = run_floor(n, period_ns, HEADER.size + 40)
    load = (load_before, os.getloadavg()[0])

    def mark(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    print(textwrap.dedent(f"""\
        ## Bridge over loopback: {n} records at {args.rate:g} Hz

        {os.cpu_count()} CPUs, load average {load[0]:.1f} before, {load[1]:.1f} after.

        | hop | records seen | p50 | p99 | max | CPU |
        |---|---|---|---|---|---|
        | C store in A -> `bridge publish` -> `bridge subscribe` -> B (C poller) \
| {bridged['seen']}/{n} | {bridged['p50_us']:.0f} us | {bridged['p99_us']:.0f} us \
| {bridged['max_us']:.0f} us | publish {bridged['cpu_publish']:.1%}, \
subscribe {bridged['cpu_subscribe']:.1%} of a core |
        | floor: Python `put` -> Python callback, same message size \
| {floor['seen']}/{n} | {floor['p50_us']:.0f} us | {floor['p99_us']:.0f} us \
| {floor['max_us']:.0f} us | subscriber {floor['cpu_subscribe']:.1%} of a core |

        - target p50 <= 500 us: {mark(bridged['p50_us'] <= 500)}; \
p99 <= 5 ms: {mark(bridged['p99_us'] <= 5000)}
        - records published (seen by a tap on the key): {bridged['published']}/{n}; of the \
{bridged['stayed_1ms']} that stayed >= 1 ms in A, not published: \
{bridged['lost_of_stayed']} ({mark(bridged['lost_of_stayed'] == 0)}); lost between \
publisher and subscriber: {bridged['subscriber'].get('lost')} \
({mark(bridged['subscriber'].get('lost') == 0)})
        - subscriber counters: {json.dumps(bridged['subscriber'])}
        - exit after SIGTERM: publish {bridged['shutdown_publish_s'] * 1000:.0f} ms, \
subscribe {bridged['shutdown_subscribe_s'] * 1000:.0f} ms (target 500 ms: \
{mark(max(bridged['shutdown_publish_s'], bridged['shutdown_subscribe_s']) <= 0.5)})
        """))
    if args.json:
        Path(args.json).write_text(json.dumps({"bridge": bridged, "floor": floor,
                                               "load": load}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
