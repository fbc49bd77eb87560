"""The one place the compiled C core is imported."""

from mmapipc._mmapipc_cffi import ffi, lib

__all__ = ["ffi", "lib"]
