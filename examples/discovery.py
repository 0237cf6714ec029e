"""A service that NATS tools list (nats micro ls, natstream services) and that traces
its streams with OpenTelemetry (pip install 'natstream[otel]' opentelemetry-sdk)."""

import asyncio
import os
from collections.abc import AsyncIterator

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from natstream import Config, Pool, ServiceInfo, StreamRequest, Subscriber

URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")


async def ticks(request: StreamRequest) -> AsyncIterator[bytes]:
    """Five prices of the instrument the request names."""
    for i in range(5):
        yield f"{request.data.decode()} {1.0850 + i / 10_000:.4f}".encode()


async def main() -> None:
    spans = InMemorySpanExporter()  # in production: an OTLP exporter, batched
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))

    # --8<-- [start:service]
    config = Config([URL], tracing=True, tracer_provider=provider)
    service = ServiceInfo("prices", "1.0.0", "streams of prices", {"team": "markets"})
    async with Subscriber(config, service=service) as sub:
        prices = await sub.stream_handler("prices.ticks", ticks, queue="prices", endpoint="ticks")
        print(f"serving as {service.name} {sub.service_id}")
        # --8<-- [end:service]
        async with Pool(config) as pool, pool.stream("prices.ticks", b"EURUSD") as stream:
            async for msg in stream:
                print(msg.data.decode())
        await prices.wait_idle()  # the responder's span ends with its stream
    provider.shutdown()

    by_id = {s.context.span_id: s for s in spans.get_finished_spans()}
    for span in by_id.values():
        parent = by_id.get(span.parent.span_id) if span.parent else None
        print(f"span {span.name!r}" + (f", child of {parent.name!r}" if parent else ""))


asyncio.run(main())
