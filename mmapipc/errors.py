"""Exceptions: OSError subclasses from errno, and package errors for what errno cannot say."""

from __future__ import annotations

import errno
import os
import stat
from typing import Union

from mmapipc._base import MmapipcError
from mmapipc._ffi import ffi, lib

PathLike = Union[str, "os.PathLike[str]"]


class MmapipcOSError(MmapipcError, OSError):
    """A file problem of ours: carries an errno, a message and the path, like OSError."""

    def __init__(self, err: int, message: str, path: PathLike | None) -> None:
        super().__init__(err, message, None if path is None else os.fspath(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}" if self.filename else str(self.strerror)


class NotRegularFileError(MmapipcOSError):
    """The path is a directory, FIFO, device or socket: only regular files are mapped."""


class SymlinkError(MmapipcOSError):
    """The writer will not open a symlink unless told to follow it."""


class WouldShrinkError(MmapipcOSError):
    """The writer will not truncate a longer file unless forced."""


class FileTooShortError(MmapipcOSError):
    """The file is shorter than one record (at open, or truncated under a mapping)."""


class FileReplacedError(MmapipcOSError):
    """The path no longer names the mapped file (renamed over, unlinked, or recreated)."""


class UnsafeFileError(MmapipcOSError):
    """The writer will not write a file that other names or users share unless forced."""


class UnstableRecordError(MmapipcOSError):
    """The record kept changing while it was copied, longer than the read allows."""


def os_error(path: PathLike | None) -> OSError:
    """OSError for the errno the C core left, e.g. FileNotFoundError."""
    err = ffi.errno
    return OSError(err, os.strerror(err), None if path is None else os.fspath(path))


def _kind(path: PathLike | None) -> str:
    """What a path is, in words, for errors about non-regular files."""
    try:
        mode = os.stat(path).st_mode if path is not None else 0
    except OSError:
        return "not a file"
    for test, words in (
        (stat.S_ISDIR, "is a directory"),
        (stat.S_ISFIFO, "is a FIFO"),
        (stat.S_ISCHR, "is a character device"),
        (stat.S_ISBLK, "is a block device"),
        (stat.S_ISSOCK, "is a socket"),
    ):
        if test(mode):
            return words
    return "is a special file"


def not_regular(path: PathLike) -> NotRegularFileError:
    """The error for a path that is not a regular file, saying what it is."""
    return NotRegularFileError(errno.EINVAL, f"{_kind(path)}, not a regular file", path)


def _size_words(n: int) -> str:
    return f"{n} byte" if n == 1 else f"{n} bytes"


def core_error(rc: int, path: PathLike | None, record_size: int, file_size: int = -1) -> OSError:
    """Exception for a negative return code of the C core."""
    if rc == lib.MMAPIPC_EOS:
        if ffi.errno == errno.ENXIO and path is not None and _kind(path) == "is a socket":
            return NotRegularFileError(errno.ENXIO, "is a socket, not a regular file", path)
        return os_error(path)
    if rc == lib.MMAPIPC_ENOTREG:
        return not_regular(path) if path is not None else NotRegularFileError(
            errno.EINVAL, "not a regular file", path)
    if rc == lib.MMAPIPC_ESHRINK:
        return WouldShrinkError(
            errno.EEXIST,
            f"file is {_size_words(file_size)}, longer than the {record_size}-byte record;"
            " refusing to shrink it (use force=True / --force)",
            path,
        )
    if rc == lib.MMAPIPC_ESHORT:
        return FileTooShortError(
            errno.ENODATA,
            f"file is {_size_words(file_size)}, shorter than the {record_size}-byte record",
            path,
        )
    if rc == lib.MMAPIPC_EBUS:
        try:
            now = f"{_size_words(os.stat(path).st_size)}" if path is not None else "unknown"
        except OSError:
            now = "gone"
        return FileTooShortError(
            errno.EFAULT,
            f"file was truncated under the {record_size}-byte mapping (now {now});"
            " the access was stopped before it could crash",
            path,
        )
    if rc == lib.MMAPIPC_EREPLACED:
        return FileReplacedError(
            errno.ESTALE,
            "file was replaced or removed: the path no longer names the mapped file",
            path,
        )
    if rc == lib.MMAPIPC_ELINKS:
        return UnsafeFileError(
            errno.EMLINK,
            "file has other hard links; writing it would change them too;"
            " not written unless forced (force=True / --force)",
            path,
        )
    if rc == lib.MMAPIPC_EPLANTED:
        return SymlinkError(
            errno.EACCES,
            "a symlink on the path sits in a sticky world-writable directory and belongs to"
            " neither you nor the directory's owner; not followed",
            path,
        )
    if rc == lib.MMAPIPC_EFOREIGN:
        return UnsafeFileError(
            errno.EACCES,
            "belongs to another user, in a sticky world-writable directory; not written"
            " unless forced (force=True / --force)",
            path,
        )
    if rc == lib.MMAPIPC_EUNSTABLE:
        return UnstableRecordError(errno.EAGAIN, "record kept changing while it was copied", path)
    if rc == lib.MMAPIPC_ETIMEDOUT:
        return TimeoutError(errno.ETIMEDOUT, "no change before the timeout", path)
    return MmapipcOSError(errno.EIO, f"unexpected core return code {rc}", path)
