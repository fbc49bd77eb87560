"""Bridge one record between hosts over Zenoh: a file watched on one side, written on the other.

The publisher watches a record file as ``Reader.watch`` does and publishes every change;
the subscriber stores each record it receives with a ``Writer``, so unchanged C programs
on two hosts exchange records as if they shared the file.  Each message is a fixed header
(magic, version, layout fingerprint, publisher id, sequence number, publisher time)
followed by the record's bytes; see docs/bridge.md.

This module never prints: it reports what happens through ``on_event`` callbacks, stats
objects and exceptions.  Zenoh (``pip install 'mmapipc[bridge]'``) is imported on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Union, cast

from mmapipc._base import MmapipcError
from mmapipc.errors import FileTooShortError, PathLike
from mmapipc.layout import Layout
from mmapipc.mapping import Reader, Writer
from mmapipc.record import STUDENT, Codec

if TYPE_CHECKING:
    import zenoh

INSTALL_HINT = "pip install 'mmapipc[bridge]'"

MAGIC = b"MMPB"
VERSION = 1
# magic, version, flags, header size, record size, fingerprint, publisher id, seq, time ns
HEADER = struct.Struct("<4sBBHI16sQQQ")
FINGERPRINT_SIZE = 16
# A flag: the record was sent before under the same sequence number, for subscribers that
# joined since (sent when a subscriber appears, and after REPEAT seconds without a change).
FLAG_REPEAT = 1

# How long a wait stays in C or on the queue before stop flags and stat checks run (s).
SLICE = 0.05
# How often each side checks that its path still names the file it has mapped (s).
REPLACE_CHECK = 0.1
# How often a side whose file is missing or unusable tries again (s).
RETRY = 0.05
# How long a publisher waits without a change before it sends the record again (s).
REPEAT = 1.0
# How many publishers' sequence numbers a subscriber remembers.
PUBLISHERS_KEPT = 16
# How many recent latencies (receive time - publisher time) the subscriber keeps.
AGES_KEPT = 1000

ConfigLike = Union[PathLike, "zenoh.Config", Mapping[str, Any], None]
EventHandler = Callable[["Event"], None]


class BridgeError(MmapipcError, RuntimeError):
    """Zenoh refused the configuration, a key or an endpoint; the message is one line."""


class BridgeUnavailableError(MmapipcError, ImportError):
    """eclipse-zenoh is not installed."""


@dataclass(frozen=True)
class Event:
    """Something a long-running side should tell its user about, once.

    kind is one of: waiting, broken, recovered, replaced, publisher, refused, malformed.
    """

    kind: str
    message: str


@dataclass
class PublishStats:
    """What a publisher did so far."""

    published: int = 0
    repeated: int = 0
    reopened: int = 0


@dataclass
class SubscribeStats:
    """What a subscriber did so far.

    gaps counts jumps in one publisher's sequence and lost the records they skipped;
    a publisher that restarts begins a new sequence (counted in publishers), not a gap.
    age_p50_us/age_p99_us are receive time minus publisher time over recent records
    (meaningful across hosts only with synchronised clocks).
    """

    received: int = 0
    written: int = 0
    gaps: int = 0
    lost: int = 0
    stale: int = 0
    repeats: int = 0
    refused: int = 0
    malformed: int = 0
    publishers: int = 0
    reopened: int = 0
    age_p50_us: float | None = None
    age_p99_us: float | None = None
    _ages: deque[int] = field(default_factory=lambda: deque(maxlen=AGES_KEPT), repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The counters, with the latency percentiles brought up to date."""
        self._percentiles()
        data = asdict(self)
        del data["_ages"]
        return data

    def _percentiles(self) -> None:
        if not self._ages:
            return
        ages = sorted(self._ages)
        self.age_p50_us = ages[len(ages) // 2] / 1000
        self.age_p99_us = ages[min(len(ages) - 1, (len(ages) * 99) // 100)] / 1000


def _zenoh() -> Any:
    """The zenoh module, or BridgeUnavailableError saying how to install it."""
    try:
        import zenoh
    except ImportError:
        raise BridgeUnavailableError(
            f"the bridge needs eclipse-zenoh: {INSTALL_HINT}") from None
    return zenoh


_LOCATION = re.compile(r"\s+at \S+\.rs:\d+\.?")
_JSON5_MSG = re.compile(r'msg: "((?:[^"\\]|\\.)*)"')


def _zmessage(exc: BaseException) -> str:
    """A Zenoh error as one line, without its Rust source location."""
    text = " ".join(str(exc).split())
    inner = _JSON5_MSG.search(text)
    if inner:
        text = inner.group(1)
    return _LOCATION.sub("", text).rstrip(". ") or type(exc).__name__


# ---- layout fingerprint -----------------------------------------------------------


def layout_description(codec: Codec[Any] | None = None) -> str:
    """The layout a record's bytes depend on, as text: byte order, size, alignment, then
    every member holding bytes as offset:size:C type.  Member names play no part."""
    codec = STUDENT if codec is None else codec
    if isinstance(codec, Layout):
        members = [(f.offset, f.size, f.ctype) for f in codec.leaves]
        size, align = codec.size, codec.align
    elif codec is STUDENT:
        size, align, members = _cffi_view("struct STU")
    else:
        raise TypeError(f"no layout fingerprint for {type(codec).__name__}: pass a Layout")
    parts = [f"order={sys.byteorder}", f"size={size}", f"align={align}"]
    parts += [f"{off}:{length}:{ctype}" for off, length, ctype in members]
    return ";".join(parts)


def _cffi_view(cname: str) -> tuple[int, int, list[tuple[int, int, str]]]:
    """Size, alignment and leaf members of a struct the compiled core declares."""
    from mmapipc._ffi import ffi

    members: list[tuple[int, int, str]] = []

    def visit(ctype: Any, base: int) -> None:
        for _name, fld in ctype.fields:
            if fld.type.kind == "struct":
                visit(fld.type, base + fld.offset)
            else:
                members.append((base + fld.offset, int(ffi.sizeof(fld.type)), fld.type.cname))

    top = ffi.typeof(cname)
    visit(top, 0)
    return int(ffi.sizeof(top)), int(ffi.alignof(top)), members


def layout_fingerprint(codec: Codec[Any] | None = None) -> bytes:
    """16 bytes of sha256 over layout_description: equal exactly when layouts agree."""
    digest = hashlib.sha256(layout_description(codec).encode()).digest()
    return digest[:FINGERPRINT_SIZE]


# ---- messages ---------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One decoded bridge message."""

    fingerprint: bytes
    publisher: int
    seq: int
    time_ns: int
    record: bytes
    flags: int = 0


def pack_message(fingerprint: bytes, publisher: int, seq: int, time_ns: int,
                 record: bytes, flags: int = 0) -> bytes:
    """Header then record bytes, little-endian, as docs/bridge.md describes."""
    head = HEADER.pack(MAGIC, VERSION, flags, HEADER.size, len(record), fingerprint,
                       publisher, seq, time_ns)
    return head + record


def unpack_message(data: bytes) -> Message:
    """A message's fields; ValueError if it is not a bridge message of this version."""
    if len(data) < HEADER.size or data[:4] != MAGIC:
        raise ValueError("not a bridge message")
    _magic, version, flags, head, size, fingerprint, publisher, seq, time_ns = \
        HEADER.unpack_from(data)
    if version != VERSION:
        raise ValueError(f"bridge message version {version}, this side speaks {VERSION}")
    if head < HEADER.size or len(data) != head + size:
        raise ValueError(f"bridge message of {len(data)} bytes does not match its header")
    return Message(fingerprint, publisher, seq, time_ns, data[head:head + size], flags)


# ---- zenoh configuration ----------------------------------------------------------


def zenoh_config(config: ConfigLike = None, *, mode: str | None = None,
                 listen: Iterable[str] = (), connect: Iterable[str] = ()) -> Any:
    """A zenoh.Config from a JSON5 file path, a zenoh.Config, or a mapping of config keys
    ("scouting/multicast/enabled") to values; mode, listen and connect override it."""
    z = _zenoh()
    try:
        if config is None:
            cfg = z.Config()
        elif isinstance(config, z.Config):
            cfg = config
        elif isinstance(config, Mapping):
            cfg = z.Config()
            for key, value in config.items():
                cfg.insert_json5(key, json.dumps(value))
        else:
            path = os.fspath(cast("PathLike", config))
            with open(path, "rb"):  # a missing or unreadable file as the OSError it is
                pass
            cfg = z.Config.from_file(path)
        if mode is not None:
            cfg.insert_json5("mode", json.dumps(mode))
        listen, connect = list(listen), list(connect)
        if listen:
            cfg.insert_json5("listen/endpoints", json.dumps(listen))
        if connect:
            cfg.insert_json5("connect/endpoints", json.dumps(connect))
    except z.ZError as e:
        raise BridgeError(f"zenoh configuration: {_zmessage(e)}") from None
    return cfg


def _session(config: ConfigLike, mode: str | None, listen: Iterable[str],
             connect: Iterable[str]) -> Any:
    z = _zenoh()
    cfg = zenoh_config(config, mode=mode, listen=listen, connect=connect)
    try:
        return z.open(cfg)
    except z.ZError as e:
        raise BridgeError(f"zenoh: {_zmessage(e)}") from None


def _key(key: str) -> Any:
    z = _zenoh()
    try:
        return z.KeyExpr(key)
    except z.ZError as e:
        raise BridgeError(f"key {key!r}: {_zmessage(e)}") from None


def describe(exc: BaseException) -> str:
    """An exception as one line: 'path: reason' for file errors."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of what path names now, or None if nothing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class _Side:
    """What both sides share: a Zenoh session, events, a stop flag and closing."""

    def __init__(self, path: PathLike, key: str, layout: Codec[Any] | None,
                 config: ConfigLike, mode: str | None, listen: Iterable[str],
                 connect: Iterable[str], on_event: EventHandler | None) -> None:
        if isinstance(path, bytes):
            raise TypeError("path must be str or os.PathLike[str], not bytes")
        self.path = os.fspath(path)
        self.key = key
        self.codec: Codec[Any] = STUDENT if layout is None else layout
        self.fingerprint = layout_fingerprint(self.codec)
        self._on_event = on_event
        self._stop = threading.Event()
        self._keyexpr = _key(key)
        self._session: Any = _session(config, mode, listen, connect)

    def _declare(self, declare: Callable[[], Any]) -> Any:
        """A Zenoh declaration; on failure the session is closed and BridgeError raised."""
        z = _zenoh()
        try:
            return declare()
        except z.ZError as e:
            self.close()
            raise BridgeError(f"key {self.key!r}: {_zmessage(e)}") from None

    def _event(self, kind: str, message: str) -> None:
        if self._on_event is not None:
            self._on_event(Event(kind, message))

    def stop(self) -> None:
        """Make run() return at its next wake-up (at most SLICE seconds); any thread."""
        self._stop.set()

    def close(self) -> None:
        """Undeclare and close the Zenoh session; calling it again does nothing."""
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            try:
                session.close()
            except Exception:
                pass


def _ticker(on_tick: Callable[[], None] | None, every: float) -> Callable[[], None]:
    """A function to call often that calls on_tick every `every` seconds."""
    if on_tick is None:
        return lambda: None
    state = [time.monotonic() + every]

    def tick() -> None:
        now = time.monotonic()
        if now >= state[0]:
            state[0] = now + every
            on_tick()

    return tick


class BridgePublisher(_Side):
    """Watches the record in path and publishes every change to key.

    The file may be missing at first, truncated or replaced later: each is reported once
    through on_event and the publisher carries on when the file holds a record again.
    """

    def __init__(self, path: PathLike, key: str, *, layout: Codec[Any] | None = None,
                 config: ConfigLike = None, mode: str | None = None,
                 listen: Iterable[str] = (), connect: Iterable[str] = (),
                 on_event: EventHandler | None = None, repeat: float | None = REPEAT) -> None:
        if repeat is not None and not repeat > 0:
            raise ValueError(f"repeat must be a number of seconds > 0 or None, got {repeat}")
        super().__init__(path, key, layout, config, mode, listen, connect, on_event)
        self._repeat_after = repeat
        # Congestion control stays DROP (Zenoh's default) so that a stalled network never
        # blocks the watch; drops show as gaps.  Not express: a message goes out at once
        # when the link is idle, and batching behind a busy link makes drops rarer.
        self._publisher = self._declare(lambda: self._session.declare_publisher(self._keyexpr))
        self.publisher_id = secrets.randbits(64) or 1
        self.stats = PublishStats()
        self._seq = 0
        self._last: bytes | None = None
        self._sent_at = 0.0
        # A subscriber appearing gets the current record at once, not at the next change.
        self._joined = threading.Event()
        self._listener = self._declare(
            lambda: self._publisher.declare_matching_listener(self._on_matching))

    def _on_matching(self, status: Any) -> None:
        """Zenoh's callback (its own thread): note that a subscriber appeared."""
        if status.matching:
            self._joined.set()

    def repeat(self) -> bool:
        """Send the last record again under its sequence number, flagged as a repeat, for
        subscribers that joined since; False if nothing was sent yet."""
        if self._last is None:
            return False
        self._publisher.put(pack_message(self.fingerprint, self.publisher_id, self._seq,
                                         time.time_ns(), self._last, FLAG_REPEAT))
        self._sent_at = time.monotonic()
        self.stats.repeated += 1
        return True

    @property
    def subscribed(self) -> bool:
        """Whether a subscriber of the key is known to this publisher's network."""
        return bool(self._publisher.matching_status.matching)

    def send(self, record: bytes) -> int:
        """Publish record bytes as the next message; returns its sequence number."""
        if len(record) != self.codec.size:
            raise ValueError(f"a record is {self.codec.size} bytes, got {len(record)}")
        self._seq += 1
        self._publisher.put(pack_message(self.fingerprint, self.publisher_id, self._seq,
                                         time.time_ns(), record))
        self._last = record
        self._sent_at = time.monotonic()
        self.stats.published += 1
        return self._seq

    def _open(self, reported: list[str], first: bool
              ) -> tuple[Reader[Any], tuple[int, int] | None] | None:
        before = _identity(self.path)
        try:
            reader: Reader[Any] = Reader(self.path, layout=self.codec)
        except OSError as e:
            if first and not isinstance(e, (FileNotFoundError, FileTooShortError)):
                raise  # a directory, no permission...: refused at start, not waited for
            if not reported:
                reported.append(describe(e))
                self._event("waiting", f"{describe(e)}; waiting for a record")
            return None
        ident = _identity(self.path)
        if ident != before:  # replaced while opening: open again next time round
            reader.close()
            return None
        return reader, ident

    def run(self, *, count: int | None = None, timeout: float | None = None,
            on_tick: Callable[[], None] | None = None, tick: float = 1.0) -> PublishStats:
        """Publish the record, then each change, until stop(), count records or timeout
        seconds without a change; on_tick is called every tick seconds."""
        self._stop.clear()
        ticker = _ticker(on_tick, tick)
        reader: Reader[Any] | None = None
        ident: tuple[int, int] | None = None
        reported: list[str] = []
        had_reader = False
        idle_since = time.monotonic()
        next_check = 0.0
        try:
            while not self._stop.is_set() and (count is None or self.stats.published < count):
                ticker()
                now = time.monotonic()
                if timeout is not None and now - idle_since >= timeout:
                    break
                if reader is None:
                    opened = self._open(reported, first=not had_reader)
                    if opened is None:
                        self._stop.wait(RETRY)
                        continue
                    reader, ident = opened
                    if reported or had_reader:
                        self.stats.reopened += had_reader
                        self._event("recovered", f"{self.path}: publishing again")
                    reported.clear()
                    had_reader = True
                    self.send(reader.read_bytes())
                    idle_since = time.monotonic()
                    continue
                if self._joined.is_set() or (
                        self._repeat_after is not None
                        and now - self._sent_at >= self._repeat_after):
                    self._joined.clear()
                    self.repeat()
                try:
                    if now >= next_check:
                        next_check = now + REPLACE_CHECK
                        if _identity(self.path) != ident:
                            raise FileNotFoundError(2, "file was replaced or removed",
                                                    self.path)
                    reader.wait_for_change(SLICE)
                    self.send(reader.read_bytes())
                    idle_since = time.monotonic()
                except TimeoutError:
                    continue
                except OSError as e:
                    reader.close()
                    reader = None
                    reported.append(describe(e))
                    self._event("broken", f"{describe(e)}; waiting for a record")
        finally:
            if reader is not None:
                reader.close()
        return self.stats


class BridgeSubscriber(_Side):
    """Receives records on key and stores each one in path with a Writer, as it arrives
    (in Zenoh's callback thread: on_event may be called from there too).

    The Writer is opened at once (creating the file, with every refusal a Writer has).
    Records of another layout are refused (reported once per layout); gaps in a
    publisher's sequence are counted; a truncated, removed or replaced file is reported
    once and written again as soon as a Writer can open it.
    """

    def __init__(self, path: PathLike, key: str, *, layout: Codec[Any] | None = None,
                 force: bool = False, follow_symlinks: bool = False,
                 config: ConfigLike = None, mode: str | None = None,
                 listen: Iterable[str] = (), connect: Iterable[str] = (),
                 on_event: EventHandler | None = None) -> None:
        if isinstance(path, bytes):
            raise TypeError("path must be str or os.PathLike[str], not bytes")
        _key(key)  # zenoh present and the key valid, before the file is created
        self._force = force
        self._follow = follow_symlinks
        codec = STUDENT if layout is None else layout
        created = not os.path.lexists(path)
        self._writer: Writer[Any] | None = Writer(path, layout=codec, force=force,
                                                  follow_symlinks=follow_symlinks)
        self._ident = _identity(os.fspath(path))
        try:
            super().__init__(path, key, layout, config, mode, listen, connect, on_event)
        except BaseException:
            self._writer.close()
            if created and _identity(os.fspath(path)) == self._ident:
                os.unlink(path)  # Zenoh refused: leave no empty file behind
            raise
        self.stats = SubscribeStats()
        self._seqs: dict[int, int] = {}  # publisher id -> last sequence number
        self._publisher: int | None = None  # the latest one heard
        self._several = False
        self._refused: set[bytes] = set()
        self._malformed = False
        self._broken = False
        self._pending: bytes | None = None
        # Records are written in Zenoh's callback, as they arrive; run() waits on this
        # condition, checks the file and reports.  Everything below is guarded by it.
        self._cond = threading.Condition()
        self._closed = False
        self._arrived = time.monotonic()
        self._failure: BaseException | None = None
        self._subscriber = self._declare(
            lambda: self._session.declare_subscriber(self._keyexpr, self._receive))

    def _receive(self, sample: Any) -> None:
        """Zenoh's callback (its own thread): check the message and write its record."""
        data = sample.payload.to_bytes()
        with self._cond:
            if self._closed:
                return
            try:
                record = self._accept(data)
                if record is not None:
                    self._store(record)
            except BaseException as e:  # an on_event that raised: run() raises it
                self._failure = e
            self._arrived = time.monotonic()
            self._cond.notify_all()

    def close(self) -> None:
        """Close the Zenoh session, then the Writer; calling it again does nothing."""
        cond = getattr(self, "_cond", None)
        if cond is not None:
            with cond:
                self._closed = True
        super().close()  # not under the lock: closing waits for a running callback
        writer, self._writer = getattr(self, "_writer", None), None
        if writer is not None:
            writer.close()

    def _accept(self, data: bytes) -> bytes | None:
        """The record bytes of a message to write, or None (refused, stale, malformed)."""
        stats = self.stats
        stats.received += 1
        try:
            msg = unpack_message(data)
        except ValueError as e:
            stats.malformed += 1
            if not self._malformed:
                self._malformed = True
                self._event("malformed", f"{self.key}: {e}; ignoring such messages")
            return None
        if msg.fingerprint != self.fingerprint or len(msg.record) != self.codec.size:
            stats.refused += 1
            if msg.fingerprint not in self._refused:
                self._refused.add(msg.fingerprint)
                self._event(
                    "refused",
                    f"{self.key}: refusing records of another layout ({len(msg.record)}"
                    f" bytes, fingerprint {msg.fingerprint.hex()}; this side has"
                    f" {self.codec.size} bytes, fingerprint {self.fingerprint.hex()})")
            return None
        last = self._seqs.pop(msg.publisher, None)
        if last is None:
            if self._seqs:
                self._event("publisher", f"{self.key}: a new publisher (restarted?);"
                                         f" its sequence starts at {msg.seq}")
            stats.publishers += 1
        elif msg.publisher != self._publisher and not self._several:
            self._several = True
            self._event("publisher", f"{self.key}: records from several publishers at"
                                     " once; each is written as it comes")
        if last is not None and msg.seq <= last:
            self._seqs[msg.publisher] = last
            if msg.flags & FLAG_REPEAT:
                stats.repeats += 1
            else:
                stats.stale += 1
            return None
        if last is not None and msg.seq > last + 1:
            stats.gaps += 1
            stats.lost += msg.seq - last - 1
        self._seqs[msg.publisher] = msg.seq  # most recent last
        while len(self._seqs) > PUBLISHERS_KEPT:
            del self._seqs[next(iter(self._seqs))]
        self._publisher = msg.publisher
        stats._ages.append(time.time_ns() - msg.time_ns)
        return msg.record

    def _store(self, record: bytes) -> None:
        """Write the record, reopening the Writer after a failure (reported once)."""
        if self._writer is None:
            try:
                self._writer = Writer(self.path, layout=self.codec, force=self._force,
                                      follow_symlinks=self._follow)
            except OSError as e:
                self._pending = record
                self._report_broken(e)
                return
            self._ident = _identity(self.path)
            self.stats.reopened += 1
        try:
            self._writer.write_bytes(record)
        except OSError as e:
            self._drop_writer()
            self._pending = record
            self._report_broken(e)
            return
        self._pending = None
        self.stats.written += 1
        if self._broken:
            self._broken = False
            self._event("recovered", f"{self.path}: writing again")

    def _report_broken(self, exc: OSError) -> None:
        if not self._broken:
            self._broken = True
            self._event("broken", f"{describe(exc)}; will write again when it can")

    def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _check_file(self) -> None:
        """Reopen the Writer if path no longer names the file it maps."""
        if self._writer is not None and _identity(self.path) != self._ident:
            self._drop_writer()
            if not self._broken:
                self._broken = True
                self._event("replaced", f"{self.path}: file was replaced or removed;"
                                        " writing to the new one")

    def run(self, *, count: int | None = None, timeout: float | None = None,
            on_tick: Callable[[], None] | None = None, tick: float = 1.0) -> SubscribeStats:
        """Wait while records are written (as they arrive) until stop(), count records
        written in all or timeout seconds without a message; on_tick is called every tick
        seconds.  Meanwhile, check that the file is still the one written to."""
        self._stop.clear()
        ticker = _ticker(on_tick, tick)
        next_check = 0.0
        with self._cond:
            self._arrived = time.monotonic()
            while not self._stop.is_set() and (count is None or self.stats.written < count):
                if self._failure is not None:
                    failure, self._failure = self._failure, None
                    raise failure
                if self._closed:
                    raise ValueError("run() on a closed BridgeSubscriber")
                ticker()
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + REPLACE_CHECK
                    self._check_file()
                    if self._pending is not None:
                        self._store(self._pending)
                if timeout is not None and now - self._arrived >= timeout:
                    break
                self._cond.wait(SLICE)
        self.stats._percentiles()
        return self.stats


def publish(path: PathLike, key: str, *, layout: Codec[Any] | None = None,
            config: ConfigLike = None, mode: str | None = None,
            listen: Iterable[str] = (), connect: Iterable[str] = (),
            on_event: EventHandler | None = None, count: int | None = None,
            timeout: float | None = None) -> PublishStats:
    """Publish the record in path to key until count records, timeout idle seconds or
    KeyboardInterrupt; the session is closed on the way out.  Returns the stats."""
    with BridgePublisher(path, key, layout=layout, config=config, mode=mode, listen=listen,
                         connect=connect, on_event=on_event) as pub:
        stats: PublishStats = pub.run(count=count, timeout=timeout)
        return stats


def subscribe(path: PathLike, key: str, *, layout: Codec[Any] | None = None,
              force: bool = False, follow_symlinks: bool = False,
              config: ConfigLike = None, mode: str | None = None,
              listen: Iterable[str] = (), connect: Iterable[str] = (),
              on_event: EventHandler | None = None, count: int | None = None,
              timeout: float | None = None) -> SubscribeStats:
    """Write records received on key into path until count records, timeout idle seconds
    or KeyboardInterrupt; the session and Writer are closed on the way out."""
    with BridgeSubscriber(path, key, layout=layout, force=force,
                          follow_symlinks=follow_symlinks, config=config, mode=mode,
                          listen=listen, connect=connect, on_event=on_event) as sub:
        result: SubscribeStats = sub.run(count=count, timeout=timeout)
        return result
