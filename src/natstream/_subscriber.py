"""``Subscriber``: serves streamed requests and records subjects, over one connection.

It owns the connection, the stream subscriptions and the recordings. Requests are
routed here (rejected at once when malformed, too large, or over a subscription's
limit) and each accepted one becomes a stream of :mod:`natstream._responder`. A
stream's control traffic (acks, heartbeats, cancel) arrives on one wildcard
subscription per connection, under an unguessable per-stream token, and is
dispatched to the stream it names.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from types import TracebackType
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from ._config import Config, as_config
from ._durable import DurableRecorders, DurableRecording
from ._errors import (
    NatstreamError,
    SubscriberClosedError,
)
from ._events import ConnectionEventHook, ConnectionWatch
from ._lifecycle import (
    SubscriberState,
    SubscriberStats,
    Tally,
    check_limit,
    check_options,
    close_quietly,
    connect_subscriber,
    not_open_error,
)
from ._recording import Recording, default_formatter
from ._responder import (
    Batch,
    BatchHandler,
    Dispatcher,
    Generator,
    GeneratorHandler,
    IndexHandler,
    Kind,
    StreamSubscription,
    index_kind,
    subscribe_control,
)
from ._responder._handlers import (
    BATCH_SHAPE,
    INDEX_SHAPE,
    check_generator_handler,
    check_index_handler,
)
from ._service import ServiceInfo, ServiceResponder, check_endpoint_name, endpoint_name
from ._signals import until_stopped
from ._subjects import validate_queue, validate_subscribe_subject
from ._tracing import tracing_for
from ._transport import Link, subscribe_live
from ._writers import RecordSink

log = logging.getLogger("natstream")

# Seconds close() gives the subscriber's pending sends (rejections, markers) at least,
# whatever is left of the grace period: each takes a moment on a live connection.
_SEND_WAIT = 1.0

__all__ = ["Subscriber", "SubscriberState", "SubscriberStats"]


class Subscriber(DurableRecorders):
    """Responds to streamed requests; also records subjects into writers.

    ``async with Subscriber(config) as sub:``, or ``sub = await
    Subscriber.connect(servers)`` and ``await sub.close()``. A subscriber is opened
    once: after :meth:`close` create a new one. A service serves until SIGTERM or
    Ctrl-C with :meth:`serve_forever`.

    Args:
        close_grace: seconds :meth:`close` lets in-flight streams finish (max 5 by
            default), after which they are cancelled.
        max_concurrent_streams: default per-subscription limit (a subscription's own
            ``max_concurrent_streams``, when not None, replaces it); requests beyond
            it get an immediate retryable 503 "busy" error.
        max_request_size: larger requests get a 413 error reply (None: only the
            server's max_payload limits them).
        max_stream_duration: seconds any one stream may last (None: no limit).
        send_exception_text: when a handler raises, send the exception's text to the
            requester (off by default: a generic message with an error id is sent and
            the traceback is logged locally with that id).
        stall_factor: missed requester heartbeats before its stream is stopped.
        control: where requesters send a stream's control messages (acks, heartbeats,
            cancel). ``"auto"``: to a subject under the inbox prefix that this
            subscriber subscribes once, or, when the server refuses that subscription
            (least-privilege permissions), as with ``"service"``: to
            ``<request subject>.<stream id>``, which each stream subscribes itself
            (docs/protocol.md; streams through an account import always do this).
        plain_end: how a stream to a requester that speaks only the in-band markers
            ends: ``"marker"`` (``__STREAM_END__``, what such peers expect), or
            ``"empty"``: an empty message, as requesters of the NATS request-many
            pattern (ADR-47: ``request_many`` with its sentinel, ``nats req
            --wait-for-empty``) expect; an error marker is then followed by one too.
            natstream requesters get the marker either way.
        on_connection_event: called with a :class:`ConnectionEvent` when the
            connection connects, is lost, comes back, hears that its server goes
            into lame duck mode, or closes (see :data:`ConnectionEventHook`). The
            same events are logged at INFO.
        service: make the subscriber a NATS service (ADR-32) that ``nats micro``
            and ``natstream services`` list: it answers ``$SRV.PING``, ``$SRV.INFO``
            and ``$SRV.STATS`` from the moment it is open, and each stream
            subscription is one of its endpoints. Opening raises
            :class:`PermissionDeniedError` if the server refuses those subjects.

    The subscribing methods (``stream_subscribe_handler``, ``stream_handler``...)
    return once the subscription is live on the server, and raise
    :class:`PermissionDeniedError` when the server refuses it,
    :class:`SubscriberClosedError` when the subscriber is not open, and
    :class:`InvalidSubjectError` for a bad subject or queue group. Their
    ``endpoint`` names the subscription as an endpoint of the service (default:
    the subject, each character other than letters, digits, ``_`` and ``-``
    replaced by ``_``; :class:`ConfigError` when it holds others).

    Raises:
        ConfigError: an argument is out of range; ``config`` asks for tracing and
            OpenTelemetry is not installed.
        TypeError: ``on_connection_event`` is not a plain callable, or ``service``
            is not a :class:`ServiceInfo`.
    """

    def __init__(
        self,
        config: Config | Sequence[str] | str,
        *,
        close_grace: float = 5.0,
        max_concurrent_streams: int = 1000,
        max_request_size: int | None = None,
        max_stream_duration: float | None = None,
        send_exception_text: bool = False,
        stall_factor: float = 3.0,
        control: str = "auto",
        plain_end: str = "marker",
        on_connection_event: ConnectionEventHook | None = None,
        service: ServiceInfo | None = None,
    ) -> None:
        check_options(
            close_grace=close_grace,
            max_concurrent_streams=max_concurrent_streams,
            max_request_size=max_request_size,
            max_stream_duration=max_stream_duration,
            stall_factor=stall_factor,
            control=control,
            plain_end=plain_end,
            on_connection_event=on_connection_event,
            service=service,
        )
        self.config = as_config(config)
        self._tracing = tracing_for(self.config)
        self.service = service
        self._service: ServiceResponder | None = None  # answering $SRV requests
        self.close_grace = close_grace
        self.max_concurrent_streams = max_concurrent_streams
        self.max_request_size = max_request_size
        self.max_stream_duration = max_stream_duration
        self.send_exception_text = send_exception_text
        self.stall_factor = stall_factor
        self._state = SubscriberState.NEW
        self._closed = asyncio.Event()
        self._link: Link | None = None
        self.control = control
        self.plain_end = plain_end
        self._dispatch: Dispatcher | None = None  # once open
        self._subscriptions: set[StreamSubscription] = set()
        self._tally = Tally()  # what stopped subscriptions counted
        self._watch = ConnectionWatch(
            on_connection_event,
            closing=lambda: self._state in (SubscriberState.CLOSING, SubscriberState.CLOSED),
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._recordings: dict[int, Recording] = {}  # by id() of their subscription
        self._durables: set[DurableRecording] = set()

    # ------------------------------------------------------------ lifecycle

    @classmethod
    async def connect(cls, servers: list[str] | str | Config, **options: Any) -> Subscriber:
        """Connect to ``servers`` (a :class:`Config` for auth/TLS, or server URLs: a
        list, or one str of comma-separated URLs).

        Keyword options are those of :class:`Subscriber`.

        Raises:
            NoServersError: no server could be reached.
            TypeError, ConfigError: ``servers`` is not a Config or valid server URLs.
        """
        sub = cls(servers, **options)
        await sub._open()
        return sub

    async def _open(self) -> None:
        """Connect and subscribe to the control subjects; opening an open subscriber
        does nothing. Cancellation (or a failure) leaves it closed.

        Raises:
            NoServersError: no server could be reached.
            SubscriberClosedError: it was closed (before or while opening).
        """
        state = self._state
        if state is SubscriberState.OPEN:
            return
        if state is SubscriberState.OPENING:
            raise NatstreamError("this subscriber is already opening; await the first opening")
        if state is not SubscriberState.NEW:
            raise SubscriberClosedError(
                "this subscriber is closed and cannot be reopened; create a new Subscriber"
            )
        self._state = SubscriberState.OPENING
        try:
            link = await connect_subscriber(self.config, self._on_nats_error, self._watch)
        except BaseException:
            self._set_closed()
            raise
        dispatch = Dispatcher(
            link,
            "",
            accepting=lambda: self._state is SubscriberState.OPEN,
            spawn=self._spawn,
            stall_factor=self.stall_factor,
            max_duration=self.max_stream_duration,
            max_request_size=self.max_request_size,
            plain_end_empty=self.plain_end == "empty",
        )
        try:
            dispatch.control_prefix = await subscribe_control(
                link, dispatch, self.config.inbox_prefix, service_routed=self.control == "service"
            )
            if self.service is not None:
                self._service = ServiceResponder(self.service, link, lambda: self._subscriptions)
                await self._service.start()
            if self._state is not SubscriberState.OPENING:  # close() was called meanwhile
                raise SubscriberClosedError("this subscriber was closed while it was opening")
        except BaseException:
            self._set_closed()
            if self._service is not None:
                await self._service.stop()
            await close_quietly(link)
            raise
        self._link = link
        self._dispatch = dispatch
        self._state = SubscriberState.OPEN
        self._watch.connected(link.nc)

    def _set_closed(self) -> None:
        self._state = SubscriberState.CLOSED
        self._closed.set()

    async def close(self, grace: float | None = None) -> None:
        """Stop taking requests; let in-flight streams finish within ``grace`` seconds
        (``close_grace`` when None), flush recorders, disconnect. Returns once every
        task the subscriber and its streams started has ended.

        No requester is left without an answer (see :meth:`StreamSubscription.stop`):
        requests routed here while it closes get a retryable 503 "shutting down"
        error at once, and streams still running when the grace period ends get the
        same error marker before their handlers are cancelled, so a requester with
        retries resumes on another responder. Pending sends (those markers,
        heartbeats) get what is left of the grace period, at least a second, then
        are cancelled.

        Idempotent; a second concurrent call waits for the first. Closing a
        subscriber that was never opened only marks it closed.
        """
        state = self._state
        if state is SubscriberState.CLOSED:
            return
        if state is SubscriberState.CLOSING:
            await self._closed.wait()
            return
        if state is not SubscriberState.OPEN:  # an opening in progress sees this
            self._set_closed()
            return
        self._state = SubscriberState.CLOSING
        grace = self.close_grace if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        try:
            if self._service is not None:  # a closing service leaves the listings
                await self._service.stop()
            subs = list(self._subscriptions)
            await asyncio.gather(*(s.stop(grace) for s in subs))
            await self._stop_durables()
            for key in list(self._recordings):
                await _stop_recording(self._recordings.pop(key))
            if self._tasks:
                wait = max(_SEND_WAIT, deadline - loop.time())
                await asyncio.wait(set(self._tasks), timeout=wait)
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            link, self._link = self._link, None
            if link is not None:
                await close_quietly(link)
            self._set_closed()

    async def __aenter__(self) -> Subscriber:
        """Open the subscriber (see :meth:`connect`); an open one is returned as it is.

        Raises:
            NoServersError: no server could be reached.
            SubscriberClosedError: it was closed: create a new one.
        """
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def serve_forever(
        self, stop: asyncio.Event | None = None, *, grace: float | None = None
    ) -> signal.Signals | None:
        """Serve until SIGINT or SIGTERM (or ``stop`` is set, or :meth:`close` is
        called elsewhere), then close as :meth:`close` does, with ``grace`` seconds
        for the streams in flight (``close_grace`` when None); return once closed:
        the signal that stopped it, or None.

        Meanwhile SIGINT (Ctrl-C) and SIGTERM stop it instead of their usual effect
        (in the main thread; an ignored one stays ignored); a signal during the close
        is logged and changes nothing (the grace bounds it); the handlers set with
        ``signal.signal`` before are back when it returns. Cancellation closes the
        subscriber the same way, then propagates.

        Raises:
            SubscriberClosedError: the subscriber is not open.
        """
        self._check_open()
        grace = self.close_grace if grace is None else grace
        return await until_stopped(partial(self.close, grace), grace, stop, self._closed)

    @property
    def nc(self) -> Client:
        """The underlying nats-py connection (until :meth:`close` has closed it)."""
        if self._link is None:
            raise not_open_error(self._state)
        return self._link.nc

    @property
    def service_id(self) -> str | None:
        """This instance's id as a NATS service (the last token of
        ``$SRV.INFO.<name>.<id>``); None without ``service`` or before opening."""
        return None if self._service is None else self._service.id

    def _check_open(self) -> Link:
        if self._state is not SubscriberState.OPEN or self._link is None:
            raise not_open_error(self._state)
        return self._link

    # ------------------------------------------------------------ what streams need (Host)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run a small send as a task called ``name`` (``natstream-...``), without
        waiting for it; :meth:`close` stops it."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drop_control(self, token: str) -> None:
        if self._dispatch is not None:
            self._dispatch.drop(token)

    def _forget(self, subscription: StreamSubscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.discard(subscription)
            self._tally.stopped(subscription)

    # ------------------------------------------------------------ stats

    def stats(self) -> SubscriberStats:
        """Counters since the subscriber opened and gauges of now (cheap; no I/O).

        See :class:`SubscriberStats`; each subscription's own are
        :meth:`StreamSubscription.stats`.
        """
        link = self._link
        watch = self._watch
        return self._tally.stats(
            self._state,
            connected=link is not None and link.nc.is_connected,
            server=watch.server,
            serving=self._subscriptions,
            reconnects=watch.reconnects,
            disconnects=watch.disconnects,
        )

    # ------------------------------------------------------------ control messages

    def _on_nats_error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            recording = self._recordings.get(id(exc.sub))
            if recording is not None:
                recording._slow_consumer()

    # ------------------------------------------------------------ responders

    async def _subscribe(
        self,
        subject: str,
        kind: Kind,
        queue: str | None,
        max_concurrent_streams: int | None,
        endpoint: str | None,
    ) -> StreamSubscription:
        link = self._check_open()
        validate_subscribe_subject(subject)
        q = validate_queue(queue)
        name = endpoint_name(subject) if endpoint is None else check_endpoint_name(endpoint)
        if max_concurrent_streams is None:
            max_concurrent_streams = self.max_concurrent_streams
        else:
            check_limit("max_concurrent_streams", max_concurrent_streams)
        handle = StreamSubscription(self, subject, q, kind, max_concurrent_streams, name)
        assert self._dispatch is not None  # open (checked above)
        serve = partial(self._dispatch.serve, handle)

        async def on_request(msg: Msg) -> None:
            serve(msg)

        sub = await subscribe_live(
            link.nc, subject, on_request, queue=q, direct=serve, denials=link.denials
        )
        handle._attach(sub, link.nc)
        self._subscriptions.add(handle)
        return handle

    async def stream_subscribe_handler(
        self,
        subject: str,
        handler: IndexHandler,
        *,
        queue: str | None = None,
        max_concurrent_streams: int | None = None,
        pack: bool = False,
        endpoint: str | None = None,
    ) -> StreamSubscription:
        """Serve ``subject`` with an index handler (sync or async).

        ``handler(request, index) -> (data | None, more, err)``, ``index`` counting
        calls from 0. If ``err`` is set, the error marker is sent and the stream ends;
        else ``data`` (when not None) is sent; when ``more`` is False the end marker
        follows. Returns once the subscription is live on the server.

        ``handler`` is a function (``def`` or ``async def``), a method, a lambda, a
        ``functools.partial`` or a callable object, taking (request, index). Anything
        else raises ``TypeError`` here, not at the first request. A call that returns
        something else than the tuple fails its stream with a 500.

        ``pack=True`` (for many small replies): results of consecutive calls of a
        sync handler are packed into few NATS messages for requesters that unpack
        (natstream's do); a reply is held back at most 5 ms, or until an async
        result is awaited. The requester still sees one message per reply.

        Cancellation: when the requester cancels or vanishes, or the deadline passes,
        the handler's task is cancelled (``CancelledError`` inside an async handler).
        """
        check_index_handler(handler, "stream_subscribe_handler", INDEX_SHAPE)
        return await self._subscribe(
            subject, index_kind(handler, pack=pack), queue, max_concurrent_streams, endpoint
        )

    async def batch_stream_subscribe_handler(
        self,
        subject: str,
        batch_handler: BatchHandler,
        *,
        queue: str | None = None,
        max_concurrent_streams: int | None = None,
        endpoint: str | None = None,
    ) -> StreamSubscription:
        """Serve ``subject`` with a batch handler: ``(request, batch_index) ->
        (items, more, err)``; items reach the requester's handler in order, one message
        each. A natstream requester gets each batch packed into as few NATS messages
        as flow control and the server's max_payload allow; a plain one, one reply per
        item.

        ``batch_handler`` is accepted as ``stream_subscribe_handler``'s handler is
        (``TypeError`` here otherwise); ``items`` is a list (or tuple) of bytes.
        """
        check_index_handler(batch_handler, "batch_stream_subscribe_handler", BATCH_SHAPE)
        return await self._subscribe(
            subject, Batch(batch_handler), queue, max_concurrent_streams, endpoint
        )

    async def stream_handler(
        self,
        subject: str,
        fn: GeneratorHandler,
        *,
        queue: str | None = None,
        max_concurrent_streams: int | None = None,
        endpoint: str | None = None,
    ) -> StreamSubscription:
        """Serve ``subject`` with an async generator: ``async def fn(request): yield b"..."``.

        Each yielded bytes is one reply; a yielded list of bytes is several replies
        sent together (packed into few NATS messages for requesters that unpack:
        the way to stream many small replies fast). Returning ends the stream; an
        exception ends it with an error marker (raise :class:`StreamError` to choose
        the message, code and retryability sent).

        ``fn`` is an async generator function, or a method, ``functools.partial`` or
        callable object around one, taking (request). A coroutine function (``async
        def`` without ``yield``), a generator function (``def`` with ``yield``) or a
        callable taking other arguments raises ``TypeError`` here. A plain function
        returning an async iterator is accepted (e.g. ``lambda r: gen(r, extra)``);
        when what it returns is not one, that stream fails with a 500.
        """
        check_generator_handler(fn, "stream_handler")
        return await self._subscribe(
            subject, Generator(fn), queue, max_concurrent_streams, endpoint
        )

    # ------------------------------------------------------------ recorders

    async def stream_subscribe_with_writer(
        self,
        subject: str,
        writer: RecordSink,
        formatter: Callable[[Msg], bytes] = default_formatter,
        *,
        queue: str | None = None,
    ) -> Recording:
        """Write every message on ``subject`` (wildcards allowed) to ``writer``.

        Each message goes through ``formatter(msg) -> bytes`` (default: one
        ``[YYYY-MM-DD HH:MM:SS.mmm] subject: data`` line) and one ``writer.write``
        call, in arrival order. Returns once the subscription is live.
        :meth:`Recording.stop`, or closing this subscriber, drains what was received
        and flushes the writer (it does not close it: the writer is yours). Messages
        nats-py dropped because the recorder fell behind are counted in
        ``stats().dropped`` and logged.
        """
        link = self._check_open()
        validate_subscribe_subject(subject)
        q = validate_queue(queue)
        recording = Recording(subject, writer, formatter)
        sub = await subscribe_live(
            link.nc, subject, recording._on_msg, queue=q, denials=link.denials
        )
        recording._attach(sub, link.nc)
        self._recordings[id(sub)] = recording  # closing the subscriber stops it
        return recording


async def _stop_recording(recording: Recording) -> None:
    """Stop a recording the subscriber is closing under; one its owner stopped (and
    heard the error of, if any) is left alone."""
    if recording.stopped and recording.error is not None:
        return
    try:
        await recording.stop()
    except Exception:
        log.exception("recording of %r: flushing the writer failed", recording.subject)
