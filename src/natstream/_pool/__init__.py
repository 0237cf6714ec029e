"""The pool: connections to every configured server, lent to stream attempts.

``_model`` holds its parts and pure decisions, ``_connections`` their life
(connects, replacement, health), ``_lending`` routing and the window budget,
``_pool`` the public :class:`Pool`, ``_stats`` what it reports.
"""

from ._pool import Pool
from ._stats import PoolStats, ServerStats

__all__ = ["Pool", "PoolStats", "ServerStats"]
