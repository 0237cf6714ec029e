"""Build the optional C accelerators; all other metadata is in pyproject.toml.

``optional=True``: without a compiler (or if a build fails) natstream installs as pure
Python and uses the Python fallbacks of its fast paths (see docs/performance.md).
"""

from setuptools import Extension, setup

_CSTREAM = ["_cstream.c", "_cstream_credit.c", "_cstream_lane.c", "_cstream_scan.c"]
_CSTREAM += ["_cstream_pack.c", "_cstream_send.c"]

setup(
    ext_modules=[
        Extension(
            "natstream._cwriter",
            ["src/natstream/_cwriter.c"],
            depends=["src/natstream/_ctime.h"],
            optional=True,
        ),
        Extension(
            "natstream._cstream",
            [f"src/natstream/{name}" for name in _CSTREAM],
            depends=["src/natstream/_cstream.h", "src/natstream/_ctime.h"],
            optional=True,
        ),
    ],
)
