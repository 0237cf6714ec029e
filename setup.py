"""Build the optional C accelerator; all other metadata is in pyproject.toml.

``optional=True``: without a compiler (or if the build fails) natstream installs as pure
Python and uses the Python fallback of the writer's fast path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("natstream._cwriter", ["src/natstream/_cwriter.c"], optional=True),
    ],
)
