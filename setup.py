import sys
import sysconfig

from setuptools import setup

# The extension uses only the stable ABI, so one wheel (abi3) serves every CPython >= 3.10.
# Free-threaded and debug CPython have no stable ABI: cffi builds for them alone, and so
# does the tag.
abi3 = not sysconfig.get_config_var("Py_GIL_DISABLED") and not hasattr(sys, "gettotalrefcount")
setup(
    cffi_modules=["csrc/build_ffi.py:ffibuilder"],
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if abi3 else {},
)
