"""Writer and Reader: one record of a file mapped with MAP_SHARED, copied in and out whole.

Every copy runs in the C core under a SIGBUS guard, so a truncated file raises
FileTooShortError instead of killing the process.  A Writer keeps a sequence lock in
the record's padding; a Reader uses it to never return a torn record.
"""

from __future__ import annotations

import errno
import faulthandler
import os
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar, cast, overload

from mmapipc._ffi import ffi, lib
from mmapipc.errors import FileTooShortError, PathLike, SymlinkError, core_error
from mmapipc.record import STUDENT, Codec, Student

T = TypeVar("T")

# Defaults of the adaptive wait (seconds): spin, then sleeps doubling up to the ceiling.
SPIN = 10e-6
SLEEP_MIN = 20e-6
SLEEP_MAX = 250e-6
# How long a reader waits on a writer that is mid-store before reading by agreement.
STUCK_WAIT = 0.25
# How often a writer, and a reader whose record changed through the lock, check that the
# file was not truncated under them (a stat each time).
SIZE_CHECK = 0.01
# How long a reader tries for a stable copy before giving up.
UNSTABLE_WAIT = 1.0
# How often Reader(wait=True) looks for its file.
OPEN_POLL = 0.01
# The longest a wait stays in C before Python can run signal handlers.
WAIT_SLICE = 0.05
_WAIT_SLICE_NS = int(WAIT_SLICE * 1e9)
_ETIMEDOUT = lib.MMAPIPC_ETIMEDOUT
_EINTR = lib.MMAPIPC_EINTR

# Generation counters: [changes to faulthandler, the change our handler was installed at].
_guard_gen = [0, -1]


def install_fault_guard() -> None:
    """Put mmapipc's SIGBUS handler first in the chain (the previous one is chained to).

    Called on every open and whenever faulthandler.enable()/disable() ran since the last
    install: enable() puts faulthandler in front of us (it would report a guarded fault as
    fatal) and disable() restores a chain without us.  Call it yourself after installing
    another SIGBUS handler while mappings are open.
    """
    if lib.mmapipc_guard_install() != 0:
        raise core_error(lib.MMAPIPC_EOS, None, 0)
    _guard_gen[1] = _guard_gen[0]


def _watch_faulthandler() -> None:
    """Count calls to faulthandler.enable/disable, so the next operation reinstalls."""
    for name in ("enable", "disable"):
        original = getattr(faulthandler, name)
        if getattr(original, "_mmapipc_counted", False):
            continue

        def counted(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            try:
                return _original(*args, **kwargs)
            finally:
                _guard_gen[0] += 1

        counted.__name__ = original.__name__
        counted.__qualname__ = original.__qualname__
        counted.__doc__ = original.__doc__
        counted._mmapipc_counted = True  # type: ignore[attr-defined]
        setattr(faulthandler, name, counted)


_watch_faulthandler()


def _ns(seconds: float | None) -> int:
    return -1 if seconds is None else max(0, int(seconds * 1e9))


class _Mapping(Generic[T]):
    """What Writer and Reader share: the C channel, its buffers and closing."""

    _kind = "mapping"

    def __init__(self, path: PathLike, codec: Codec[T]) -> None:
        if isinstance(path, bytes):
            raise TypeError("path must be str or os.PathLike[str], not bytes")
        self.path: str = os.fspath(path)
        if not self.path:
            raise FileNotFoundError(2, "empty path", self.path)
        if "\0" in self.path:
            raise ValueError(f"path contains a NUL byte: {self.path!r}")
        self.codec = codec
        size = codec.size
        ch = ffi.new("struct mmapipc_channel *")
        ch.size = size
        marker, seq = codec.lock_offsets if codec.lock_offsets else (-1, -1)
        ch.marker_off = marker
        ch.seq_off = seq
        self._bufs = ffi.new("unsigned char[]", 4 * size)
        ch.src = self._bufs
        ch.copy = self._bufs + size
        ch.scratch = self._bufs + 2 * size
        ch.stuck_ns = _ns(STUCK_WAIT)
        ch.size_check_ns = _ns(SIZE_CHECK)
        ch.unstable_ns = _ns(UNSTABLE_WAIT)
        self._ch = ch

    def _open(self, flags: int) -> None:
        install_fault_guard()
        self._cpath = ffi.new("char[]", os.fsencode(self.path))  # the C side keeps it
        rc = lib.mmapipc_open(self._ch, self._cpath, flags)
        if rc != 0:
            raise self._error(rc)

    def _error(self, rc: int) -> Exception:
        if self._ch.map == ffi.NULL and rc == lib.MMAPIPC_EOS and ffi.errno == errno.EBADF:
            return ValueError(f"I/O operation on a closed {self._kind}")
        return core_error(rc, self.path, self.codec.size, self._ch.file_size)

    @property
    def closed(self) -> bool:
        return bool(self._ch.map == ffi.NULL)

    def close(self) -> None:
        """Unmap the record; calling it again does nothing."""
        if lib.mmapipc_close(self._ch) != 0:
            raise core_error(lib.MMAPIPC_EOS, self.path, self.codec.size)

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        ch = getattr(self, "_ch", None)
        if ch is not None:
            lib.mmapipc_close(ch)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self.path!r} {state}>"


class Writer(_Mapping[T]):
    """Maps path for writing as mmap_w does (created 0664 & ~umask, sized to one record).

    Refuses to shrink a longer file unless force, and to open a symlink unless
    follow_symlinks.  seqlock=False stores plain whole records with zero padding.
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
        layout: Codec[T],
    ) -> None: ...

    def __init__(
        self,
        path: PathLike,
        *,
        force: bool = False,
        follow_symlinks: bool = False,
        seqlock: bool = True,
        layout: Codec[Any] | None = None,
    ) -> None:
        super().__init__(path, cast(Codec[T], layout or STUDENT))
        self._ch.seqlock = 1 if seqlock else 0
        self._src = ffi.buffer(self._ch.src, self.codec.size)
        self._encode = self.codec.encode
        self._store = lib.mmapipc_store
        flags = lib.MMAPIPC_WRITE
        if follow_symlinks:
            flags |= lib.MMAPIPC_FOLLOW_SYMLINKS
        if force:
            flags |= lib.MMAPIPC_FORCE
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
        if _guard_gen[0] != _guard_gen[1]:
            install_fault_guard()
        self._src[:] = self._encode(record)
        rc = self._store(self._ch)
        if rc:
            raise self._error(rc)

    def write_bytes(self, data: bytes) -> None:
        """Store raw record bytes (exactly the record size)."""
        if len(data) != self.codec.size:
            raise ValueError(f"a record is {self.codec.size} bytes, got {len(data)}")
        if _guard_gen[0] != _guard_gen[1]:
            install_fault_guard()
        self._src[:] = data
        rc = self._store(self._ch)
        if rc != 0:
            raise self._error(rc)

    def flush(self) -> None:
        """msync the record, so it survives a machine crash."""
        if self.closed:
            raise ValueError("I/O operation on a closed Writer")
        if lib.mmapipc_sync(self._ch) != 0:
            raise core_error(lib.MMAPIPC_EOS, self.path, self.codec.size)

    def __enter__(self) -> Writer[T]:
        return self


class Reader(_Mapping[T]):
    """Maps path read-only as mmap_r does; read() never returns a torn record from a Writer.

    wait=True waits (up to wait_timeout seconds) for the file to exist and hold a record.
    spin, sleep_min and sleep_max (seconds) tune wait_for_change: spin after each change,
    then sleeps doubling from sleep_min up to sleep_max.  predict naps through the period
    of a writer that changes the record regularly (20 ms at a time), then polls, never
    further apart than sleep_max, until the change is overdue.  busy spins instead of
    sleeping, for those who give a core to latency.
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
        spin: float = ...,
        sleep_min: float = ...,
        sleep_max: float = ...,
        busy: bool = ...,
        predict: bool = ...,
    ) -> None: ...

    @overload
    def __init__(
        self,
        path: PathLike,
        *,
        wait: bool = ...,
        wait_timeout: float | None = ...,
        layout: Codec[T],
        spin: float = ...,
        sleep_min: float = ...,
        sleep_max: float = ...,
        busy: bool = ...,
        predict: bool = ...,
    ) -> None: ...

    def __init__(
        self,
        path: PathLike,
        *,
        wait: bool = False,
        wait_timeout: float | None = None,
        layout: Codec[Any] | None = None,
        spin: float = SPIN,
        sleep_min: float = SLEEP_MIN,
        sleep_max: float = SLEEP_MAX,
        busy: bool = False,
        predict: bool = True,
    ) -> None:
        super().__init__(path, cast(Codec[T], layout or STUDENT))
        if not 0 <= sleep_min <= sleep_max or spin < 0:
            raise ValueError("need 0 <= sleep_min <= sleep_max and spin >= 0")
        ch = self._ch
        ch.spin_ns = _ns(spin)
        ch.sleep_min_ns = max(1000, _ns(sleep_min))
        ch.sleep_max_ns = max(ch.sleep_min_ns, _ns(sleep_max))
        ch.busy = 1 if busy else 0
        ch.predict = 1 if predict else 0
        self._copy = ffi.buffer(ch.copy, self.codec.size)
        self._scratch = ffi.buffer(ch.scratch, self.codec.size)
        self._decode = self.codec.decode
        self._load = lib.mmapipc_load
        self._poll = lib.mmapipc_poll
        if wait:
            self._open_when_ready(wait_timeout)
        else:
            self._open(0)
        self._last: T
        self.read()  # the record at open: what wait_for_change compares against

    def _open_when_ready(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                self._open(0)
                return
            except (FileNotFoundError, FileTooShortError):
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            time.sleep(OPEN_POLL)

    def read(self) -> T:
        """The current record, copied whole and checked against tearing.

        An unchanged record comes back as the same object, without decoding again.
        """
        if _guard_gen[0] != _guard_gen[1]:
            install_fault_guard()
        rc = self._load(self._ch)
        if rc == 0:
            return self._last
        if rc == 1:
            self._last = last = self._decode(self._copy[:])
            return last
        raise self._error(rc)

    def changed(self) -> bool:
        """Whether read() might return a new record: one C call, nothing decoded.

        True when a writer stored since the last record returned (through the seq lock,
        even if it stored the same fields again) or when the mapped fields differ.
        """
        if _guard_gen[0] != _guard_gen[1]:
            install_fault_guard()
        rc: int = self._poll(self._ch)
        if rc < 0:
            raise self._error(rc)
        return rc > 0

    def read_raw(self) -> T:
        """One guarded copy, with no check against tearing (what mmap_r does)."""
        return self._decode(self.raw_bytes())

    def raw_bytes(self) -> bytes:
        """One guarded copy of the mapped bytes as they are, padding included."""
        if _guard_gen[0] != _guard_gen[1]:
            install_fault_guard()
        rc = lib.mmapipc_load_raw(self._ch)
        if rc != 0:
            raise self._error(rc)
        return bytes(self._scratch[:])

    def read_bytes(self) -> bytes:
        """The current record's bytes, as read() sees them (lock bytes zeroed)."""
        self.read()
        return bytes(self._copy[:])

    def wait_for_change(self, timeout: float | None = None) -> T:
        """Wait for the next record that differs from the last one returned.

        The wait runs in C without the GIL, in slices of WAIT_SLICE seconds so that
        signal handlers (Ctrl-C) run between them.  Raises TimeoutError after timeout.
        """
        if _guard_gen[0] != _guard_gen[1]:
            install_fault_guard()
        ch = self._ch
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        ch.resume = 0
        while True:
            if deadline is None:
                ch.timeout_ns = _WAIT_SLICE_NS
            else:
                left = deadline - time.monotonic()
                ch.timeout_ns = max(0, min(_WAIT_SLICE_NS, int(left * 1e9)))
            rc = lib.mmapipc_wait(ch)
            if rc == 1:
                self._last = last = self._decode(self._copy[:])
                return last
            if rc == _ETIMEDOUT:
                if deadline is not None and time.monotonic() >= deadline:
                    raise self._error(rc)
            elif rc != _EINTR:
                raise self._error(rc)
            ch.resume = 1  # carry on where the slice stopped: no new spin

    def watch(self, timeout: float | None = None) -> Iterator[T]:
        """Yield the current record, then each change once; stop after timeout idle seconds."""
        yield self.read()
        while True:
            try:
                yield self.wait_for_change(timeout)
            except TimeoutError:
                return

    @property
    def stats(self) -> dict[str, int]:
        """How many copies the seq lock accepted, and how many agreement did."""
        return {
            "seqlock_reads": int(self._ch.seqlock_reads),
            "fallback_reads": int(self._ch.fallback_reads),
        }

    def __enter__(self) -> Reader[T]:
        return self
