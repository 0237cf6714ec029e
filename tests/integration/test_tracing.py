"""OpenTelemetry tracing (``Config(tracing=True)``): a span per stream on each side,
the responder's continuing the requester's trace through the request's headers,
recorded by the SDK's in-memory exporter; nothing of it when tracing is off or
OpenTelemetry is not installed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conftest import FAST
from natstream import Config, ConfigError, Pool, StreamError, StreamRequest, Subscriber
from natstream.server import NatsServer


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    yield spans
    spans.shutdown()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    yield tp
    tp.shutdown()


def traced(server: NatsServer, provider: TracerProvider) -> Config:
    return Config([server.url], idle_per_server=1, stream=FAST, tracing=True,
                  tracer_provider=provider)  # fmt: skip


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def attributes(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def test_one_span_per_stream_on_each_side(
    server: NatsServer, subject: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The responder's span is the requester's child, current in the handler, and
    the caller's baggage reaches the handler."""
    tracer = provider.get_tracer("test")
    seen: dict[str, object] = {}

    async def rows(request: StreamRequest) -> AsyncIterator[bytes]:
        seen["headers"] = dict(request.headers or {})
        seen["tenant"] = baggage.get_baggage("tenant")
        with tracer.start_as_current_span("query"):
            for i in range(5):
                yield b"row %d" % i

    async with (
        Subscriber(traced(server, provider)) as sub,
        Pool(traced(server, provider)) as pool,
    ):
        handle = await sub.stream_handler(subject, rows, queue="workers")
        token = context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            with tracer.start_as_current_span("caller"):
                await pool.stream_request(subject, b"abc", lambda m: True)
        finally:
            context.detach(token)
        await handle.wait_idle()
    [caller] = named(exporter, "caller")
    [request] = named(exporter, f"request {subject}")
    [process] = named(exporter, f"process {subject}")
    [query] = named(exporter, "query")
    assert parent_of(request) == caller.context.span_id
    assert parent_of(process) == request.context.span_id
    assert parent_of(query) == process.context.span_id
    assert len({s.context.trace_id for s in (caller, request, process, query)}) == 1
    assert (request.kind, process.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    headers = seen["headers"]
    assert isinstance(headers, dict)
    assert headers["traceparent"].split("-")[2] == f"{request.context.span_id:016x}"
    assert seen["tenant"] == "acme"
    assert attributes(request) == {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.operation.type": "send",
        "messaging.operation.name": "request",
        "messaging.message.body.size": 3,
        "natstream.outcome": "completed",
        "natstream.replies": 5,
        "natstream.bytes": 25,
        "natstream.retries": 0,
    }
    assert attributes(process) == {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.body.size": 3,
        "messaging.consumer.group.name": "workers",
        "natstream.outcome": "completed",
        "natstream.replies": 5,
        "natstream.bytes": 25,
    }
    [attempt] = request.events
    assert attempt.name == "attempt"
    assert dict(attempt.attributes or {}) == {
        "natstream.attempt": 1,
        "natstream.outcome": "completed",
        "natstream.replies": 5,
    }
    assert request.status.status_code is process.status.status_code is StatusCode.UNSET


async def test_retries_are_events_and_the_retry_resumes_in_the_same_trace(
    server: NatsServer, subject: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    calls = 0

    async def flaky(request: StreamRequest) -> AsyncIterator[bytes]:
        nonlocal calls
        calls += 1
        for i in range(request.resume.seq if request.resume else 0, 6):
            if calls == 1 and i == 3:
                raise StreamError("try again", code=503, retryable=True)
            yield b"%d" % i

    async with (
        Subscriber(traced(server, provider)) as sub,
        Pool(traced(server, provider)) as pool,
    ):
        handle = await sub.stream_handler(subject, flaky)
        await pool.stream_request_with_retry(subject, b"", 2, 0.0, lambda m: True)
        await handle.wait_idle()
    [request] = named(exporter, f"request {subject}")
    first, second = sorted(named(exporter, f"process {subject}"), key=lambda s: s.start_time or 0)
    told = attributes(request)
    assert (told["natstream.retries"], told["natstream.resumed_from"]) == (1, 3)
    assert (told["natstream.replies"], told["natstream.outcome"]) == (6, "completed")
    events = [dict(e.attributes or {}) for e in request.events]
    assert events == [
        {"natstream.attempt": 1, "natstream.outcome": "failed", "natstream.replies": 3,
         "error.type": "StreamError"},
        {"natstream.attempt": 2, "natstream.outcome": "completed", "natstream.replies": 3,
         "natstream.resumed_from": 3},
    ]  # fmt: skip
    assert parent_of(first) == parent_of(second) == request.context.span_id
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "503 try again"
    assert attributes(first)["error.type"] == "503"
    assert attributes(second)["natstream.resumed_from"] == 3


async def test_failed_and_cancelled_streams(
    server: NatsServer, subject: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def endless(request: StreamRequest) -> AsyncIterator[bytes]:
        if request.data == b"fail":
            raise StreamError("no such report", code=404, retryable=False)
        while True:
            yield b"x"

    async with (
        Subscriber(traced(server, provider)) as sub,
        Pool(traced(server, provider)) as pool,
    ):
        handle = await sub.stream_handler(subject, endless)
        with pytest.raises(StreamError):
            await pool.stream_request(subject, b"fail", lambda m: True)
        async with pool.stream(subject) as stream:
            async for _ in stream:
                break
        await handle.wait_idle()
    failed, cancelled = named(exporter, f"request {subject}")
    assert failed.status.status_code is StatusCode.ERROR
    assert attributes(failed)["error.type"] == "StreamError"
    assert attributes(failed)["natstream.outcome"] == "failed"
    assert attributes(cancelled)["natstream.outcome"] == "cancelled"
    assert cancelled.status.status_code is StatusCode.UNSET
    outcomes = sorted(
        str(attributes(s)["natstream.outcome"]) for s in named(exporter, f"process {subject}")
    )
    assert outcomes == ["cancelled", "failed"]


async def test_a_sync_first_reply_runs_in_the_span(
    server: NatsServer, subject: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A sync index handler's first call is made in the request's dispatch, before
    the stream's task: it sees the stream's span too."""
    current: list[int] = []

    def three(request: StreamRequest, index: int) -> tuple[bytes, bool, None]:
        current.append(trace.get_current_span().get_span_context().span_id)
        return b"%d" % index, index < 2, None

    async with (
        Subscriber(traced(server, provider)) as sub,
        Pool(traced(server, provider)) as pool,
    ):
        handle = await sub.stream_subscribe_handler(subject, three)
        await pool.stream_request(subject, b"", lambda m: True)
        await handle.wait_idle()
    [process] = named(exporter, f"process {subject}")
    assert current == [process.context.span_id] * 3


async def test_off_by_default(server: NatsServer, subject: str, pool: Pool) -> None:
    headers: list[dict[str, str]] = []

    def one(request: StreamRequest, index: int) -> tuple[bytes, bool, None]:
        headers.append(dict(request.headers or {}))
        return b"x", False, None

    async with Subscriber([server.url]) as sub:
        await sub.stream_subscribe_handler(subject, one)
        await pool.stream_request(subject, b"", lambda m: True)
    assert len(headers) == 1
    assert "traceparent" not in headers[0]


def test_a_provider_without_tracing_is_a_mistake(provider: TracerProvider) -> None:
    config = Config(["nats://127.0.0.1:4222"], tracer_provider=provider)
    with pytest.raises(ConfigError, match="tracing=True"):
        Pool(config)


def test_without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    config = Config(["nats://127.0.0.1:4222"], tracing=True)
    for make in (Pool, Subscriber):
        with pytest.raises(ConfigError, match=r"pip install 'natstream\[otel\]'"):
            make(config)


def test_natstream_does_not_import_opentelemetry_unless_asked() -> None:
    code = (
        "import sys, natstream\n"
        "natstream.Pool(['nats://127.0.0.1:4222'])\n"
        "natstream.Subscriber(['nats://127.0.0.1:4222'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
