"""Path rules of a writer: what the kernel's protected_symlinks and protected_regular
refuse, refused whatever the sysctls say.

A symlink in a sticky world-writable directory (like /tmp) that belongs to neither the
caller nor the directory's owner is not followed, at any component of the path; an existing
file there that belongs to someone else, or a file with other hard links, is not written
unless forced.  Symlinks elsewhere (/var/run -> /run) are followed as usual.
"""

from __future__ import annotations

import errno
import os
import stat

from mmapipc.errors import SymlinkError, UnsafeFileError

_MAX_LINKS = 40  # as the kernel's limit on symlinks followed in one lookup


def _open_to_all_and_sticky(st: os.stat_result) -> bool:
    return bool(st.st_mode & stat.S_ISVTX and st.st_mode & stat.S_IWOTH)


def check_writable(path: str, *, force: bool) -> None:
    """Walk path as the kernel would and refuse what the rules above refuse.

    The C open that follows refuses a symlink as the last component (O_NOFOLLOW unless
    follow_symlinks) and, unless forced, a file with more than one hard link.
    """
    euid = os.geteuid()
    here = "/" if path.startswith("/") else os.getcwd()
    todo = path.split("/")
    followed = 0
    while todo:
        name = todo.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            here = os.path.dirname(here)
            continue
        there = os.path.join(here, name)
        try:
            st = os.lstat(there)
        except OSError:
            return  # missing or unreadable: the open says so, or creates the file
        if stat.S_ISLNK(st.st_mode):
            _refuse_planted_link(path, here, there, st, euid)
            if not todo:
                return  # the last component: O_NOFOLLOW decides
            followed += 1
            if followed > _MAX_LINKS:
                return  # the open fails with ELOOP
            target = os.readlink(there)
            todo = target.split("/") + todo
            here = "/" if target.startswith("/") else here
            continue
        if not todo and stat.S_ISREG(st.st_mode) and not force:
            _refuse_someone_elses_file(path, here, st, euid)
        here = there


def _refuse_planted_link(path: str, here: str, link: str, st: os.stat_result,
                         euid: int) -> None:
    directory = os.stat(here)
    if (_open_to_all_and_sticky(directory) and st.st_uid != euid
            and st.st_uid != directory.st_uid):
        raise SymlinkError(
            errno.EACCES,
            f"{link} is a symlink in the sticky world-writable directory {here}, owned by"
            " neither you nor the directory's owner; not followed",
            path,
        )


def _refuse_someone_elses_file(path: str, here: str, st: os.stat_result, euid: int) -> None:
    directory = os.stat(here)
    if (_open_to_all_and_sticky(directory) and st.st_uid != euid
            and st.st_uid != directory.st_uid):
        raise UnsafeFileError(
            errno.EACCES,
            f"belongs to uid {st.st_uid}, in the sticky world-writable directory {here};"
            " not written unless forced (force=True / --force)",
            path,
        )
