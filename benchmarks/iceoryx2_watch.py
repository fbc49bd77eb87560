"""mmapipc's notifying watch next to iceoryx2 (publish-subscribe + event) in the same run.

The exchange of watch.py's notifying case, run four ways: its C writer on
mmapipc_record.h -> a Python Reader.watch() (for reference); a Python mmapipc Writer -> the
same reader; a Python iceoryx2 Publisher that sends a 28-byte struct STU sample and then
notifies its event service -> a Python Subscriber that sleeps on the event's Listener until
notified and takes every sample; the same with a subscriber buffer of 1 (the latest sample,
as a record).  Every publisher stamps each record's name with its CLOCK_MONOTONIC time just
before storing it, with the same count and 1 kHz Poisson gaps.  Latency = seen - stored;
CPU = the reader's getrusage user + system time over its whole window (as in watch.py: its
opening, the 0.3 s before the first record, the watch), from its first record on, and from
its "ready" on (the opening left out).  The idle rows wait 5 s with no one storing or
sending.

    pip install 'mmapipc[bench]'
    cd /tmp && python /path/to/benchmarks/iceoryx2_watch.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import watch

from mmapipc import Student, Writer

SCRIPT = Path(__file__).resolve()
# count, mode, mean gap (ns) of watch.py's notifying case
WRITER = next(c[1] for c in watch.CASES if c[1][1] == "npoisson")
SEED = 88172645463325252
# How long a subscriber waits for a Python publisher (it starts Python and imports a
# library: iceoryx2 takes ~0.3 s of it here) before it gives up.
PUBLISHER_START = 2.0


class STU(ctypes.Structure):
    """struct STU { int id; char name[20]; char sex; }: 28 bytes, as the C programs lay it."""

    _fields_ = [("id", ctypes.c_int), ("name", ctypes.c_char * 20), ("sex", ctypes.c_char)]


def _iceoryx2(service: str, buffer: int | None) -> tuple[Any, Any, Any, Any]:
    """iceoryx2, quiet, and the node, publish-subscribe and event services named service
    (a subscriber holds buffer samples, the oldest overwritten; None: iceoryx2's default)."""
    import iceoryx2 as iox2

    iox2.set_log_level(iox2.LogLevel.Error)
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    name = iox2.ServiceName.new(service)
    builder = node.service_builder(name).publish_subscribe(STU)
    if buffer is not None:
        builder = builder.subscriber_max_buffer_size(buffer)
    pubsub = builder.open_or_create()
    event = node.service_builder(name).event().open_or_create()
    return iox2, node, pubsub, event


def publisher_main(kind: str, target: str, count: int, mode: str, gap_ns: int,
                   buffer: int | None = None) -> None:
    """Store count records, Poisson gaps of mean gap_ns on an absolute schedule, each
    stamped just before its store; then print the stamps, one a line (as watch.py's C
    writer does).  kind: "mmapipc" (a notifying Writer on the file target) or "iceoryx2"
    (a Publisher and a Notifier on the services named target)."""
    if mode != "poisson":
        raise SystemExit(f"publisher: mode {mode!r}: only poisson")
    clock, mono = time.clock_gettime_ns, time.CLOCK_MONOTONIC
    keep: list[Any] = []
    send: Callable[[int, int], Any]
    if kind == "mmapipc":
        w = Writer(target)
        keep.append(w)

        def send(i: int, stamp: int) -> None:
            w.write(Student(i, str(stamp), "m"))
    else:
        _, node, pubsub, event = _iceoryx2(target, buffer)
        publisher, notifier = pubsub.publisher_builder().create(), event.notifier_builder().create()
        keep += [node, publisher, notifier]

        def send(i: int, stamp: int) -> None:
            publisher.send_copy(STU(i, str(stamp).encode(), b"m"))
            notifier.notify()
    rng, stamps, due = random.Random(SEED), [], clock(mono)
    for i in range(1, count + 1):
        due += int(rng.expovariate(1.0) * gap_ns)
        wait = due - clock(mono)
        if wait > 0:
            time.sleep(wait / 1e9)
        stamp = clock(mono)
        send(i, stamp)
        stamps.append(stamp)
    time.sleep(0.1)  # the ports stay up while the subscriber takes the last sample
    print("\n".join(map(str, stamps)), flush=True)


def subscriber_main(cfg: dict[str, Any]) -> None:
    """The iceoryx2 reader process: sleep on the Listener, take every sample, until the
    last id or idle_end seconds without one; then print one JSON line as watch.py's does."""
    import iceoryx2  # noqa: F401  (imported before the window opens, as mmapipc is)

    clock, mono = time.clock_gettime_ns, time.CLOCK_MONOTONIC
    last_id, seen, wakeups = int(cfg["last"]), [], 0
    first: tuple[int, int] | None = None
    cpu0, t0 = watch._cpu_ns(), clock(mono)
    iox2, node, pubsub, event = _iceoryx2(cfg["service"], cfg.get("buffer"))
    subscriber, listener = pubsub.subscriber_builder().create(), event.listener_builder().create()
    idle_end = int(float(cfg.get("idle_end", watch.IDLE_END)) * 1e9)
    ready = watch.mark(cpu0, t0)
    print("ready", flush=True)
    done, quiet_since = False, clock(mono)
    while not done:
        left = quiet_since + idle_end - clock(mono)
        if left <= 0:
            break
        listener.timed_wait(iox2.Duration.from_nanos(left))
        wakeups += 1
        while (sample := subscriber.receive()) is not None:
            first = first or watch.mark(cpu0, t0)
            s = sample.payload().contents
            seen.append((s.id, s.name.decode(), clock(mono)))
            quiet_since, done = clock(mono), done or s.id >= last_id
            del s, sample  # given back before the next receive (2 may be borrowed at once)
    cpu, wall = watch.mark(cpu0, t0)
    del subscriber, listener, pubsub, event, node
    print(json.dumps({"seen": seen, "wall_ns": wall, "cpu_ns": cpu, "ready": ready,
                      "first": first, "stats": {"polls": wakeups}}), flush=True)


def _publisher(kind: str, buffer: int | None = None) -> list[str]:
    extra = [] if buffer is None else ["--buffer", str(buffer)]
    return [sys.executable, str(SCRIPT), *extra, "--publisher", kind]


def iceoryx2_case(label: str, writer: list[str], buffer: int | None = None) -> dict[str, Any]:
    """The iceoryx2 exchange: a Python Publisher process and a Subscriber process."""
    service = f"mmapipc-bench/{uuid.uuid4().hex}"
    cfg = {"service": service, "last": int(writer[0]), "idle_end": PUBLISHER_START,
           "buffer": buffer}
    stored, data = watch.exchange(label, [*_publisher("iceoryx2", buffer), service, *writer],
                                  [sys.executable, str(SCRIPT), "--subscriber", json.dumps(cfg)])
    return watch.summarize(label, stored, data, "iceoryx2")


def iceoryx2_idle(seconds: float) -> dict[str, Any]:
    """A Subscriber waiting on its Listener with nobody sending: what waiting costs."""
    cfg = {"service": f"mmapipc-bench/{uuid.uuid4().hex}", "last": 1, "idle_end": seconds}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--subscriber", json.dumps(cfg)],
                          capture_output=True, text=True, check=True, timeout=seconds + 60)
    data = json.loads(proc.stdout.splitlines()[-1])
    return {"case": "idle: a Subscriber on its Listener", "reader": "iceoryx2",
            "cpu_percent": 100 * data["cpu_ns"] / data["wall_ns"],
            "cpu_from_ready_percent": watch.cpu_since(data, "ready")}


def _verdict(ours: float, theirs: float) -> str:
    return f"{ours:.2f} vs iceoryx2 {theirs:.2f}: {'met' if ours <= theirs else 'MISSED'}"


def _num(row: dict[str, Any], key: str, form: str = ".2f") -> str:
    return format(row[key], form) if key in row else "-"


def markdown(rows: list[dict[str, Any]]) -> str:
    """One table: the exchanges, then the idle waits."""
    lines = ["| case | subscriber | seen / sent (missed that stayed >= 1 ms) | p50 (us) |"
             " p99 (us) | max (us) | CPU, whole window (% of a core) |"
             " CPU, first to last record (%) | CPU, after opening (%) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        seen = (f"{r['seen']}/{r['written']} ({r['missed_stayed_max_gap']})" if "written" in r
                else "-")
        lines.append(f"| {r['case']} | {r['reader']} | {seen} | {_num(r, 'p50_us', '.1f')} |"
                     f" {_num(r, 'p99_us', '.1f')} | {_num(r, 'max_us', '.0f')} |"
                     f" {_num(r, 'cpu_percent')} | {_num(r, 'cpu_from_first_percent')} |"
                     f" {_num(r, 'cpu_from_ready_percent')} |")
    return "\n".join(lines)


def targets(ours: dict[str, Any], theirs: dict[str, Any], idle_ours: dict[str, Any],
            idle_theirs: dict[str, Any], buffer: int | None = None) -> str:
    """The target, mmapipc at or below iceoryx2's p50 and CPU, like with like (a Python
    publisher and a Python subscriber on both sides); and the idle wait's CPU."""
    pairs = [("p50 (us)", ours, theirs, "p50_us"),
             ("CPU, first to last record (%)", ours, theirs, "cpu_from_first_percent"),
             ("CPU, whole window (%)", ours, theirs, "cpu_percent")]
    if buffer is None:
        pairs += [("idle CPU, whole window (%)", idle_ours, idle_theirs, "cpu_percent"),
                  ("idle CPU, after opening (%)", idle_ours, idle_theirs,
                   "cpu_from_ready_percent")]
    which = "its default buffer" if buffer is None else f"a buffer of {buffer}"
    return "\n".join(
        [f"Target, mmapipc at or below iceoryx2 with {which} (Python publisher -> Python"
         " subscriber, both):"]
        + [f"- {what}: mmapipc {_verdict(a[key], b[key])}" for what, a, b, key in pairs])


NOTE = """\
Both subscribers are Python processes that decode each record, and both Python publishers
stamp, build and store each record the same way (Poisson gaps drawn by Python's random; the
C writer draws its own).  The C writer row is mmapipc's own publisher in C, for reference
only: iceoryx2 is measured from Python alone here.  A Writer keeps one record (a store
replaces the last); an iceoryx2 Subscriber keeps a queue (2 samples by default, the oldest
overwritten), so it sees more of the records that follow each other closely, and its
latencies include the time such samples wait in the queue; the buffer-of-1 row keeps only
the latest sample, as a record does."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short runs, for smoke tests")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    parser.add_argument("--publisher", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--subscriber", help=argparse.SUPPRESS)
    parser.add_argument("--buffer", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publisher is not None:
        kind, target, count, mode, gap = args.publisher
        publisher_main(kind, target, int(count), mode, int(gap), args.buffer)
        return 0
    if args.subscriber is not None:
        subscriber_main(json.loads(args.subscriber))
        return 0
    try:
        import iceoryx2  # noqa: F401
    except ImportError:
        print("iceoryx2_watch: iceoryx2 is not installed: pip install 'mmapipc[bench]'",
              file=sys.stderr)
        return 2
    # iceoryx2 imports flatbuffers, which imports numpy where it is installed; numpy's
    # OpenBLAS then starts a thread that spins for ~0.1 s, counted as the subscriber's CPU.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    writer = [str(200 if args.quick else int(WRITER[0])), "poisson", *WRITER[2:]]
    idle_s = 1.0 if args.quick else 5.0
    count, gap_ms = int(writer[0]), int(writer[2]) / 1e6
    print(f"# mmapipc and iceoryx2: {count} records, Poisson gaps of mean {gap_ms:g} ms,"
          f" idle {idle_s:g} s{' (quick run)' if args.quick else ''}\n")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mmapipc-iceoryx2-") as d:
        tmp = Path(d)
        exe = watch.build_writer(tmp)
        if exe is not None:
            rows.append(watch.run_case(exe, tmp, "C writer (mmapipc_record.h) -> Reader.watch()",
                                       [writer[0], "npoisson", writer[2]], {}))
        ours = watch.run_case(_publisher("mmapipc"), tmp, "Python Writer -> Reader.watch()",
                              writer, {"idle_end": PUBLISHER_START})
        theirs = iceoryx2_case("Python Publisher + Notifier -> Subscriber on a Listener",
                               writer)
        latest = iceoryx2_case("the same, buffer of 1 sample (the latest, as a record)",
                               writer, buffer=1)
        rows += [ours, theirs, latest]
        idle_ours = watch.idle_case(idle_s, "mmapipc", notifying=True)
        idle_theirs = iceoryx2_idle(idle_s)
        rows += [idle_ours, idle_theirs]
    print(markdown(rows))
    print()
    print(targets(ours, theirs, idle_ours, idle_theirs))
    print(targets(ours, latest, idle_ours, idle_theirs, buffer=1))
    print("\n" + NOTE)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
