"""The C extension ``natstream._cstream``: chosen where it is built, turned off by
``NATSTREAM_NO_EXTENSIONS``, required in CI, no reference leaks on its paths, and
hostile bytes never crash its scanner (the equivalence of each path with its Python
twin is held by test_fastparser.py, test_index_replies.py and tests/protocol).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_fastparser import FUZZ, FakeClient, cut, fast_parser, receive
from test_index_replies import serve

from natstream._ext import STREAM_IMPL, cstream

needs_c = pytest.mark.skipif(cstream is None, reason="the C extension is not in use")


@pytest.mark.skipif(
    os.environ.get("NATSTREAM_REQUIRE_EXTENSIONS") != "1",
    reason="only where the extension must be built (CI sets NATSTREAM_REQUIRE_EXTENSIONS=1)",
)
def test_the_extension_is_built_where_required() -> None:
    assert STREAM_IMPL == "c", "natstream._cstream is not built or is turned off"


@pytest.mark.parametrize("disabled", ["1", ""])
def test_natstream_no_extensions_selects_the_python_paths(disabled: str) -> None:
    script = (
        "from natstream._ext import STREAM_IMPL; "
        "from natstream._protocol._credit import Credit; "
        "from natstream._requester._attempt import Attempt; "
        "print(STREAM_IMPL, Credit.__base__.__name__, Attempt.__base__.__name__)"
    )
    env = {**os.environ, "NATSTREAM_NO_EXTENSIONS": disabled}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    if disabled or importlib.util.find_spec("natstream._cstream") is None:
        assert done.stdout.split() == ["python", "object", "object"]
    else:
        assert done.stdout.split() == ["c", "CreditCore", "AttemptCore"]


# ---------------------------------------------------------------- reference counts


def _blocks_after(run: Any, times: int) -> int:
    """Memory blocks allocated after ``run()`` ran ``times`` times (collected)."""
    for _ in range(times):
        run()
    gc.collect()
    return sys.getallocatedblocks()


RUNS = 200


def _leaks(run: Any) -> bool:
    """Whether memory blocks pile up over many runs (after warming up): a reference
    leaked per message would leave tens of blocks per run (each runs 30 or more
    messages); caches (recurring header blocks, free lists) settle while warming
    up and move the count by a few blocks either way after."""
    _blocks_after(run, RUNS)
    before = _blocks_after(run, 1)
    after = _blocks_after(run, RUNS)
    return after - before >= RUNS


SCRIPT = [("data", 20)] * 30 + [("pack", 5), ("dup", 3), ("pos", 4), ("hb", 0), ("end", 0)]


@needs_c
@pytest.mark.parametrize(
    "actions", [["true"], ["true", "none", "other", "aw-true"], ["true"] * 5 + ["raise"]]
)
def test_the_receive_path_leaks_nothing(actions: list[str]) -> None:
    def run() -> None:
        asyncio.run(receive(SCRIPT, [97, 501], actions, (16, 100_000), 0.0, False, lane=True))

    assert not _leaks(run)


@needs_c
@pytest.mark.parametrize("mode", ["v1", "service", "plain"])
def test_the_send_path_leaks_nothing(mode: str) -> None:
    script = [("bytes", 30)] * 40 + [("none", 0), ("bytearray", 3), ("awaitable", 2)]

    def run() -> None:
        asyncio.run(serve(script, mode, (16, 100_000), True, 0, True))

    assert not _leaks(run)


@needs_c
def test_the_paths_hold_no_reference_to_what_they_handled() -> None:
    payload = b"z" * 300
    handler_calls: list[int] = []

    def handler(msg: Any) -> bool:
        handler_calls.append(1)
        return True

    before = sys.getrefcount(payload), sys.getrefcount(handler)
    parser = fast_parser(FakeClient(), "c")
    for _ in range(100):
        asyncio.run(parser.parse(b"MSG a.b 7 300\r\n" + payload + b"\r\n"))
    items = [payload] * 50
    for _ in range(100):
        cstream.pack_items(items, 0, 50)
    del items
    assert (sys.getrefcount(payload), sys.getrefcount(handler)) == before


# ---------------------------------------------------------------- hostile input

junk = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"MSG ", b"HMSG ", b"\r\n", b" ", b"\t", b"7", b"-1", b"+3", b"0" * 30]),
    st.sampled_from([b"99999999999999999999", b"NATS/1.0\r\n", b"Ns-Seq: 1\r\n\r\n", b"a.b"]),
)


async def _events(impl: str, chunks: list[bytes]) -> tuple[list[Any], str | None]:
    client = FakeClient()
    parser = fast_parser(client, impl)
    try:
        for chunk in chunks:
            await parser.parse(chunk)
    except Exception as exc:  # ProtocolError, or what a control line's handler raised
        return client.events, f"{type(exc).__name__}: {exc}"
    return client.events, None


@pytest.mark.fuzz
@needs_c
@FUZZ
@given(pieces=st.lists(junk, max_size=40), points=st.lists(st.integers(0, 10**6), max_size=8))
async def test_hostile_bytes_read_as_the_python_loop_reads_them(
    pieces: list[bytes], points: list[int]
) -> None:
    """Any bytes, cut anywhere: the C scanner dispatches the same messages and raises
    the same ProtocolError as the Python loop (and never crashes)."""
    data = b"".join(pieces)
    chunks = cut(data, points)
    assert await _events("c", chunks) == await _events("python", chunks)
