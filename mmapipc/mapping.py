"""Writer and Reader: one record of a file mapped with MAP_SHARED, copied in and out whole.

Every copy runs in the C core under a SIGBUS guard, so a truncated file raises
FileTooShortError instead of killing the process.  A Writer keeps a sequence lock in
the record's padding; a Reader uses it to never return a torn record.  Both are safe to
share between threads: the C channel serialises the calls that touch the mapping, and
close() from any thread waits for the copy in progress (a wait in progress ends with
ValueError).
"""

from __future__ import annotations

import errno
import faulthandler
import math
import os
import threading
import time
import weakref
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar, cast, overload

from mmapipc._ffi import ffi, lib
from mmapipc.errors import FileTooShortError, PathLike, SymlinkError, core_error
from mmapipc.record import STUDENT, Codec, Student

T = TypeVar("T")

# The watching contract (seconds): while the record changed within IDLE_AFTER, a wait
# looks at it at least every MAX_GAP, so every change that stays that long is seen;
# after a longer silence it looks every IDLE_GAP.
MAX_GAP = 1e-3
IDLE_GAP = 10e-3
IDLE_AFTER = 0.2
# How long a reader waits on a writer whose sequence stays odd without moving before it
# reads by agreement (a writer that died mid-store).
STUCK_WAIT = 0.25
# How often a writer and a reader ask the file itself whether it was truncated, and the
# path whether it still names the file (an fstat and a stat).
SIZE_CHECK = 0.01
# How long a reader tries for a stable copy before giving up.
UNSTABLE_WAIT = 1.0
# How often Reader(wait=True) looks for its file.
OPEN_POLL = 0.01
# The longest a wait stays in C before Python can run signal handlers, when other
# threads could take a signal (Ctrl-C) meant for it.  Alone in its process, a wait takes
# the signal itself (the sleep ends with EINTR) and stays in C until a change, its timeout
# or a signal.
WAIT_SLICE = 0.05
# The longest any duration argument may be (a year): beyond, a typo.
LONGEST = 365 * 86400.0
# The shortest gap a wait can keep (the clock's resolution is finer, a wake-up is not).
SHORTEST_GAP = 1e-6
# The largest record mapped (1 TiB): beyond, not a struct.
MAX_RECORD = 1 << 40

_WAIT_SLICE_NS = int(WAIT_SLICE * 1e9)
_WAIT_ALONE_NS = int(LONGEST * 1e9)
_ETIMEDOUT = lib.MMAPIPC_ETIMEDOUT
_wait = lib.mmapipc_wait
_DUE = lib.MMAPIPC_DUE
_SPUN = lib.MMAPIPC_SPUN
_RESUME = lib.MMAPIPC_WAIT_RESUME
_READY = lib.MMAPIPC_WAIT_READY
_HOLD = lib.MMAPIPC_WAIT_SIGNALS
_EINTR = lib.MMAPIPC_EINTR


def install_fault_guard() -> None:
    """Put mmapipc's SIGBUS handler first in the chain (the previous one is chained to).

    Called on every open, and by faulthandler.enable()/disable() (wrapped at import so
    that no guarded copy can fault while the chain changes).  Call it yourself after
    installing another SIGBUS handler while mappings are open.
    """
    if lib.mmapipc_guard_install() != 0:
        raise core_error(lib.MMAPIPC_EOS, None, 0)


_installed = threading.Event()


def _guard_faulthandler() -> None:
    """Wrap faulthandler.enable/disable: hold guarded copies while the SIGBUS chain
    changes, then put our handler back in front (once one was installed)."""
    for name in ("enable", "disable"):
        original = getattr(faulthandler, name)
        if getattr(original, "_mmapipc_guarded", False):
            continue

        def guarded(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if not _installed.is_set():
                return _original(*args, **kwargs)
            lib.mmapipc_guard_pause()
            try:
                return _original(*args, **kwargs)
            finally:
                lib.mmapipc_guard_resume()

        guarded.__name__ = original.__name__
        guarded.__qualname__ = original.__qualname__
        guarded.__doc__ = original.__doc__
        guarded._mmapipc_guarded = True  # type: ignore[attr-defined]
        setattr(faulthandler, name, guarded)


_guard_faulthandler()


def seconds(value: float | None, what: str, *, none_ok: bool = True) -> float | None:
    """A duration argument checked: a finite number >= 0 and at most LONGEST (inf means
    none where none is allowed); ValueError with one line otherwise."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:
        value = math.nan  # an int too large for a float: refused below
    if math.isinf(value) and value > 0 and none_ok:
        return None
    if not 0 <= value <= LONGEST:
        raise ValueError(f"{what} must be a number of seconds from 0 to {LONGEST:g},"
                         f" got {value!r}")
    return float(value)


def _alone() -> bool:
    """Whether this process has a single thread, so that a signal interrupts its wait."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _ns(value: float) -> int:
    return int(value * 1e9)


def _check_lock_offsets(codec: Codec[Any]) -> tuple[int, int]:
    """The codec's (marker, seq) offsets, or (-1, -1); ValueError if they cannot hold the
    lock: out of the record, the sequence not 2-aligned, overlapping, or outside padding."""
    if not codec.lock_offsets:
        return -1, -1
    marker, seq = codec.lock_offsets
    size = codec.size
    bad = (not 0 <= marker < size or not 0 <= seq <= size - 2 or seq % 2
           or marker in (seq, seq + 1))
    padding = getattr(codec, "padding", None)
    if padding is not None and not all(0 <= off and 0 < n and off + n <= size
                                       for off, n in padding):
        raise ValueError(f"padding {padding!r} does not lie inside the {size}-byte record")
    if not bad and padding is not None:
        bad = not all(any(off <= b < off + n for off, n in padding)
                      for b in (marker, seq, seq + 1))
    if bad:
        raise ValueError(f"lock offsets (marker {marker}, sequence {seq}) do not fit in the"
                         f" padding of a {size}-byte record")
    return marker, seq


# Every live Reader, so that a child of fork() can make their locks anew.
_readers: weakref.WeakSet[Reader[Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """In a child of fork() only the forking thread runs: a Reader's lock that another
    thread of the parent held at the fork would never be let go, and the child's first
    read() would hang.  Make each anew (the C channel does the same with its mutex)."""
    for reader in list(_readers):
        reader._lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Mapping(Generic[T]):
    """What Writer and Reader share: the C channel and closing."""

    _kind = "mapping"

    def __init__(self, path: PathLike, codec: Codec[T], *, lock: bool = True) -> None:
        if isinstance(path, bytes):
            raise TypeError("path must be str or os.PathLike[str], not bytes")
        self.path: str = os.fspath(path)
        if not self.path:
            raise FileNotFoundError(errno.ENOENT, "empty path", self.path)
        if "\0" in self.path:
            raise ValueError(f"path contains a NUL byte: {self.path!r}")
        self.codec = codec
        self._size = codec.size
        if isinstance(self._size, bool) or not isinstance(self._size, int):
            raise TypeError(f"a codec's size must be an int, not {type(self._size).__name__}")
        if not 0 < self._size <= MAX_RECORD:
            raise ValueError(f"a record must be 1 to {MAX_RECORD} bytes, got {self._size}")
        marker, seq = _check_lock_offsets(codec) if lock else (-1, -1)
        ch = lib.mmapipc_new(self._size, marker, seq)
        if ch == ffi.NULL:
            raise ValueError(f"cannot map a {self._size}-byte record: {os.strerror(ffi.errno)}")
        self._ch = ffi.gc(ch, lib.mmapipc_free)
        lib.mmapipc_set_limits(self._ch, _ns(STUCK_WAIT), _ns(UNSTABLE_WAIT), _ns(SIZE_CHECK))
        self._closed = False

    def _open(self, flags: int) -> None:
        install_fault_guard()
        _installed.set()
        # The path as it names the file now: a later chdir must not change what it names.
        # Not normalised: "link/../f" must name what the kernel names.
        where = self.path if self.path.startswith("/") else os.path.join(os.getcwd(), self.path)
        rc = lib.mmapipc_open(self._ch, os.fsencode(where), flags)
        if rc != 0:
            raise self._error(rc)

    def _error(self, rc: int) -> Exception:
        if rc == lib.MMAPIPC_EOS and ffi.errno == errno.EBADF and self._closed:
            return ValueError(f"I/O operation on a closed {self._kind}")
        return core_error(rc, self.path, self._size, self._stats().file_size)

    def _stats(self) -> Any:
        st = ffi.new("struct mmapipc_stats *")
        lib.mmapipc_get_stats(self._ch, st)
        return st

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Unmap the record; calling it again does nothing.  Safe from any thread: a copy
        in progress finishes first, a wait in progress ends with ValueError."""
        self._closed = True
        if lib.mmapipc_close(self._ch) != 0:
            raise core_error(lib.MMAPIPC_EOS, self.path, self._size)

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self.path!r} {state}>"


class Writer(_Mapping[T]):
    """Maps path for writing as mmap_w does (created 0664 & ~umask, sized to one record).

    Refuses to shrink a longer file, to write a file with other hard links or someone
    else's file in a sticky world-writable directory unless force; to open a symlink as the
    last component unless follow_symlinks, and, at any component, one planted in a sticky
    world-writable directory by another user.  seqlock=False stores plain whole records.
    notify (with the seq lock) wakes the Readers waiting on the record after each store.
    """

    _kind = "Writer"

    @overload
    def __init__(
        self: Writer[Student],
        path: PathLike,
        *,
        force: bool = ...,
        follow_symlinks: bool = ...,
        seqlock: bool = ...,
        notify: bool = ...,
        layout: None = ...,
    ) -> None: ...

    @overload
    def __init__(
        self,
        path: PathLike,
        *,
        force: bool = ...,
        follow_symlinks: bool = ...,
        seqlock: bool = ...,
        notify: bool = ...,
        layout: Codec[T],
    ) -> None: ...

    def __init__(
        self,
        path: PathLike,
        *,
        force: bool = False,
        follow_symlinks: bool = False,
        seqlock: bool = True,
        notify: bool = True,
        layout: Codec[Any] | None = None,
    ) -> None:
        super().__init__(path, cast(Codec[T], layout or STUDENT), lock=seqlock)
        self._encode = self.codec.encode
        self._store = lib.mmapipc_store
        flags = lib.MMAPIPC_WRITE
        if follow_symlinks:
            flags |= lib.MMAPIPC_FOLLOW_SYMLINKS
        if force:
            flags |= lib.MMAPIPC_FORCE
        if notify:
            flags |= lib.MMAPIPC_NOTIFY
        try:
            self._open(flags)
        except OSError as e:
            if e.errno == errno.ELOOP and not follow_symlinks and os.path.islink(self.path):
                raise SymlinkError(
                    e.errno,
                    "is a symlink; not followed unless follow_symlinks=True (--follow-symlinks)",
                    self.path,
                ) from None
            raise

    def write(self, record: T) -> None:
        """Store the whole record in one guarded copy (under the seq lock)."""
        data = self._encode(record)
        if type(data) is not bytes:  # a subclass could lie about its length
            data = bytes(data)
        if len(data) != self._size:
            raise ValueError(f"a record is {self._size} bytes, got {len(data)}")
        rc = self._store(self._ch, data)
        if rc:
            raise self._error(rc)

    def write_bytes(self, data: bytes) -> None:
        """Store raw record bytes (exactly the record size)."""
        data = bytes(data)
        if len(data) != self._size:
            raise ValueError(f"a record is {self._size} bytes, got {len(data)}")
        rc = self._store(self._ch, data)
        if rc != 0:
            raise self._error(rc)

    def flush(self) -> None:
        """msync the record, so it survives a machine crash."""
        rc = lib.mmapipc_sync(self._ch)
        if rc != 0:
            raise self._error(rc)

    def __enter__(self) -> Writer[T]:
        return self


class Reader(_Mapping[T]):
    """Maps path read-only as mmap_r does; read() never returns a torn record from a Writer.

    wait=True waits (up to wait_timeout seconds) for the file to exist and hold a record.
    The waits (wait_for_change, watch) look at the record at least every max_gap seconds
    while it changed within the last idle_after seconds, so that every change that stays
    that long is seen, and every idle_gap seconds after a longer silence.  predict looks
    more closely when a regular writer is due; busy spins on a core instead of sleeping.
    follow reopens the path when it names a new file (as tail -F does); follow=False
    raises FileReplacedError instead.
    """

    _kind = "Reader"

    @overload
    def __init__(
        self: Reader[Student],
        path: PathLike,
        *,
        wait: bool = ...,
        wait_timeout: float | None = ...,
        layout: None = ...,
        max_gap: float = ...,
        idle_gap: float = ...,
        idle_after: float = ...,
        busy: bool = ...,
        predict: bool = ...,
        follow: bool = ...,
    ) -> None: ...

    @overload
    def __init__(
        self,
        path: PathLike,
        *,
        wait: bool = ...,
        wait_timeout: float | None = ...,
        layout: Codec[T],
        max_gap: float = ...,
        idle_gap: float = ...,
        idle_after: float = ...,
        busy: bool = ...,
        predict: bool = ...,
        follow: bool = ...,
    ) -> None: ...

    def __init__(
        self,
        path: PathLike,
        *,
        wait: bool = False,
        wait_timeout: float | None = None,
        layout: Codec[Any] | None = None,
        max_gap: float = MAX_GAP,
        idle_gap: float = IDLE_GAP,
        idle_after: float = IDLE_AFTER,
        busy: bool = False,
        predict: bool = True,
        follow: bool = True,
    ) -> None:
        super().__init__(path, cast(Codec[T], layout or STUDENT))
        gaps = [cast(float, seconds(v, name, none_ok=False)) for v, name in (
            (max_gap, "max_gap"), (idle_gap, "idle_gap"), (idle_after, "idle_after"))]
        if not SHORTEST_GAP <= gaps[0] <= gaps[1]:
            raise ValueError(f"max_gap must be at least {SHORTEST_GAP:g} s and at most idle_gap,"
                             " got max_gap"
                             f" {gaps[0]:g} s and idle_gap {gaps[1]:g} s")
        params = ffi.new("struct mmapipc_wait_params *", {
            "max_gap": _ns(gaps[0]), "idle_gap": _ns(gaps[1]), "idle_after": _ns(gaps[2]),
            "predict": bool(predict), "busy": bool(busy)})
        if lib.mmapipc_set_wait(self._ch, params) != 0:
            raise ValueError(f"wait parameters refused: {os.strerror(ffi.errno)}")
        # a busy wait makes no system call a signal could cut short: it keeps its slices
        self._slice_alone = _WAIT_SLICE_NS if busy else _WAIT_ALONE_NS
        self._busy = bool(busy)
        wait_timeout = seconds(wait_timeout, "wait_timeout")
        self._out = ffi.new("char[]", self._size)
        self._outbuf = ffi.buffer(self._out)
        self._decode = self.codec.decode
        self._load = lib.mmapipc_load
        self._lock = threading.RLock()
        _readers.add(self)
        flags = lib.MMAPIPC_FOLLOW if follow else 0
        if wait:
            self._open_when_ready(wait_timeout, flags)
        else:
            self._open(flags)
        self._last: T
        self._last_raw = b""   # the bytes of self._last, as loaded
        self.read()  # the record at open: what wait_for_change compares against
        # a busy wait hands back only while the path of a change is short (_next_change)
        self._warm = bool(busy) and self._decodes_within(
            min(lib.MMAPIPC_WARM_NS, _ns(gaps[0]) // 2))

    def _open_when_ready(self, timeout: float | None, flags: int) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                self._open(flags)
                return
            except (FileNotFoundError, FileTooShortError):
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            time.sleep(OPEN_POLL)

    def _decodes_within(self, limit_ns: int) -> bool:
        """Whether decoding the record at hand takes at most limit_ns: the fastest of up
        to three tries, so that one the machine slowed down does not count."""
        data = self._outbuf[:]
        for _ in range(3):
            start = time.perf_counter_ns()
            self._decode(data)
            if time.perf_counter_ns() - start <= limit_ns:
                return True
        return False

    def read(self) -> T:
        """The current record, copied whole and checked against tearing.

        An unchanged record comes back as the same object, without decoding again.
        """
        with self._lock:
            try:
                rc = self._load(self._ch, self._out)
                if rc == 0:
                    return self._last
                if rc == 1:
                    raw = self._outbuf[:]
                    self._last = last = self._decode(raw)
                    self._last_raw = raw
                    return last
            except BaseException:
                # a record loaded but never returned (the out buffer moved past the last
                # one returned): load it again.  Only then: a signal handler's exception
                # just after a load that found nothing new (in a busy wait's hand-back,
                # say) must not make the record the wait has come back as a change.
                if self._outbuf[:] != self._last_raw:
                    lib.mmapipc_forget(self._ch)
                raise
        raise self._error(rc)

    def changed(self) -> bool:
        """Whether read() would return a new record: its fields in the file differ from
        the last record returned.  One C call, nothing decoded."""
        rc: int = lib.mmapipc_poll(self._ch)
        if rc < 0:
            raise self._error(rc)
        return rc > 0

    def read_raw(self) -> T:
        """One guarded copy, with no check against tearing (what mmap_r does)."""
        return self._decode(self.raw_bytes())

    def raw_bytes(self) -> bytes:
        """One guarded copy of the mapped bytes as they are, padding included."""
        out = ffi.new("char[]", self._size)
        rc = lib.mmapipc_load_raw(self._ch, out)
        if rc != 0:
            raise self._error(rc)
        return cast(bytes, ffi.buffer(out)[:])

    def read_bytes(self) -> bytes:
        """The current record's bytes, as read() sees them (lock bytes zeroed)."""
        with self._lock:
            self.read()  # the lock is re-entrant: read() takes it again
            return cast(bytes, self._outbuf[:])

    def wait_for_change(self, timeout: float | None = None) -> T:
        """Wait for the next record that differs from the last one returned (to any thread).

        The wait runs in C without the GIL, in slices of WAIT_SLICE seconds so that
        signal handlers (Ctrl-C) run between them; in a process of one thread, where a
        signal ends a sleep in C at once, after the first slice in one go (not busy).  Raises
        TimeoutError after timeout (None or inf: no limit), ValueError if the Reader is
        closed meanwhile.
        """
        return self._next_change(seconds(timeout, "timeout"))

    def _next_change(self, limit: float | None) -> T:
        """wait_for_change with its timeout checked: the path every change takes, kept
        short: a C call to wait, then read()."""
        before = self._last
        ch, wait, slice_ns = self._ch, _wait, _WAIT_SLICE_NS
        deadline = None if limit is None else time.monotonic() + limit
        left = slice_ns if limit is None else min(slice_ns, int(limit * 1e9))
        # a busy wait hands back every MMAPIPC_WARM_NS only where no other thread would
        # have to give up the GIL each time (and make it wait for it), and only where a
        # record decodes in less time than that and half of max_gap: a longer hand-back
        # would cost more than the spin it follows, and leave the record unlooked at
        # for longer than max_gap (a change that stays that long could come and go)
        ready = _READY if not self._busy or (self._warm and _alone()) else 0
        # ...and asks again every WAIT_SLICE: a signal handler may have started a thread
        recheck = time.monotonic() + WAIT_SLICE if ready and self._busy else math.inf
        hold = 0   # signals held between sleeps: in a slice alone (below)
        flags = ready
        while True:
            rc = wait(ch, left, flags)
            if rc == 1 or rc == _DUE:
                record = self.read() if rc == 1 else self._make_ready()
                if record is not before:
                    return record
                if rc == _DUE and time.monotonic() >= recheck:
                    recheck = time.monotonic() + WAIT_SLICE
                    if not _alone():
                        ready, recheck = 0, math.inf
            elif rc == _ETIMEDOUT:
                slice_ns = self._slice_alone if _alone() else _WAIT_SLICE_NS
                # a slice alone ends only at a change, the timeout or a signal: a signal
                # that came between two sleeps must end the next sleep
                hold = _HOLD if slice_ns == _WAIT_ALONE_NS else 0
            elif rc != _EINTR and rc != _SPUN:   # SPUN: signal handlers run, then on
                raise self._error(rc)
            flags = ready | hold | (_RESUME if rc == _ETIMEDOUT or rc >= _DUE else 0)
            left = slice_ns
            if deadline is not None:
                now = time.monotonic()
                if rc == _ETIMEDOUT and now >= deadline:
                    raise self._error(rc)
                left = max(0, min(left, int((deadline - now) * 1e9)))

    def _make_ready(self) -> T:
        """Shortly before a slow writer's change is due, or now and then in a busy wait:
        take the path a change takes (a load, a decode), so that its code and data are in
        the cache when the change comes (after a long sleep they are not: a change then took
        ~100 us more to return; after a millisecond's spin, ~15 us more).  The decode comes
        first: after read(), nothing may stand between a change it took and its return
        (a Ctrl-C there would leave the change returned to no one)."""
        with self._lock:
            self._decode(self._outbuf[:])
            return self.read()

    def watch(self, timeout: float | None = None) -> Iterator[T]:
        """Yield the current record, then each change once; stop after timeout idle seconds."""
        limit = seconds(timeout, "timeout")
        yield self.read()
        while True:
            try:
                yield self._next_change(limit)
            except TimeoutError:
                return

    @property
    def reopened(self) -> int:
        """How many times the Reader followed its path to a new file."""
        return int(self._stats().reopened)

    @property
    def stats(self) -> dict[str, int]:
        """Copies accepted through the seq lock and by agreement; looks while waiting, how
        many of them woke later than planned by more than the room left for it (late
        wake-ups); files followed; sleeps on a notifying writer's futex, and those that
        ended by MMAPIPC_RELOOK_NS rather than by a store; times a wait made ready for a
        slow regular writer's change just before it was due."""
        st = self._stats()
        return {name: int(getattr(st, name)) for name in (
            "seqlock_reads", "fallback_reads", "polls", "late_polls", "reopened", "sleeps",
            "relooks", "readied")}

    def __enter__(self) -> Reader[T]:
        return self
