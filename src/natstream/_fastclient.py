"""A nats-py client with fast paths for natstream's most frequent messages.

nats-py builds and parses headers generically: a dict walk and a regex per header
on publish, a line split per header on receive. A natstream data message carries a
single header, ``Ns-Seq``, so both directions get a short path here; anything else
goes through nats-py unchanged. This leans on two nats-py internals
(``_process_headers``, ``_send_command``), pinned by the ``nats-py<3`` requirement
and exercised by every test that streams.
"""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client

__all__ = ["FastClient", "hpub_seq", "publish_seq"]

_SEQ_PREFIX = b"NATS/1.0\r\nNs-Seq: "
_SEQ_AT = len(_SEQ_PREFIX)


class FastClient(Client):
    """nats-py's client, parsing a lone ``Ns-Seq`` header without the generic parser."""

    async def _process_headers(self, headers: Any) -> dict[str, str] | None:
        if headers and headers.startswith(_SEQ_PREFIX):
            end = len(headers) - 4
            if headers.find(b"\r\n", _SEQ_AT) == end:
                value = headers[_SEQ_AT:end]
                if value.isdigit():
                    return {"Ns-Seq": value.decode()}
        result: dict[str, str] | None = await super()._process_headers(headers)
        return result


def hpub_seq(subject: str, reply: str, seq: int, payload: bytes) -> bytes:
    """The HPUB command of a data message whose only header is ``Ns-Seq: seq``."""
    hdr = b"NATS/1.0\r\nNs-Seq: %d\r\n\r\n" % seq
    hlen = len(hdr)
    target = f"{subject} {reply}" if reply else subject
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (target.encode(), hlen, hlen + len(payload), hdr, payload)


async def publish_seq(nc: Client, subject: str, reply: str, seq: int, payload: bytes) -> None:
    """Publish a data message with ``Ns-Seq: seq`` as its only header.

    Same checks and effects as ``nc.publish`` (closed/draining connection, max_payload,
    stats, flusher kick), without nats-py's generic header encoding. The caller has
    validated ``subject`` and ``reply`` (ours, generated).

    Raises:
        the nats-py errors ``nc.publish`` raises in the same cases.
    """
    if nc.is_closed or nc.is_draining_pubs or not nc.is_connected:
        # Rare paths: let nats-py raise or buffer exactly as it does.
        await nc.publish(subject, payload, reply=reply, headers={"Ns-Seq": str(seq)})
        return
    size = len(payload)
    if size > nc._max_payload:
        await nc.publish(subject, payload, reply=reply, headers={"Ns-Seq": str(seq)})
        return
    stats = nc.stats
    stats["out_msgs"] += 1
    stats["out_bytes"] += size
    await nc._send_command(hpub_seq(subject, reply, seq, payload))
    queue = nc._flush_queue
    if queue is not None and queue.empty():
        await nc._flush_pending()
