"""``Link``: what natstream's drivers use of one NATS connection, and ``PlainLink``,
the same over nats-py's public API alone.

A link is either a :class:`~._client.FastClient` (the fast paths) or a
:class:`PlainLink` around nats-py's own ``Client`` (when the fast paths are off, see
:mod:`._compat`). Drivers hold a link, never a private name of nats-py; what they
need of nats-py's public client (``subscribe``, ``rtt``, ``stats``...) is ``link.nc``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ._client import Inbox, Listening, MsgHandler, RawHandler, light_msg_type
from ._denials import Denials, OnDenied

__all__ = ["Link", "PlainLink"]

log = logging.getLogger("natstream")

_NO_TIMEOUT = 24 * 3600  # seconds: nats-py's own PING timeout, never reached


class Link(Protocol):
    """One connection, as the drivers see it.

    Attributes:
        nc: nats-py's client, for its public API.
        fast: whether this link has the fast paths (then it is the client itself).
        writable: whether commands may be queued directly now (:meth:`queue_seq`):
            connected; always False on a plain link. An attribute, read per reply.
        item_type: a light ``Msg`` class for header-less replies of this connection.
        yield_soon: set by a raw handler's True result; the parser yields once.
        denials: who hears of the server refusing a subscription or a publish of this
            connection (permissions), by subject; each refusal is logged once.
    """

    fast: bool
    writable: bool
    item_type: type[Msg]
    yield_soon: bool

    @property
    def nc(self) -> Client: ...

    denials: Denials

    def new_inbox(self) -> str:
        """A reply subject nobody can guess: the inbox prefix and 96 random bits."""
        ...

    async def listen(
        self, subject: str, on_raw: RawHandler, on_msg: MsgHandler, *, lane: object = None
    ) -> Listening:
        """Subscribe ``subject`` (wildcards allowed): its messages go to ``on_raw``
        straight from the parser (fast) or to ``on_msg`` from nats-py's subscription
        task (plain). Handlers must be quick; an exception they raise is logged and
        the message dropped. The subscription reaches the server before anything
        published on this link after this call; ``close()`` ends it, and the server
        stops delivering.

        ``lane``: an attempt on the C extension's ``AttemptCore``, whose receive fast
        path the parser then runs in C before ``on_raw`` (fast links with the
        extension only; ignored otherwise)."""
        ...

    async def open_inbox(
        self, on_raw: RawHandler, on_msg: MsgHandler, on_denied: OnDenied, *, lane: object = None
    ) -> Inbox:
        """Subscribe a fresh inbox (:meth:`new_inbox`) for one stream's replies, as
        :meth:`listen` does; ``on_denied`` hears of the server refusing one of its
        subscriptions."""
        ...

    def set_direct(self, sub: Subscription, handler: Callable[[Msg], None]) -> None:
        """Hand ``sub``'s messages to ``handler`` straight from the parser, in order,
        instead of nats-py's queue and callback (no pending limits: ``handler`` must
        be quick). Does nothing on a plain link: ``sub``'s own callback serves."""
        ...

    def message(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> Msg:
        """A ``Msg`` from raw parts (fast links only call raw handlers)."""
        ...

    def pending_size(self) -> int:
        """Bytes waiting for the socket."""
        ...

    def queue_publish(
        self, subject: str, reply: str, payload: bytes, headers: dict[str, str] | None
    ) -> bool:
        """Queue a publish without awaiting; the caller then kicks the flusher
        (:meth:`kick`, :meth:`kick_soon`) or writes at once (:meth:`write_now`).
        ``subject`` and ``reply`` must be valid. False, having done nothing, when
        nats-py's ``publish`` must take it: not connected, payload over
        max_payload, headers it must encode, or a plain link."""
        ...

    def queue_seq(self, prefix: bytes, seq: int, payload: bytes) -> int:
        """Queue a data message whose only header is ``Ns-Seq`` (``prefix`` from
        :func:`~natstream._protocol._frames.hpub_prefix`) and wake the flusher if it
        is idle; returns the bytes now waiting for the socket. Only while
        :attr:`writable`."""
        ...

    def queue_seq_id(self, prefix: bytes, seq: int, tail: bytes, payload: bytes) -> int:
        """:meth:`queue_seq` for a data message that also carries its stream's id
        (``tail`` from :func:`~natstream._protocol._frames.id_tail`)."""
        ...

    def queue_batch(self, cmds: bytes, count: int, nbytes: int) -> int:
        """Queue ``cmds``, ``count`` data commands in one piece (``nbytes`` payload
        bytes), as :meth:`queue_seq` would one by one; returns the bytes now waiting
        for the socket. Only while :attr:`writable`."""
        ...

    def write_now(self) -> bool:
        """Write the queued commands to the socket from this call, instead of at the
        flusher's next turn (a stream's request); True when none are left queued
        (nothing was, too). False, having done nothing, when the flusher must take
        them: not connected, not TCP (nats-py's WebSocket transport sends only when
        drained), or something already waiting for the socket (the flusher's
        back-pressure)."""
        ...

    def kick_soon(self) -> None:
        """Wake the flusher from sync code, without waiting for a full buffer to
        drain (callers bound what they queue between awaits). On a fast link,
        while its parser is reading (a call from any task while the parser is
        suspended too), the commands are written when it is done with that read
        instead, in one write, or the flusher is woken then if they cannot be."""
        ...

    async def kick(self) -> None:
        """Wake the flusher, or wait for it when the pending buffer is over nats-py's
        limit (as its ``publish`` does)."""
        ...

    async def close(self) -> None:
        """Close the connection (nats-py's ``close``: pending commands are flushed)."""
        ...

    async def round_trip(self, limit: float) -> float:
        """Seconds a PING takes to come back as PONG.

        Raises:
            TimeoutError: no PONG within ``limit`` seconds; the connection stays
                usable (a late PONG is taken in stride).
            nats.errors.Error: the connection is closed.
        """
        ...


class PlainLink:
    """A :class:`Link` over nats-py's public API: no fast parser, publishes through
    ``Client.publish``, subscriptions through ``Client.subscribe``."""

    fast = False
    writable = False

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self.item_type = light_msg_type(nc)
        self.yield_soon = False
        self.denials = Denials(exact=False)  # nats-py lower-cases the server's errors
        self._ping: asyncio.Task[float] | None = None  # the PING in flight, if any

    @property
    def nc(self) -> Client:
        return self._nc

    def new_inbox(self) -> str:
        return f"{self._nc.new_inbox().rpartition('.')[0]}.{secrets.token_hex(12)}"

    async def listen(
        self, subject: str, on_raw: RawHandler, on_msg: MsgHandler, *, lane: object = None
    ) -> Listening:
        async def deliver(msg: Msg) -> None:
            try:
                on_msg(msg)
            except Exception:
                log.exception("a stream message could not be handled; message dropped")

        sub = await self._nc.subscribe(subject, cb=deliver)
        return _PlainListening(sub)

    async def open_inbox(
        self, on_raw: RawHandler, on_msg: MsgHandler, on_denied: OnDenied, *, lane: object = None
    ) -> Inbox:
        base = self.new_inbox()
        self.denials.watch(f"{base}.*", on_denied)
        listening = await self.listen(f"{base}.*", on_raw, on_msg)
        return _PlainInbox(self, base, listening, on_denied)

    def set_direct(self, sub: Subscription, handler: Callable[[Msg], None]) -> None:
        return None

    def message(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> Msg:
        raise NotImplementedError("a plain link delivers Msg objects, not raw parts")

    def pending_size(self) -> int:
        return self._nc.pending_data_size

    def queue_publish(
        self, subject: str, reply: str, payload: bytes, headers: dict[str, str] | None
    ) -> bool:
        return False

    def queue_seq(self, prefix: bytes, seq: int, payload: bytes) -> int:
        raise NotImplementedError("a plain link queues nothing itself; check writable first")

    def queue_seq_id(self, prefix: bytes, seq: int, tail: bytes, payload: bytes) -> int:
        raise NotImplementedError("a plain link queues nothing itself; check writable first")

    def queue_batch(self, cmds: bytes, count: int, nbytes: int) -> int:
        raise NotImplementedError("a plain link queues nothing itself; check writable first")

    def write_now(self) -> bool:
        return False

    def kick_soon(self) -> None:
        return None

    async def kick(self) -> None:
        return None

    async def close(self) -> None:
        ping, self._ping = self._ping, None
        if ping is not None:
            ping.cancel()
        await self._nc.close()

    async def round_trip(self, limit: float) -> float:
        # nats-py cancels its PING future when its own wait times out, and a late PONG
        # then ends its read loop for good: so give nats-py no timeout of its own and
        # stop waiting without cancelling. A PING left waiting completes when its PONG
        # comes; closing the connection settles it.
        task = self._ping
        if task is None or task.done():
            task = self._ping = asyncio.ensure_future(self._nc.rtt(timeout=_NO_TIMEOUT))
            task.set_name("natstream-link-ping")
        done, _ = await asyncio.wait({task}, timeout=limit)
        if not done:
            raise TimeoutError(f"no PONG within {limit:g} s")
        return task.result()


class _PlainListening:
    __slots__ = ("_sub",)

    def __init__(self, sub: Subscription) -> None:
        self._sub: Subscription | None = sub

    async def close(self, *, promptly: bool = True) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be gone; nothing left to undo then
                log.debug("unsubscribe failed", exc_info=True)


class _PlainInbox:
    """A stream's reply subjects on a plain link: one subscription of ``<base>.*``
    (nats-py's client cannot tell which subject a message came to, to drop the
    others early)."""

    __slots__ = ("_generation", "_link", "_listening", "_on_denied", "base", "subject")

    def __init__(
        self, link: PlainLink, base: str, listening: Listening, on_denied: OnDenied
    ) -> None:
        self._link = link
        self.base = base
        self.subject = f"{base}.0"
        self._listening: Listening | None = listening
        self._on_denied = on_denied
        self._generation = 0

    def renew(self) -> str:
        self._generation += 1
        return f"{self.base}.{self._generation}"

    async def close(self, *, promptly: bool = True) -> None:
        listening, self._listening = self._listening, None
        if listening is not None:
            self._link.denials.unwatch(f"{self.base}.*", self._on_denied)
            await listening.close(promptly=promptly)
