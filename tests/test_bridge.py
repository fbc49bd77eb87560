"""The Zenoh bridge: records carried from one file to another, C programs at both ends.

Every session here runs in peer mode with multicast scouting off and explicit
tcp/127.0.0.1 endpoints on free ports: nothing leaves the loopback interface.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zenoh
from conftest import assert_clean_error, read_line, run_cli, start_cli

from mmapipc import Layout, Reader, Student, Writer, bridge
from mmapipc.record import STUDENT

STU_C = "struct STU { int id; char name[20]; char sex; };"
SENSOR_H = """\
#include <stdint.h>
#define NAME_LEN 16
struct point { int16_t x, y; double z; };
typedef struct sensor {
    uint8_t kind;
    int64_t stamp;
    uint32_t count;
    char name[NAME_LEN];
    int32_t samples[4];
    struct point pos;
    struct point track[3];
    _Bool ok;
} sensor_t;
"""
LOOPBACK_ONLY = {"mode": "peer", "scouting/multicast/enabled": False,
                 "scouting/gossip/enabled": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def endpoint(port: int) -> str:
    return f"tcp/127.0.0.1:{port}"


@pytest.fixture()
def zconf(tmp_path: Path) -> Path:
    """A Zenoh configuration file: peer mode, no multicast or gossip scouting."""
    path = tmp_path / "zenoh.json5"
    path.write_text("{ mode: 'peer', scouting: { multicast: { enabled: false },"
                    " gossip: { enabled: false } } }\n")
    return path


@pytest.fixture()
def sensor_h(tmp_path: Path) -> Path:
    path = tmp_path / "sensor.h"
    path.write_text(SENSOR_H)
    return path


def wait_until(check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    """Poll check() until it returns something true; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.01)


def record_of(path: Path, layout: Any = None) -> Any:
    """The record in path, or None while the file is missing or short."""
    try:
        with Reader(path, layout=layout) as r:
            return r.read()
    except OSError:
        return None


def cli_args(zconf: Path, listen: int, connect: int | None = None) -> list[str]:
    args = ["--config", str(zconf), "--listen", endpoint(listen)]
    if connect is not None:
        args += ["--connect", endpoint(connect)]
    return args


def finish(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> tuple[int, str, str]:
    """Signal proc, wait for it (a hang fails: the bound is loose, for a loaded machine;
    the benchmark measures the real time), return (status, stdout, stderr)."""
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out.decode(), err.decode()


def last_stats(out: str) -> dict[str, Any]:
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"no --stats line in {out!r}"
    stats: dict[str, Any] = json.loads(lines[-1])
    return stats


def stats_until(proc: subprocess.Popen[bytes],
                check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Read proc's --stats lines until one passes check; return it."""
    while True:
        stats: dict[str, Any] = json.loads(read_line(proc))
        if check(stats):
            return stats


class Running:
    """A bridge side's run() in a thread, stopped and closed on exit."""

    def __init__(self, side: Any, **run: Any) -> None:
        self.side = side
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, kwargs=run, daemon=True)
        self.thread.start()

    def _run(self, **run: Any) -> None:
        try:
            self.result = self.side.run(**run)
        except BaseException as e:  # surfaced by stop()
            self.error = e

    def stop(self) -> Any:
        self.side.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "run() did not return after stop()"
        self.side.close()
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture()
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        if r.thread.is_alive():
            r.side.stop()
            r.thread.join(timeout=30)
        r.side.close()


def pair(tmp_path: Path, running: list[Running], layout: Any = None,
         events: list[bridge.Event] | None = None) -> tuple[Path, Path, Running, Running]:
    """A subscriber on b.bin and a publisher on a.bin (Python API), connected and matched."""
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    p_sub, p_pub = free_port(), free_port()
    on_event = None if events is None else events.append
    sub = bridge.BridgeSubscriber(b, "test/rec", layout=layout, config=LOOPBACK_ONLY,
                                  listen=[endpoint(p_sub)], on_event=on_event)
    running.append(Running(sub))
    pub = bridge.BridgePublisher(a, "test/rec", layout=layout, config=LOOPBACK_ONLY,
                                 listen=[endpoint(p_pub)], connect=[endpoint(p_sub)],
                                 on_event=on_event)
    wait_until(lambda: pub.subscribed, what="the subscriber to be matched")
    running.append(Running(pub))
    return a, b, running[-2], running[-1]


# ---- fingerprint and message format -------------------------------------------------


def test_fingerprint_same_for_stu_by_cffi_and_by_layout() -> None:
    as_layout = Layout.from_c(STU_C, "struct STU")
    assert bridge.layout_description(STUDENT) == (
        f"order={sys.byteorder};size=28;align=4;0:4:int;4:20:char[20];24:1:char")
    assert bridge.layout_fingerprint(STUDENT) == bridge.layout_fingerprint(as_layout)
    assert len(bridge.layout_fingerprint()) == bridge.FINGERPRINT_SIZE


def test_fingerprint_changes_with_any_member(sensor_h: Path) -> None:
    sensor = Layout.from_file(sensor_h, "sensor_t")
    base = bridge.layout_fingerprint(sensor)
    assert base == bridge.layout_fingerprint(Layout.from_c(SENSOR_H, "struct sensor"))
    assert "120:1:_Bool" in bridge.layout_description(sensor)
    variants = [
        SENSOR_H.replace("uint32_t count", "int32_t count"),          # a type
        SENSOR_H.replace("#define NAME_LEN 16", "#define NAME_LEN 15"),  # an offset
        SENSOR_H.replace("int16_t x, y; double z;", "int16_t x, y; float z;"),  # nested
        SENSOR_H.replace("typedef struct sensor {", "#pragma pack(1)\ntypedef struct sensor {"),
    ]
    prints = {bridge.layout_fingerprint(Layout.from_c(v, "sensor_t")) for v in variants}
    assert base not in prints and len(prints) == len(variants)
    assert bridge.layout_fingerprint(STUDENT) != base
    with pytest.raises(TypeError):
        bridge.layout_fingerprint(object())  # type: ignore[arg-type]


def test_message_round_trip_and_malformed() -> None:
    fp = bridge.layout_fingerprint()
    data = bridge.pack_message(fp, 7, 42, 123456789, b"r" * 28)
    assert len(data) == bridge.HEADER.size + 28 and data[:4] == bridge.MAGIC
    msg = bridge.unpack_message(data)
    assert (msg.fingerprint, msg.publisher, msg.seq, msg.time_ns, msg.record) == (
        fp, 7, 42, 123456789, b"r" * 28)
    for bad in (b"", b"junk", data[:-1], data + b"x", b"XXXX" + data[4:],
                data[:4] + bytes([9]) + data[5:]):
        with pytest.raises(ValueError):
            bridge.unpack_message(bad)


def test_zenoh_errors_become_one_line_without_source_locations() -> None:
    busy = zenoh.ZError(
        "Can not create a new TCP listener bound to tcp/127.0.0.1:5: [127.0.0.1:5: Address"
        " already in use (os error 98) at /root/.cargo/git/x/io/tcp.rs:61.]")
    assert bridge._zmessage(busy) == (
        "Can not create a new TCP listener bound to tcp/127.0.0.1:5: [127.0.0.1:5: Address"
        " already in use (os error 98)]")
    bad = zenoh.ZError('Json5Err(Message { msg: "unknown variant `x`, expected one of `peer`",'
                       ' location: Some(Location { line: 1, column: 1 }) }) at /r/config.rs:86.')
    assert bridge._zmessage(bad) == "unknown variant `x`, expected one of `peer`"
    assert bridge._zmessage(zenoh.ZError("two\nlines at /a/b.rs:1.")) == "two lines"


# ---- end to end with the C programs --------------------------------------------------

LINE = re.compile(rb"id=(\d+)\tname=bridged\tm\n")


def test_c_writer_to_c_reader_across_the_bridge(
        tmp_path: Path, zconf: Path, peers: dict[str, Path],
        procs: list[subprocess.Popen[bytes]]) -> None:
    """mmap_w -> A -> publish -> subscribe -> B -> mmap_r, the subscriber started first."""
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    p_sub, p_pub = free_port(), free_port()
    sub = start_cli("bridge", "subscribe", b, "--key", "e2e/stu", "--stats", "0.2",
                    *cli_args(zconf, p_sub))
    procs.append(sub)
    wait_until(lambda: b.exists() and b.stat().st_size == 28, what="B created")
    # The first record, by mmap_w too (a notifying Writer handing over to a legacy one
    # is a case of its own): id 0, "ready".
    subprocess.run([peers["mmap_w"], a, "1", "0", "ready", "0"], check=True)
    pub = start_cli("bridge", "publish", a, "--key", "e2e/stu",
                    *cli_args(zconf, p_pub, p_sub))
    procs.append(pub)
    wait_until(lambda: record_of(b) == Student(0, "ready", "m"), what="the bridge ready")
    count = 60
    writer = subprocess.Popen([peers["mmap_w"], a, str(count), "20", "bridged"])
    procs.append(writer)
    first = wait_until(lambda: (rec := record_of(b)) is not None and rec.id >= 10 and rec,
                       what="the first record in B")
    assert first.name == "bridged"
    reader = subprocess.run([peers["mmap_r"], b, "15", "50"], capture_output=True,
                            timeout=20, check=True)
    ids = []
    for line in reader.stdout.splitlines(keepends=True):
        m = LINE.fullmatch(line)
        assert m, f"wrong or torn line from mmap_r on B: {line!r}"
        ids.append(int(m.group(1)))
    assert ids == sorted(ids) and 10 <= ids[0] and ids[-1] < 10 + count
    assert len(set(ids)) > 3, ids  # records kept arriving while mmap_r read
    assert writer.wait(timeout=20) == 0
    wait_until(lambda: record_of(b) == record_of(a), what="B to catch up with A")
    on_a = subprocess.run([peers["mmap_r"], a, "1"], capture_output=True, check=True)
    on_b = subprocess.run([peers["mmap_r"], b, "1"], capture_output=True, check=True)
    assert on_a.stdout == on_b.stdout == f"id={10 + count - 1}\tname=bridged\tm\n".encode()

    status, _, err = finish(pub, signal.SIGINT)
    assert status == 130 and "Traceback" not in err
    summary = re.fullmatch(r"mmapipc bridge publish: (\d+) records published",
                           err.splitlines()[-1])
    assert summary, err
    published = int(summary.group(1))  # "ready", then each record the watch saw
    assert len(set(ids)) < published <= count + 1
    status, out, err = finish(sub)
    assert status == 128 + signal.SIGTERM and "Traceback" not in err, err
    stats = last_stats(out)
    assert stats["written"] == published  # every record published was written
    assert stats["received"] == stats["written"] + stats["repeats"]
    assert (stats["gaps"], stats["lost"], stats["refused"], stats["publishers"]) == (0, 0, 0, 1)
    assert "records written" in err.splitlines()[-1]


# ---- layouts ---------------------------------------------------------------------


def test_sensor_layout_both_ways(tmp_path: Path, zconf: Path, sensor_h: Path,
                                 procs: list[subprocess.Popen[bytes]],
                                 running: list[Running]) -> None:
    """API publisher to CLI subscriber, then CLI publisher to API subscriber."""
    sensor = Layout.from_file(sensor_h, "sensor_t")
    struct = ["--struct-file", str(sensor_h), "--struct", "sensor_t"]
    rec = sensor.Record(kind=3, stamp=-5, count=7, name="probe", samples=[1, 2, 3, 4],
                        pos={"x": -1, "y": 2, "z": 0.5},
                        track=[{"x": 1}, {"y": 2}, {"z": 3.25}], ok=True)
    # There: a Python Writer -> A -> API publisher -> CLI subscriber -> B.
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    p_sub, p_pub = free_port(), free_port()
    sub = start_cli("bridge", "subscribe", b, "--key", "lay/out", *struct,
                    *cli_args(zconf, p_sub))
    procs.append(sub)
    with Writer(a, layout=sensor) as w:
        w.write(rec)
        pub = bridge.BridgePublisher(a, "lay/out", layout=sensor, config=zconf,
                                     listen=[endpoint(p_pub)], connect=[endpoint(p_sub)])
        wait_until(lambda: pub.subscribed, what="the CLI subscriber to be matched")
        running.append(Running(pub))
        wait_until(lambda: record_of(b, sensor) == rec, what="the sensor record in B")
        w.write(sensor.with_value(rec, "count", 8))
        wait_until(lambda: record_of(b, sensor) == sensor.with_value(rec, "count", 8))
    running[-1].stop()
    status, _, err = finish(sub)
    assert status == 128 + signal.SIGTERM and "Traceback" not in err, err

    # Back: B -> CLI publisher -> API subscriber -> C.
    c = tmp_path / "c.bin"
    p_sub2, p_pub2 = free_port(), free_port()
    sub2 = bridge.BridgeSubscriber(c, "lay/back", layout=sensor, config=zconf,
                                   listen=[endpoint(p_sub2)])
    running.append(Running(sub2))
    pub2 = start_cli("bridge", "publish", b, "--key", "lay/back", *struct,
                     *cli_args(zconf, p_pub2, p_sub2))
    procs.append(pub2)
    wait_until(lambda: record_of(c, sensor) == sensor.with_value(rec, "count", 8),
               what="the record back in C")
    with Writer(b, layout=sensor) as w:
        w.write(sensor.with_value(rec, "name", "back"))
    wait_until(lambda: record_of(c, sensor) == sensor.with_value(rec, "name", "back"))
    stats = running[-1].stop()
    assert stats.refused == 0 and stats.gaps == 0 and stats.written >= 2
    status, _, err = finish(pub2)
    assert status == 128 + signal.SIGTERM and "Traceback" not in err, err


def test_mismatched_layout_refused_once(tmp_path: Path, zconf: Path, sensor_h: Path,
                                        procs: list[subprocess.Popen[bytes]]) -> None:
    """A struct STU publisher and a sensor_t subscriber: every record refused, one line."""
    b = tmp_path / "b.bin"
    p_sub = free_port()
    sub = start_cli("bridge", "subscribe", b, "--key", "mis/match", "--stats", "0.05",
                    "--struct-file", sensor_h, "--struct", "sensor_t", *cli_args(zconf, p_sub))
    procs.append(sub)
    wait_until(lambda: b.exists() and b.stat().st_size == 128, what="B created")
    with bridge.BridgePublisher(tmp_path / "unused", "mis/match", config=zconf,
                                listen=[endpoint(free_port())],
                                connect=[endpoint(p_sub)]) as pub:
        wait_until(lambda: pub.subscribed, what="the CLI subscriber to be matched")
        for i in range(20):
            pub.send(Student(i, "x", "m").to_bytes())
        while json.loads(read_line(sub))["refused"] < 20:
            pass
    status, out, err = finish(sub)
    assert status == 128 + signal.SIGTERM and "Traceback" not in err, err
    refusals = [line for line in err.splitlines() if "another layout" in line]
    assert len(refusals) == 1, err
    assert "28 bytes" in refusals[0] and "128 bytes" in refusals[0]
    stats = last_stats(out)
    assert stats["refused"] == 20 and stats["written"] == 0
    assert b.read_bytes() == bytes(128)


def test_gaps_stale_and_restarts_counted(tmp_path: Path, running: list[Running]) -> None:
    """Messages sent by hand: the subscriber counts what a sequence says it missed."""
    b = tmp_path / "b.bin"
    port = free_port()
    events: list[bridge.Event] = []
    sub = bridge.BridgeSubscriber(b, "gap/s", config=LOOPBACK_ONLY, listen=[endpoint(port)],
                                  on_event=events.append)
    running.append(Running(sub))
    cfg = bridge.zenoh_config(LOOPBACK_ONLY, listen=[endpoint(free_port())],
                              connect=[endpoint(port)])
    fp = bridge.layout_fingerprint()
    with zenoh.open(cfg) as session:
        raw = session.declare_publisher("gap/s")
        wait_until(lambda: raw.matching_status.matching, what="the subscriber")
        sent = [(1, 1, 0), (1, 2, 0), (1, 5, 0), (1, 6, 0), (1, 10, 0), (1, 3, 0),
                (1, 10, bridge.FLAG_REPEAT), (2, 7, bridge.FLAG_REPEAT), (2, 8, 0),
                (2, 8, bridge.FLAG_REPEAT), (2, 11, 0)]
        for publisher, seq, flags in sent:
            raw.put(bridge.pack_message(fp, publisher, seq, time.time_ns(),
                                        Student(seq, "g", "m").to_bytes(), flags))
        raw.put(b"not a bridge message")
        raw.put(b"another one")
        # Our fingerprint on a record of the wrong size: refused all the same.
        raw.put(bridge.pack_message(fp, 1, 11, time.time_ns(), bytes(27)))
        wait_until(lambda: sub.stats.received == len(sent) + 3, what="every message")
    stats = running[-1].stop()
    # 2 -> 5 and 6 -> 10 in the first run, 8 -> 11 in the second: 3 gaps, 2 + 3 + 2 lost.
    # A repeat is written when it is the first of its publisher (a late joiner's first).
    assert (stats.gaps, stats.lost, stats.stale, stats.publishers) == (3, 7, 1, 2)
    assert (stats.malformed, stats.repeats, stats.written) == (2, 2, len(sent) - 3)
    assert stats.refused == 1 and "27 bytes" in str(events)
    assert record_of(b) == Student(11, "g", "m")
    kinds = [e.kind for e in events]
    assert kinds.count("malformed") == 1 and kinds.count("publisher") == 1, events


def test_two_publishers_on_one_key_reported_once(tmp_path: Path,
                                                 running: list[Running]) -> None:
    """Interleaved publishers: each sequence followed on its own, one line about it."""
    b = tmp_path / "b.bin"
    port = free_port()
    events: list[bridge.Event] = []
    sub = bridge.BridgeSubscriber(b, "two/s", config=LOOPBACK_ONLY, listen=[endpoint(port)],
                                  on_event=events.append)
    running.append(Running(sub))
    cfg = bridge.zenoh_config(LOOPBACK_ONLY, listen=[endpoint(free_port())],
                              connect=[endpoint(port)])
    fp = bridge.layout_fingerprint()
    with zenoh.open(cfg) as session:
        raw = session.declare_publisher("two/s")
        wait_until(lambda: raw.matching_status.matching, what="the subscriber")
        for seq in range(1, 21):
            for publisher in (5, 6):
                raw.put(bridge.pack_message(fp, publisher, seq, time.time_ns(),
                                            Student(seq, "p", "m").to_bytes()))
        wait_until(lambda: sub.stats.received == 40, what="every message")
    stats = running[-1].stop()
    assert (stats.publishers, stats.gaps, stats.stale, stats.written) == (2, 0, 0, 40)
    assert [e.kind for e in events].count("publisher") == 2, events  # new one, then several


# ---- robustness ------------------------------------------------------------------


def test_publisher_killed_and_restarted(tmp_path: Path, zconf: Path,
                                        procs: list[subprocess.Popen[bytes]]) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    p_sub = free_port()
    sub = start_cli("bridge", "subscribe", b, "--key", "kill/stu", "--stats", "0.2",
                    *cli_args(zconf, p_sub))
    procs.append(sub)
    stop = threading.Event()

    def write() -> None:
        with Writer(a) as w:
            n = 0
            while not stop.is_set():
                w.write(Student(n, "kill", "m"))
                n += 1
                time.sleep(0.005)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        pub = start_cli("bridge", "publish", a, "--key", "kill/stu",
                        *cli_args(zconf, free_port(), p_sub))
        procs.append(pub)
        before = stats_until(sub, lambda st: st["written"] >= 20)
        pub.send_signal(signal.SIGKILL)
        pub.wait(timeout=30)
        pub2 = start_cli("bridge", "publish", a, "--key", "kill/stu",
                         *cli_args(zconf, free_port(), p_sub))
        procs.append(pub2)
        stats_until(sub, lambda st: st["publishers"] == 2
                    and st["written"] >= before["written"] + 20)
    finally:
        stop.set()
        writer.join()
    status, out, err = finish(sub)
    assert status == 128 + signal.SIGTERM and "Traceback" not in err, err
    stats = last_stats(out)
    assert stats["publishers"] == 2 and stats["gaps"] == 0 and stats["lost"] == 0, stats
    assert stats["written"] >= 40 and stats["received"] == stats["written"] + stats["repeats"]
    assert sum("new publisher" in line for line in err.splitlines()) == 1, err
    status, _, err = finish(pub2, signal.SIGINT)
    assert status == 130 and "Traceback" not in err, err


def test_truncated_and_replaced_files_recover(tmp_path: Path, running: list[Running]) -> None:
    events: list[bridge.Event] = []

    def breaks(name: str) -> list[bridge.Event]:
        return [e for e in events if e.kind in ("broken", "replaced") and name in e.message]

    a, b, sub, pub = pair(tmp_path, running, events=events)
    with Writer(a) as w:
        w.write(Student(1, "one", "m"))
        wait_until(lambda: record_of(b) == Student(1, "one", "m"), what="first record")
        os.truncate(a, 0)  # under both the Writer and the publisher's Reader
        wait_until(lambda: any(e.kind == "broken" for e in events), what="broken reported")
    with Writer(a) as w:  # a writer restarting: the file is sized and written again
        w.write(Student(2, "two", "m"))
        wait_until(lambda: record_of(b) == Student(2, "two", "m"), what="recovery")
    new = tmp_path / "new.bin"
    with Writer(new) as w:
        w.write(Student(3, "three", "f"))
    os.replace(new, a)  # a replaced publisher-side file is followed
    wait_until(lambda: record_of(b) == Student(3, "three", "f"), what="replaced A followed")
    # The subscriber side: B replaced by another file, then truncated.
    other = tmp_path / "other.bin"
    other.write_bytes(bytes(28))
    os.replace(other, b)
    wait_until(lambda: breaks("b.bin"), what="replaced B noticed")
    with Writer(a) as w:
        w.write(Student(4, "four", "m"))
        wait_until(lambda: record_of(b) == Student(4, "four", "m"), what="new B written")
        os.truncate(b, 3)
        w.write(Student(5, "five", "m"))
        wait_until(lambda: record_of(b) == Student(5, "five", "m"), what="short B rewritten")
    pub_stats, sub_stats = pub.stop(), sub.stop()
    assert sub_stats.gaps == 0 and sub_stats.publishers == 1
    assert pub_stats.reopened >= 2 and sub_stats.reopened >= 2
    # Reported once per breakage (by whichever notices first: the periodic check of the
    # path, or the Writer or Reader refusing a replaced file), not once per attempt.
    assert len(breaks("a.bin")) == 2 and len(breaks("b.bin")) == 2, events
    assert [e.kind for e in events].count("recovered") >= 4, events


def test_late_subscriber_gets_the_current_record(tmp_path: Path,
                                                 running: list[Running]) -> None:
    """A record that never changes still reaches a subscriber that joins later."""
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    with Writer(a) as w:
        w.write(Student(77, "still", "f"))
    port = free_port()
    pub = bridge.BridgePublisher(a, "late/s", config=LOOPBACK_ONLY, listen=[endpoint(port)],
                                 repeat=None)  # only a subscriber appearing triggers it
    running.append(Running(pub))
    wait_until(lambda: pub.stats.published == 1, what="the first record published")
    sub = bridge.BridgeSubscriber(b, "late/s", config=LOOPBACK_ONLY,
                                  listen=[endpoint(free_port())], connect=[endpoint(port)])
    running.append(Running(sub))
    wait_until(lambda: record_of(b) == Student(77, "still", "f"), what="the late record")
    assert running[-1].stop().repeats == 0
    assert running[-2].stop().repeated >= 1


def test_stop_from_another_thread_and_close_twice(tmp_path: Path,
                                                  running: list[Running]) -> None:
    _, _, sub, pub = pair(tmp_path, running)
    started = time.monotonic()
    pub.stop()
    sub.stop()
    assert time.monotonic() - started < 2
    pub.side.close()
    sub.side.close()


def test_count_and_timeout_end_run(tmp_path: Path) -> None:
    b = tmp_path / "b.bin"
    port = free_port()
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(bridge.subscribe(
        b, "ct/s", config=LOOPBACK_ONLY, listen=[endpoint(port)], count=3)))
    thread.start()
    a = tmp_path / "a.bin"
    with Writer(a) as w:
        w.write(Student(0, "c", "m"))
        with bridge.BridgePublisher(a, "ct/s", config=LOOPBACK_ONLY,
                                    listen=[endpoint(free_port())],
                                    connect=[endpoint(port)]) as pub:
            wait_until(lambda: pub.subscribed, what="the subscriber")
            for i in range(1, 4):
                pub.send(Student(i, "c", "m").to_bytes())
            thread.join(timeout=10)
            assert result and result[0].written == 3
            assert pub.run(timeout=0.2).published == 4  # the record at start, then idle
    assert record_of(b) == Student(3, "c", "m")


# ---- command line errors -----------------------------------------------------------


def test_without_zenoh_one_line_says_how_to_install(tmp_path: Path) -> None:
    b = tmp_path / "b.bin"
    code = ("import sys; sys.modules['zenoh'] = None; from mmapipc.cli import main;"
            f" raise SystemExit(main(['bridge', 'subscribe', {str(b)!r}, '--key', 'k']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30,
                          check=False)
    line = assert_clean_error(proc, "pip install 'mmapipc[bridge]'", "bridge subscribe")
    assert "eclipse-zenoh" in line
    assert not b.exists()


def test_without_zenoh_the_library_raises(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "zenoh", None)
    with pytest.raises(bridge.BridgeUnavailableError, match="mmapipc\\[bridge\\]"):
        bridge.BridgeSubscriber(tmp_path / "b.bin", "k")
    assert not (tmp_path / "b.bin").exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--key", "a//b"], "key 'a//b'"),
        (["--key", "k", "--listen", "bogus"], "Endpoints must be"),
        (["--key", "k", "--listen", "udpx/127.0.0.1:1"], "zenoh"),
        (["--key", "k", "--config", "/nonexistent/z.json5"], "No such file"),
        (["--key", "k", "--struct", "sensor_t"], "--struct needs --struct-file"),
    ],
)
def test_bad_bridge_options(tmp_path: Path, extra: list[str], needle: str) -> None:
    b = tmp_path / "b.bin"
    proc = run_cli("bridge", "subscribe", b, *extra, "--listen", endpoint(free_port()))
    assert_clean_error(proc, "mmapipc bridge subscribe:", needle)


def test_writer_refusals_at_start(tmp_path: Path, zconf: Path) -> None:
    longer = tmp_path / "longer.bin"
    longer.write_bytes(b"x" * 40)
    proc = run_cli("bridge", "subscribe", longer, "--key", "k", *cli_args(zconf, free_port()))
    assert_clean_error(proc, "refusing to shrink")
    assert longer.read_bytes() == b"x" * 40
    proc = run_cli("bridge", "subscribe", tmp_path, "--key", "k", *cli_args(zconf, free_port()))
    assert_clean_error(proc, "directory")
    proc = run_cli("bridge", "publish", tmp_path, "--key", "k", *cli_args(zconf, free_port()))
    assert_clean_error(proc, "mmapipc bridge publish:", "directory")
    proc = run_cli("bridge", "publish", tmp_path / "a", "--key", "k", "--mode", "router")
    assert_clean_error(proc, "invalid choice")
    assert proc.returncode == 2


def test_endpoint_in_use_is_one_line(tmp_path: Path, zconf: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("bridge", "publish", tmp_path / "a", "--key", "k",
                       *cli_args(zconf, port))
        line = assert_clean_error(proc, "mmapipc bridge publish: zenoh:", "in use")
        assert ".rs:" not in line
        proc = run_cli("bridge", "subscribe", tmp_path / "b", "--key", "k",
                       *cli_args(zconf, port))
        assert_clean_error(proc, "mmapipc bridge subscribe: zenoh:", "in use")
        assert not (tmp_path / "b").exists()  # no empty file left behind


def test_script_interrupted_closes_cleanly(tmp_path: Path) -> None:
    """bridge.subscribe() in a script: Ctrl-C unwinds through it, nothing else printed."""
    b = tmp_path / "b.bin"
    script = (
        "import sys\nfrom mmapipc import bridge\n"
        "try:\n"
        f"    bridge.subscribe({str(b)!r}, 'script/k', config={LOOPBACK_ONLY!r},\n"
        f"                     listen=[{endpoint(free_port())!r}])\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        wait_until(lambda: b.exists(), what="the subscriber to start")
        time.sleep(0.1)  # into run()
        status, out, err = finish(proc, signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (status, out, err) == (0, "interrupted\n", "")


def test_failing_event_handler_surfaces_from_run(tmp_path: Path) -> None:
    port = free_port()

    def handler(event: bridge.Event) -> None:
        raise RuntimeError(f"handler saw {event.kind}")

    with bridge.BridgeSubscriber(tmp_path / "b.bin", "fail/s", config=LOOPBACK_ONLY,
                                 listen=[endpoint(port)], on_event=handler) as sub:
        cfg = bridge.zenoh_config(LOOPBACK_ONLY, listen=[endpoint(free_port())],
                                  connect=[endpoint(port)])
        with zenoh.open(cfg) as session:
            raw = session.declare_publisher("fail/s")
            wait_until(lambda: raw.matching_status.matching, what="the subscriber")
            raw.put(b"junk")
            with pytest.raises(RuntimeError, match="handler saw malformed"):
                sub.run(timeout=10)
