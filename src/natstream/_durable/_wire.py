"""JetStream's wire format as a durable recording uses it: no I/O.

* The reply subject of a message a consumer delivers says where it is in the stream
  (ADR-15): ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.
  <timestamp ns>.<pending>``, or with a domain and an account hash after ``ACK`` (and a
  random token at the end). :func:`parse_ack_subject` reads it.
* A pull request (ADR-13) is a JSON body published to
  ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`` with the reply subject the messages
  are to go to: :func:`pull_request`.
* The server ends or comments on a pull request with status messages (header-only):
  :func:`status_kind` says what each means to the puller.
* Acknowledgements are payloads published to a message's reply subject.
"""

from __future__ import annotations

import enum
import json
from typing import Final

__all__ = [
    "ACK",
    "NAK",
    "Delivery",
    "StatusKind",
    "next_subject",
    "parse_ack_subject",
    "pull_request",
    "status_kind",
]

ACK: Final = b"+ACK"
NAK: Final = b"-NAK"
PENDING_MESSAGES: Final = "Nats-Pending-Messages"
"""Header of a status message ending a pull request: messages it asked for and did not get."""

_V1_TOKENS: Final = 9
_NANOS: Final = 1_000_000_000


class Delivery(tuple[int, int, int, int]):
    """Where a delivered message is: ``(stream_seq, consumer_seq, timestamp_ns, pending)``.

    ``consumer_seq`` counts the consumer's deliveries (redeliveries too);
    ``timestamp_ns`` is when the stream stored the message, in nanoseconds since the
    epoch; ``pending`` is how many messages of the consumer's subjects follow it in the
    stream, not yet delivered.
    """

    __slots__ = ()


def parse_ack_subject(reply: str) -> Delivery:
    """The position of a delivered message, from its reply subject.

    Raises:
        ValueError: ``reply`` is not a JetStream acknowledgement subject.
    """
    tokens = reply.split(".")
    count = len(tokens)
    if count == _V1_TOKENS:
        base = 5
    elif count in (11, 12):
        base = 7
    else:
        raise ValueError(f"not a JetStream acknowledgement subject: {reply!r}")
    if tokens[0] != "$JS" or tokens[1] != "ACK":
        raise ValueError(f"not a JetStream acknowledgement subject: {reply!r}")
    return Delivery(
        (
            int(tokens[base]),
            int(tokens[base + 1]),
            int(tokens[base + 2]),
            int(tokens[base + 3]),
        )
    )


def next_subject(stream: str, consumer: str, prefix: str = "$JS.API") -> str:
    """Where pull requests for ``consumer`` of ``stream`` go."""
    return f"{prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"


def pull_request(batch: int, expires: float, heartbeat: float) -> bytes:
    """A pull request's body: up to ``batch`` messages, the request expiring after
    ``expires`` seconds, an idle heartbeat every ``heartbeat`` seconds meanwhile."""
    return json.dumps(
        {
            "batch": batch,
            "expires": int(expires * _NANOS),
            "idle_heartbeat": int(heartbeat * _NANOS),
        }
    ).encode()


class StatusKind(enum.Enum):
    """What a status message on the pull inbox means to the puller."""

    HEARTBEAT = "heartbeat"  # the server is there; a request is waiting
    ENDED = "ended"  # a request ended (expired, or cut short): ask again
    RETRY = "retry"  # the server cannot serve now (no responders, leadership change)
    FATAL = "fatal"  # the consumer cannot be pulled from any more (deleted, push, bad request)


def status_kind(status: str, description: str) -> StatusKind:
    """Classify a status message by its code and description (ADR-13)."""
    if status == "100":
        return StatusKind.HEARTBEAT
    if status in ("404", "408"):
        return StatusKind.ENDED
    if status == "503":
        return StatusKind.RETRY
    if status == "409":
        text = description.lower()
        if "leadership change" in text:
            return StatusKind.RETRY
        if "deleted" in text or "push based" in text or "exceeded maxrequest" in text:
            return StatusKind.FATAL  # "exceeded maxrequest...": the consumer's limits
        return StatusKind.ENDED  # a limit of this request (max waiting, batch, bytes)
    return StatusKind.FATAL
