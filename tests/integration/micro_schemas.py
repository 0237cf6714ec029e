"""What the ``nats`` CLI accepts as answers to ``$SRV.PING``, ``$SRV.INFO`` and
``$SRV.STATS`` (NATS services, ADR-32), as JSON schemas (draft 7) written for these
tests: the constraints of the schemas it validates against, and, where they allow a
null ``metadata``, an object only (the CLI rejects null)."""

from __future__ import annotations

from typing import Any

_NAME = {"type": "string", "minLength": 1, "pattern": "^[a-zA-Z0-9_-]+$"}
_NUMBER = r"(0|[1-9][0-9]*)"
_IDENT = r"(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
_VERSION = {
    "type": "string",
    "minLength": 5,
    "pattern": (
        rf"^{_NUMBER}\.{_NUMBER}\.{_NUMBER}"
        rf"(-{_IDENT}(\.{_IDENT})*)?"
        r"(\+[0-9a-zA-Z-]+(\.[0-9a-zA-Z-]+)*)?$"
    ),
}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_INT64 = {"type": "integer", "minimum": -(2**63 - 1), "maximum": 2**63 - 1}


def _identity(kind: str) -> dict[str, Any]:
    return {
        "type": {"type": "string", "const": kind},
        "name": _NAME,
        "id": {"type": "string", "minLength": 1},
        "version": _VERSION,
        "metadata": _STRINGS,
    }


PING = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["type", "name", "id", "version", "metadata"],
    "properties": _identity("io.nats.micro.v1.ping_response"),
}

INFO = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["type", "name", "id", "version", "metadata", "description", "endpoints"],
    "properties": {
        **_identity("io.nats.micro.v1.info_response"),
        "description": {"type": "string"},
        "endpoints": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "subject", "queue_group", "metadata"],
                "properties": {
                    "name": _NAME,
                    "subject": {"type": "string", "minLength": 1},
                    "queue_group": {"type": "string"},
                    "metadata": _STRINGS,
                },
            },
        },
    },
}

STATS = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["type", "name", "id", "version", "metadata", "started", "endpoints"],
    "properties": {
        **_identity("io.nats.micro.v1.stats_response"),
        "started": {"type": "string", "format": "date-time"},
        "endpoints": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "name",
                    "subject",
                    "queue_group",
                    "num_requests",
                    "num_errors",
                    "last_error",
                    "processing_time",
                    "average_processing_time",
                    "data",
                ],
                "properties": {
                    "name": _NAME,
                    "subject": {"type": "string", "minLength": 1},
                    "queue_group": {"type": "string"},
                    "num_requests": _INT64,
                    "num_errors": _INT64,
                    "last_error": {"type": "string"},
                    "processing_time": _INT64,
                    "average_processing_time": _INT64,
                    "data": {"type": "object"},
                },
            },
        },
    },
}
