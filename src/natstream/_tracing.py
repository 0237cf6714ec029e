"""OpenTelemetry tracing of streams, optional (``pip install 'natstream[otel]'``).

Off unless asked for with ``Config(tracing=True)``. Nothing imports OpenTelemetry
until a :class:`Pool` or :class:`Subscriber` with tracing on is made; with it off,
the requester and the responder test one ``None`` per stream and nothing per message.

A requester's stream is one span, ``request <subject>`` (kind PRODUCER), from its
first attempt to its end, with an ``attempt`` event as each attempt ends. Its
context travels in each request's headers (W3C ``traceparent`` and ``tracestate``,
and ``baggage``, through OpenTelemetry's configured propagator); the responder's span,
``process <subscribed subject>`` (kind CONSUMER), continues that trace as its child
and is the current span while the handler runs. Attributes follow OpenTelemetry's
messaging conventions (``messaging.system`` is ``nats``), natstream's own are named
``natstream.*`` (docs/operations.md, "Discovery and tracing").
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError
from ._protocol import Outcome, Resume

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from ._config import Config

__all__ = ["RequesterSpan", "ResponderSpan", "Tracing", "tracing_for"]

SYSTEM = "nats"
INSTALL_HINT = "tracing needs OpenTelemetry: pip install 'natstream[otel]'"


def tracing_for(config: Config) -> Tracing | None:
    """The tracing ``config`` asks for; None when it is off.

    Raises:
        ConfigError: tracing is on and OpenTelemetry is not installed, or a
            ``tracer_provider`` is given with tracing off.
    """
    if not config.tracing:
        if config.tracer_provider is not None:
            raise ConfigError("tracer_provider is set but tracing is off: set tracing=True")
        return None
    try:
        return Tracing(config.tracer_provider)
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None


def _version() -> str:
    try:
        return metadata.version("natstream")
    except metadata.PackageNotFoundError:
        return "unknown"


class Tracing:
    """Starts the spans of streams, with one tracer.

    Args:
        provider: an OpenTelemetry ``TracerProvider``; None: the global one.

    Raises:
        ImportError: OpenTelemetry is not installed.
    """

    def __init__(self, provider: Any = None) -> None:
        from opentelemetry import propagate, trace  # noqa: F401 - both are needed later

        self.tracer: Tracer = trace.get_tracer("natstream", _version(), tracer_provider=provider)

    def requester(self, subject: str, size: int) -> RequesterSpan:
        """The span of a stream a requester opens now, in the current context."""
        return RequesterSpan(self.tracer, subject, size)

    def responder(
        self, msg: Msg, subscribed: str, queue: str, resume: Resume | None
    ) -> ResponderSpan:
        """The span of a stream served for ``msg``, continuing the trace its headers
        carry (a new trace when they carry none)."""
        return ResponderSpan(self.tracer, msg, subscribed, queue, resume)


def _common(subject: str, operation: str, kind: str, size: int) -> dict[str, Any]:
    return {
        "messaging.system": SYSTEM,
        "messaging.destination.name": subject,
        "messaging.operation.type": kind,
        "messaging.operation.name": operation,
        "messaging.message.body.size": size,
    }


def _fail(span: Span, error_type: str, description: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, description))


class RequesterSpan:
    """The span of one requester stream, across its attempts.

    Attributes:
        replies, bytes: data replies and payload bytes received, over all attempts.
    """

    __slots__ = ("_attempts", "_context", "_ended", "_resume", "_span", "bytes", "replies")

    def __init__(self, tracer: Tracer, subject: str, size: int) -> None:
        from opentelemetry import trace

        self._span = tracer.start_span(
            f"request {subject}",
            kind=trace.SpanKind.PRODUCER,
            attributes=_common(subject, "request", "send", size),
        )
        # On the caller's context: its baggage travels with the span.
        self._context: Context = trace.set_span_in_context(self._span)
        self._attempts = 0
        self._resume: Resume | None = None
        self._ended = False
        self.replies = self.bytes = 0

    def headers(self, headers: Mapping[str, str] | None, resume: Resume | None) -> dict[str, str]:
        """The headers of the next attempt's request: ``headers`` and the trace
        context (a new dict). ``resume``: where that attempt resumes."""
        from opentelemetry import propagate

        out = dict(headers) if headers else {}
        propagate.inject(out, context=self._context)
        self._attempts += 1
        self._resume = resume
        return out

    def attempt_ended(
        self, outcome: Outcome, replies: int, nbytes: int, error: BaseException | None
    ) -> None:
        """The current attempt is over: its event."""
        self.replies += replies
        self.bytes += nbytes
        attributes: dict[str, Any] = {
            "natstream.attempt": self._attempts,
            "natstream.outcome": outcome.value,
            "natstream.replies": replies,
        }
        if self._resume is not None:
            attributes["natstream.resumed_from"] = self._resume.seq
        if error is not None:
            attributes["error.type"] = type(error).__name__
        self._span.add_event("attempt", attributes)

    def end(self, outcome: Outcome, error: BaseException | None = None) -> None:
        """End the span with the stream's outcome (the first call counts)."""
        if self._ended:
            return
        self._ended = True
        span = self._span
        span.set_attributes(
            {
                "natstream.outcome": outcome.value,
                "natstream.replies": self.replies,
                "natstream.bytes": self.bytes,
                "natstream.retries": max(0, self._attempts - 1),
            }
        )
        if self._resume is not None:
            span.set_attribute("natstream.resumed_from", self._resume.seq)
        if outcome is Outcome.FAILED:
            _fail(span, type(error).__name__ if error else "_OTHER", str(error or "failed"))
        span.end()


class ResponderSpan:
    """The span of one stream a responder serves.

    Attributes:
        context: a copy of the context it was made in with the span current: the
            stream's task and handler calls run in it.
    """

    __slots__ = ("_span", "context")

    def __init__(
        self, tracer: Tracer, msg: Msg, subscribed: str, queue: str, resume: Resume | None
    ) -> None:
        from opentelemetry import context, propagate, trace

        parent = propagate.extract(msg.headers or {})
        attributes = _common(msg.subject, "process", "process", len(msg.data))
        if queue:
            attributes["messaging.consumer.group.name"] = queue
        if resume is not None:
            attributes["natstream.resumed_from"] = resume.seq
        self._span = tracer.start_span(
            f"process {subscribed}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
        )
        self.context = contextvars.copy_context()
        self.context.run(context.attach, trace.set_span_in_context(self._span, parent))

    def end(self, outcome: Outcome, replies: int, nbytes: int, error: str) -> None:
        """End the span: the stream is over (``error``: its error marker's code and
        message, "" when it sent none)."""
        span = self._span
        span.set_attributes(
            {
                "natstream.outcome": outcome.value,
                "natstream.replies": replies,
                "natstream.bytes": nbytes,
            }
        )
        if outcome is Outcome.FAILED:
            code, _, _ = error.partition(" ")
            _fail(span, code if code.isdigit() else "_OTHER", error or "connection lost")
        span.end()
