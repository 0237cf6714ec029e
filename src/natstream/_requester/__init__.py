"""The requester: one stream, driven over a connection lent by a lease source.

``Stream`` (public) wraps a ``Session`` (its attempts and retries); each
``Attempt`` receives one request's replies; ``_delivery`` hands them to handlers.
This package never imports the pool: connections come through ``LeaseSource``.
"""

from ._delivery import Handler
from ._lease import Lease, LeaseSource
from ._stream import Stream

__all__ = ["Handler", "Lease", "LeaseSource", "Stream"]
