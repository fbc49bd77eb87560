"""mmapipc: exchange C structs with unrelated C processes through a MAP_SHARED file."""

from pathlib import Path

from mmapipc._base import MmapipcError
from mmapipc.layout import Field, Layout, LayoutCheckError, LayoutError, LayoutRecord

try:
    from mmapipc.errors import (
        FileReplacedError,
        FileTooShortError,
        MmapipcOSError,
        NotRegularFileError,
        SymlinkError,
        UnsafeFileError,
        UnstableRecordError,
        WouldShrinkError,
    )
    from mmapipc.loops import read_loop, write_loop
    from mmapipc.mapping import Reader, Writer, install_fault_guard
    from mmapipc.record import RECORD_SIZE, Student
except ImportError as _core_error:  # no compiled core: layouts work, mappings do not
    if "compiled core" not in str(_core_error):
        raise
    _missing = str(_core_error)

    def __getattr__(name: str) -> object:
        raise ImportError(f"mmapipc.{name}: {_missing}")



def get_include() -> str:
    """The directory of mmapipc_record.h, the protocol for C programs (for -I)."""
    return str(Path(__file__).resolve().parent / "include")


__all__ = [
    "RECORD_SIZE",
    "Field",
    "FileReplacedError",
    "FileTooShortError",
    "Layout",
    "LayoutCheckError",
    "LayoutError",
    "LayoutRecord",
    "MmapipcError",
    "MmapipcOSError",
    "NotRegularFileError",
    "Reader",
    "Student",
    "SymlinkError",
    "UnsafeFileError",
    "UnstableRecordError",
    "WouldShrinkError",
    "Writer",
    "get_include",
    "install_fault_guard",
    "read_loop",
    "write_loop",
]
__version__ = "0.1.0"
