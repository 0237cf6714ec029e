"""Pulling from a durable consumer: pull requests kept outstanding, deliveries handed on.

nats-py's ``PullSubscription.fetch`` waits for each message with ``next_msg`` (a
coroutine and a timeout per message) and drops the status messages that say why a
request ended. The :class:`Puller` keeps up to ``batch`` messages requested instead,
asking for more when half of them have arrived; the messages come on one inbox
subscription, straight from the protocol parser on natstream's fast client, and go to
the recording's ``deliver`` in the order they arrived.

How many messages are requested is tracked from what arrives: each message is one less;
a request that ends (it expired, or the server cut it short) says how many it did not
deliver. When the connection came back from a reconnect, or nothing, not even the idle
heartbeat requests ask for, arrived for two heartbeats, the requests are taken as lost
and made again. The server never delivers more than the consumer's ``max_ack_pending``
unacknowledged messages, which bounds what the recording holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .._errors import JetStreamError
from .._transport import Link, drain_subscription, subscribe_live
from ._setup import DELETED
from ._wire import PENDING_MESSAGES, StatusKind, next_subject, pull_request, status_kind

__all__ = ["Puller"]

log = logging.getLogger("natstream")

EXPIRES: Final = 15.0  # seconds a pull request waits for messages on the server
HEARTBEAT: Final = 3.0  # seconds between the server's idle heartbeats on a waiting request
_SILENCE: Final = 2 * HEARTBEAT + 1.0  # seconds without a word: the requests are lost
_TICK: Final = 0.5  # seconds between looks at the connection when nothing else happens
_RETRY: Final = 1.0  # seconds to wait when JetStream cannot serve (restart, new leader)


class Puller:
    """Pull requests for one durable consumer, and the inbox their messages come to.

    Args:
        link: the connection.
        stream, consumer: what to pull from.
        batch: messages kept requested.
        deliver: called with each message, in order; quick and non-blocking.
        fail: called once if the consumer cannot be pulled from any more (deleted,
            turned into a push consumer).
        name: the name of the puller's task (``natstream-...``).
    """

    def __init__(
        self,
        link: Link,
        stream: str,
        consumer: str,
        *,
        batch: int,
        deliver: Callable[[Msg], None],
        fail: Callable[[BaseException], None],
        name: str,
    ) -> None:
        self._link = link
        self._subject = next_subject(stream, consumer)
        self._consumer = f"{consumer!r} of stream {stream!r}"
        self._batch = batch
        self._deliver = deliver
        self._fail = fail
        self._name = name
        self._inbox = link.new_inbox()
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._want = asyncio.Event()
        self._outstanding = 0
        self._heard = time.monotonic()
        self._retry_at = 0.0
        self._reconnects = link.nc.stats["reconnects"]
        self.requests = 0
        self.unserved_since: float | None = None  # monotonic: JetStream said "cannot
        # serve" (503, no responders) to every request since, nothing else coming

    async def start(self) -> None:
        """Subscribe the inbox (live on the server when this returns) and start pulling."""

        async def on_msg(msg: Msg) -> None:
            self._on_msg(msg)

        self._sub = await subscribe_live(
            self._link.nc,
            self._inbox,
            on_msg,
            pending_msgs_limit=0,  # no limit: the consumer's max_ack_pending bounds it
            pending_bytes_limit=0,
            direct=self._on_msg,
            denials=self._link.denials,
        )
        self._want.set()
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def close(self) -> None:
        """Stop asking for messages and end the subscription; when this returns, every
        message the server sent to the inbox has been handed to ``deliver``. Idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        sub, self._sub = self._sub, None
        if sub is None:
            return
        if not self._link.nc.is_connected:
            # Nothing can arrive while disconnected, and draining would wait for a round
            # trip to time out: unsubscribe (sent, if ever, on reconnecting) and be done.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            return
        try:
            await drain_subscription(self._link.nc, sub)
        except Exception:  # the connection is gone: nothing more can arrive
            log.debug("draining the pull inbox failed", exc_info=True)

    def _on_msg(self, msg: Msg) -> None:
        self._heard = time.monotonic()
        if msg.reply:  # a delivery (status messages have no reply subject)
            self.unserved_since = None
            self._outstanding = max(0, self._outstanding - 1)
            self._deliver(msg)
        else:
            headers = msg.headers or {}
            status = headers.get("Status", "")
            description = headers.get("Description", "")
            kind = status_kind(status, description)
            if kind is not StatusKind.RETRY:
                self.unserved_since = None
            elif self.unserved_since is None:
                self.unserved_since = self._heard
            if kind is StatusKind.ENDED:
                undelivered = headers.get(PENDING_MESSAGES, "")
                if undelivered.isdigit():
                    self._outstanding = max(0, self._outstanding - int(undelivered))
                else:
                    self._outstanding = 0  # how much it asked for is not said: ask again
            elif kind is StatusKind.RETRY:
                self._outstanding = 0
                self._retry_at = self._heard + _RETRY
            elif kind is StatusKind.FATAL:
                if "deleted" in description.lower():
                    text = f"consumer {self._consumer} {DELETED}"
                else:
                    text = (
                        f"consumer {self._consumer}: {status} {description}".strip()
                        + ": choose another durable name, or delete that consumer"
                    )
                self._fail(JetStreamError(text))
                return
        if self._outstanding <= self._batch // 2:
            self._want.set()

    async def _run(self) -> None:
        nc = self._link.nc
        while not self._closed:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that comes as the event is set, and close() would wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TICK):
                    await self._want.wait()
            self._want.clear()
            now = time.monotonic()
            reconnects = nc.stats["reconnects"]
            if reconnects != self._reconnects or (
                self._outstanding and now - self._heard > _SILENCE
            ):
                self._reconnects = reconnects
                self._outstanding = 0  # the server dropped the requests of the old link
            if not nc.is_connected or now < self._retry_at:
                continue
            if self._outstanding <= self._batch // 2:
                wanted = self._batch - self._outstanding
                if not self._outstanding:
                    self._heard = now  # silence counts from the first request
                self._outstanding = self._batch
                self.requests += 1
                try:
                    await nc.publish(
                        self._subject, pull_request(wanted, EXPIRES, HEARTBEAT), reply=self._inbox
                    )
                except Exception as exc:  # closed or draining: the next tick tries again
                    log.debug("pull request not sent: %s", exc)
                    self._outstanding -= wanted
