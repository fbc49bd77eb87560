"""mmapipc: exchange C structs with unrelated C processes through a MAP_SHARED file."""

from mmapipc.errors import (
    FileReplacedError,
    FileTooShortError,
    MmapipcError,
    MmapipcOSError,
    NotRegularFileError,
    SymlinkError,
    UnsafeFileError,
    UnstableRecordError,
    WouldShrinkError,
)
from mmapipc.layout import Field, Layout, LayoutCheckError, LayoutError, LayoutRecord
from mmapipc.loops import read_loop, write_loop
from mmapipc.mapping import Reader, Writer, install_fault_guard
from mmapipc.record import RECORD_SIZE, Student

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
    "install_fault_guard",
    "read_loop",
    "write_loop",
]
__version__ = "0.1.0"
