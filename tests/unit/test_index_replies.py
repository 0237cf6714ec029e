"""A sync index handler's replies: the C extension's ``fill_index`` against the Python
loop (``Index.run_from`` with ``Sender.send_now`` and ``Sender.emit``).

Both run on a fake-connected FastClient (no server), the same handler script (replies
of any size, None, bytes-like but not bytes, an error, a wrong shape, an awaitable, an
exception, the end), a v1 requester (by reply subject or by stream id, resumed or not)
or a plain one, with acks at each pause or none. They must make the same handler
calls, queue the same bytes, pause as often, and leave the same counts and outcome.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.aio.msg import Msg

from natstream._ext import cstream
from natstream._protocol import ResponderMachine, Resume
from natstream._protocol._wire import CTL_ACK, HDR_ACK, HDR_CONTROL, RequestOptions
from natstream._responder import _sender
from natstream._responder._kinds import Index
from natstream._responder._request import StreamRequest
from natstream._responder._sender import Sender
from natstream._transport import FastClient

pytestmark = pytest.mark.skipif(cstream is None, reason="the C extension is not in use")

FUZZ = settings(
    max_examples=20_000 if os.environ.get("NATSTREAM_FUZZ") == "1" else 300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LIMIT = 1000  # max_payload of the fake connection: larger replies are refused (413)
PAUSE_MASK = 7  # a pause every 8 replies here, to see many of them
BYTES_PAUSE_MASK = 31  # with a byte limit: then a pause every 16 replies over it


class Boom(Exception):
    pass


def result_of(step: tuple[str, int], index: int, last: bool) -> Any:
    """The handler's result at ``index`` for ``step``."""
    kind, n = step
    more = not last
    data = bytes([48 + index % 10]) * n
    if kind == "bytes":
        return data, more, None
    if kind == "none":
        return None, more, None
    if kind == "bytearray":
        return bytearray(data), more, None
    if kind == "big":
        return b"b" * (LIMIT + n), more, None
    if kind == "error":
        return data, more, "it went wrong"
    if kind == "shape":
        return data, more
    if kind == "list":
        return [data, more, None]
    if kind == "awaitable":

        async def later() -> Any:
            await asyncio.sleep(0)
            return data, more, None

        return later()
    if kind == "falsy":
        return data, 0 if last else 1, None
    raise Boom


async def serve(
    script: list[tuple[str, int]],
    mode: str,
    window: tuple[int, int],
    acks: bool,
    resume: int,
    fill: bool,
) -> tuple[Any, ...]:
    client = FastClient()
    client._status = Client.CONNECTED
    client._max_payload = LIMIT
    loop = asyncio.get_running_loop()
    options = RequestOptions(
        version=None if mode == "plain" else "1",
        window_messages=window[0],
        window_bytes=window[1],
        heartbeat_ms=0 if mode == "plain" else 1000,
        resume=Resume(resume, str(resume - 1)) if resume and mode != "plain" else None,
    )
    m = ResponderMachine(options, loop.time(), stream_id="s1" if mode == "service" else None)
    msg = Msg(client, "svc", "_INBOX.req.0", b"", None)
    reply_field = "" if mode == "service" else "_INBOX.ctl.me"
    sender = Sender(client, m, msg.reply, reply_field, "svc")
    calls: list[int] = []
    start = m.sent_seq

    def handler(request: StreamRequest, index: int) -> Any:
        calls.append(index)
        k = index - start
        if k >= len(script):
            return None, False, None
        return result_of(script[k], index, k == len(script) - 1)

    pauses = 0

    async def pause(self: Sender) -> None:
        nonlocal pauses
        pauses += 1
        if acks:
            m.on_control({HDR_CONTROL: CTL_ACK, HDR_ACK: f"{m.sent_seq} {m.sent_bytes}"}, 0.0)
            self.credit_changed()
        await asyncio.sleep(0)

    original = Sender.pause
    Sender.pause = pause  # type: ignore[method-assign]
    if not fill:
        _sender.cstream = None  # the Python loop: Sender.fill is None
    try:
        task = asyncio.ensure_future(Index(handler, sync=True).run(StreamRequest(msg, m), sender))
        for _ in range(200):
            if task.done():
                break
            await asyncio.sleep(0)
        task.cancel()
        try:
            outcome: Any = await task
        except asyncio.CancelledError:
            outcome = "waiting for credit"
        except Exception as exc:
            outcome = type(exc).__name__
    finally:
        Sender.pause = original  # type: ignore[method-assign]
        _sender.cstream = cstream
    return (
        calls,
        outcome,
        # A plain requester's replies pause with sleep(0) after each publish's kick
        # in the Python loop, with Sender.pause (kick, sleep(0)) in the C fill.
        pauses if mode != "plain" else None,
        b"".join(client._pending),
        m.sent_seq,
        m.sent_bytes,
        sender.sent,
        client.stats["out_msgs"],
        client.stats["out_bytes"],
    )


steps = st.tuples(
    st.sampled_from(
        ["bytes"] * 20
        + ["none", "bytearray", "big", "error", "shape", "list", "awaitable", "falsy", "raise"]
    ),
    st.integers(0, 120),
)


@pytest.fixture
def frequent_pauses(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(_sender, "_PAUSE_MASK", PAUSE_MASK)
    cstream.configure("pause_mask", PAUSE_MASK)
    yield
    cstream.configure("pause_mask", _sender._PAUSE_MASK)


@pytest.mark.fuzz
@pytest.mark.usefixtures("frequent_pauses")
@FUZZ
@given(
    script=st.lists(steps, min_size=1, max_size=60),
    mode=st.sampled_from(["v1", "service", "plain"]),
    window=st.tuples(st.integers(1, 30), st.integers(1, 4000)),
    acks=st.booleans(),
    resume=st.sampled_from([0, 0, 5]),
    pause_bytes=st.sampled_from([None, 0, 40, 300]),
)
async def test_fill_queues_what_the_python_loop_queues(
    script: list[tuple[str, int]],
    mode: str,
    window: tuple[int, int],
    acks: bool,
    resume: int,
    pause_bytes: int | None,
) -> None:
    """With ``pause_bytes``, the byte rule of the pacing too: a pause every
    ``(PAUSE_MASK + 1) // 2`` replies while that many bytes wait on the connection."""
    args = (script, mode, window, acks, resume)
    saved = _sender._PAUSE_MASK, _sender._PAUSE_BYTES
    if pause_bytes is not None:
        _sender._PAUSE_MASK, _sender._PAUSE_BYTES = BYTES_PAUSE_MASK, pause_bytes
        cstream.configure("pause_mask", BYTES_PAUSE_MASK)
        cstream.configure("pause_bytes", pause_bytes)
    try:
        got = await serve(*args, fill=True)
        want = await serve(*args, fill=False)
    finally:
        _sender._PAUSE_MASK, _sender._PAUSE_BYTES = saved
        cstream.configure("pause_mask", saved[0])
        cstream.configure("pause_bytes", saved[1])
    assert got == want


async def test_fill_is_used_for_sync_index_handlers() -> None:
    """The C fill really runs (a result it cannot take comes back to Python)."""
    taken = []
    original = Sender.fill

    def spy(*args: Any) -> Any:
        status, index, value = cstream.fill_index(*args)
        taken.append(status)
        return status, index, value

    try:
        Sender.fill = property(lambda self: spy)  # type: ignore[assignment, method-assign]
        _, outcome, *_ = await serve([("bytes", 3)] * 20, "v1", (64, 1 << 20), True, 0, True)
    finally:
        Sender.fill = original  # type: ignore[method-assign]
    assert outcome is True
    assert taken
    assert set(taken) <= {1, 2}
