"""Hypothesis settings for the protocol tests: a quick, reproducible run by default, a
long randomized one on request.

The profile is registered under :data:`PROFILE` and the test modules apply it with
``settings(settings.get_profile(PROFILE), ...)`` rather than ``settings.load_profile``,
so hypothesis tests elsewhere in the suite keep their own defaults.

* Default (CI): derandomized, no example database, no deadline; each property test
  runs a modest number of examples and the whole directory takes a few seconds.
* Fuzzing: ``NATSTREAM_FUZZ=1 pytest tests/protocol -m fuzz`` (or
  ``pytest tests/protocol --fuzz -m fuzz``; the option exists only when this directory
  is named on the command line, the variable works everywhere). Every ``fuzz``-marked
  test then runs :data:`FUZZ_EXAMPLES` random examples (more than 100,000 over the
  marked tests), with no per-test timeout. Add ``--hypothesis-show-statistics`` for
  the per-test counts.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings

PROFILE = "natstream-protocol"
FUZZ_ENV = "NATSTREAM_FUZZ"
FUZZ_EXAMPLES = 20_000  # per fuzz-marked test; there are more than five of them
CI_EXAMPLES = 150
_FUZZ_TIMEOUT = 6 * 3600  # seconds; pytest-timeout's 120 s would cut a fuzzing run short


def _register(fuzz: bool) -> None:
    settings.register_profile(
        PROFILE,
        max_examples=FUZZ_EXAMPLES if fuzz else CI_EXAMPLES,
        derandomize=not fuzz,
        database=None,
        deadline=None,
        print_blob=fuzz,
        # One bug at a time, and no explain phase: shrinking and explaining several
        # failures of the pair simulation takes minutes, past pytest-timeout's limit.
        report_multiple_bugs=fuzz,
        phases=list(Phase) if fuzz else [p for p in Phase if p is not Phase.explain],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def at_least(n: int) -> int:
    """``max_examples`` for a test that deserves ``n`` examples in the default run (and
    the fuzzing count when fuzzing)."""
    return max(n, settings.get_profile(PROFILE).max_examples)


def _fuzzing(config: pytest.Config) -> bool:
    return os.environ.get(FUZZ_ENV) == "1" or bool(config.getoption("--fuzz", default=False))


_register(os.environ.get(FUZZ_ENV) == "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz",
        action="store_true",
        default=False,
        help=f"long hypothesis runs of the protocol tests (same as {FUZZ_ENV}=1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    _register(_fuzzing(config))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _fuzzing(config):
        return
    here = os.path.dirname(__file__)
    for item in items:
        if item.get_closest_marker("fuzz") is not None and str(item.path).startswith(here):
            item.add_marker(pytest.mark.timeout(_FUZZ_TIMEOUT))
