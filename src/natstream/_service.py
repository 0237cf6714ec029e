"""A Subscriber as a NATS service (ADR-32): ``ServiceInfo``, and the answers to
``$SRV.PING``, ``$SRV.INFO`` and ``$SRV.STATS`` that make it discoverable.

Each verb is subscribed three times, without a queue group: ``$SRV.<VERB>`` (every
service), ``$SRV.<VERB>.<name>`` (every instance of one service) and
``$SRV.<VERB>.<name>.<id>`` (one instance). Every stream subscription of the
subscriber is one endpoint; its figures are whole streams (docs/operations.md,
"Discovery and tracing").
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ._errors import ConfigError, ConnectionLostError
from ._responder import StreamSubscription
from ._transport import Link, publish, subscribe_live

__all__ = [
    "INFO_TYPE",
    "PING_TYPE",
    "STATS_TYPE",
    "ServiceInfo",
    "ServiceResponder",
    "check_endpoint_name",
    "endpoint_name",
]

log = logging.getLogger("natstream")

PING_TYPE = "io.nats.micro.v1.ping_response"
INFO_TYPE = "io.nats.micro.v1.info_response"
STATS_TYPE = "io.nats.micro.v1.stats_response"
PREFIX = "$SRV"
VERBS = ("PING", "INFO", "STATS")

NAME = re.compile(r"[A-Za-z0-9_-]+")
# Semantic versioning 2.0.0: MAJOR.MINOR.PATCH, an optional pre-release, optional build.
_IDENT = r"(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)"
SEMVER = re.compile(
    rf"(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)"
    rf"(?:-{_IDENT}(?:\.{_IDENT})*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
_NOT_NAME = re.compile(r"[^A-Za-z0-9_-]")

# What every natstream endpoint says of itself in its metadata: the stream protocol
# it speaks (a plain NATS request to it gets the in-band markers).
ENDPOINT_METADATA = MappingProxyType({"natstream.protocol": "1"})


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What a :class:`Subscriber` says of itself as a NATS service (ADR-32).

    Given as ``Subscriber(..., service=ServiceInfo(...))``, it makes the subscriber
    answer ``$SRV.PING``, ``$SRV.INFO`` and ``$SRV.STATS`` as NATS services do, so
    ``nats micro ls`` and ``natstream services`` list it; every stream subscription
    is an endpoint. Each instance gets its own id (``Subscriber.service_id``).

    Attributes:
        name: the service's name, shared by all its instances: letters, digits,
            ``_`` and ``-``.
        version: a semantic version (``1.2.3``, ``2.0.0-rc.1``).
        description: free text.
        metadata: string keys and string values (a copy is kept; None is empty:
            the answers always carry an object).

    Raises:
        ConfigError: the name or version is malformed, or metadata is not str to str.
    """

    name: str
    version: str
    description: str = ""
    metadata: Mapping[str, str] | None = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.fullmatch(self.name):
            raise ConfigError(f"service name {self.name!r}: use letters, digits, '_' and '-' only")
        if not isinstance(self.version, str) or not SEMVER.fullmatch(self.version):
            raise ConfigError(
                f"service version {self.version!r} is not a semantic version such as 1.0.0"
            )
        if not isinstance(self.description, str):
            raise ConfigError(f"service description must be a str, not {self.description!r}")
        metadata = dict(self.metadata or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ConfigError("service metadata must map str keys to str values")
        object.__setattr__(self, "metadata", MappingProxyType(metadata))


def endpoint_name(subject: str) -> str:
    """The endpoint name of a subscription to ``subject`` when none is given: the
    subject with every character other than letters, digits, ``_`` and ``-``
    replaced by ``_`` (``reports.daily`` -> ``reports_daily``)."""
    return _NOT_NAME.sub("_", subject)


def check_endpoint_name(name: str) -> str:
    """``name`` when it is a valid endpoint name.

    Raises:
        ConfigError: it holds something other than letters, digits, ``_`` and ``-``.
    """
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"endpoint name {name!r}: use letters, digits, '_' and '-' only")
    return name


class ServiceResponder:
    """Answers the ``$SRV`` requests of one subscriber's service.

    Args:
        info: what the service says of itself.
        link: the subscriber's connection.
        endpoints: the stream subscriptions serving now (read at each request).
    """

    def __init__(
        self,
        info: ServiceInfo,
        link: Link,
        endpoints: Callable[[], Iterable[StreamSubscription]],
    ) -> None:
        self.info = info
        self.id = secrets.token_hex(11)
        self.started = datetime.now(UTC)
        self._link = link
        self._endpoints = endpoints
        self._subs: list[Subscription] = []

    def subjects(self) -> list[str]:
        """The nine subjects this instance answers on."""
        kinds = (f".{self.info.name}", f".{self.info.name}.{self.id}")
        return [f"{PREFIX}.{verb}{tail}" for verb in VERBS for tail in ("", *kinds)]

    async def start(self) -> None:
        """Subscribe the ``$SRV`` subjects; returns once the server has them all.

        Raises:
            PermissionDeniedError: the server refused one (the others are undone).
        """
        link = self._link
        results = await asyncio.gather(
            *(
                subscribe_live(link.nc, subject, self._on_request, denials=link.denials)
                for subject in self.subjects()
            ),
            return_exceptions=True,
        )
        self._subs = [r for r in results if isinstance(r, Subscription)]
        for result in results:
            if isinstance(result, BaseException):
                await self.stop()
                raise result

    async def stop(self) -> None:
        """Stop answering (the service leaves the listings); never raises."""
        subs, self._subs = self._subs, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception:
                log.debug("unsubscribe of %r failed", sub.subject, exc_info=True)

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        verb = msg.subject.split(".", 2)[1]
        if verb == "PING":
            body = self.ping()
        elif verb == "INFO":
            body = self.describe()
        else:
            body = self.stats()
        try:
            await publish(self._link, msg.reply, json.dumps(body).encode())
        except ConnectionLostError:
            log.debug("no answer to %s: the connection is lost", msg.subject)

    # ------------------------------------------------------------ the answers

    def _identity(self, kind: str) -> dict[str, Any]:
        info = self.info
        return {
            "type": kind,
            "name": info.name,
            "id": self.id,
            "version": info.version,
            "metadata": dict(info.metadata or {}),
        }

    def ping(self) -> dict[str, Any]:
        """The ``$SRV.PING`` answer."""
        return self._identity(PING_TYPE)

    def describe(self) -> dict[str, Any]:
        """The ``$SRV.INFO`` answer."""
        body = self._identity(INFO_TYPE)
        body["description"] = self.info.description
        body["endpoints"] = [
            {
                "name": s.endpoint,
                "subject": s.subject,
                "queue_group": s.queue,
                "metadata": dict(ENDPOINT_METADATA),
            }
            for s in self._serving()
        ]
        return body

    def stats(self) -> dict[str, Any]:
        """The ``$SRV.STATS`` answer: per endpoint, whole streams (see the module
        docstring); times in nanoseconds."""
        body = self._identity(STATS_TYPE)
        body["started"] = self.started.isoformat(timespec="microseconds").replace("+00:00", "Z")
        body["endpoints"] = [_endpoint_stats(s) for s in self._serving()]
        return body

    def _serving(self) -> list[StreamSubscription]:
        return sorted(self._endpoints(), key=lambda s: (s.endpoint, s.subject, s.queue))


def _endpoint_stats(subscription: StreamSubscription) -> dict[str, Any]:
    st = subscription.stats()
    finished = st.streams_completed + st.streams_failed + st.streams_cancelled
    busy = subscription._processing_ns
    return {
        "name": subscription.endpoint,
        "subject": st.subject,
        "queue_group": st.queue,
        "num_requests": st.streams_started,
        "num_errors": st.streams_failed + st.requests_rejected_invalid,
        "last_error": st.last_error,
        "processing_time": busy,
        "average_processing_time": busy // finished if finished else 0,
        "data": {
            "replies": st.replies_sent,
            "bytes": st.bytes_sent,
            "active": st.streams_active,
            "completed": st.streams_completed,
            "cancelled": st.streams_cancelled,
            "resumed": st.streams_resumed,
            "rejected_busy": st.streams_rejected_busy,
            "rejected_invalid": st.requests_rejected_invalid,
        },
    }
