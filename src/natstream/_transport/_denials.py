"""Who wants to know that the server refused one of a connection's subscriptions or
publishes (a permissions violation), and the one warning each refusal gets."""

from __future__ import annotations

import logging
from collections.abc import Callable

from .._protocol._frames import parse_denial

__all__ = ["Denials", "OnDenied"]

log = logging.getLogger("natstream")

OnDenied = Callable[[str, str], "bool | None"]
"""Called with (operation, subject): ``"subscribe"`` or ``"publish"``, and the subject
as the server names it. True: the refusal was expected and is dealt with (it is then
logged at DEBUG, not WARNING)."""


class Denials:
    """The watchers of one connection's refusals, by subject.

    The server says which subject it refused, not which message, so every watcher of
    that subject hears of it (two streams publishing to one refused subject are both
    refused). ``exact`` is False when the text comes from nats-py, which lower-cases
    it: subjects are then compared lower-cased.
    """

    __slots__ = ("_exact", "_watchers")

    def __init__(self, *, exact: bool) -> None:
        self._exact = exact
        self._watchers: dict[str, list[OnDenied]] = {}

    def _key(self, subject: str) -> str:
        return subject if self._exact else subject.lower()

    def watch(self, subject: str, callback: OnDenied) -> None:
        self._watchers.setdefault(self._key(subject), []).append(callback)

    def unwatch(self, subject: str, callback: OnDenied) -> None:
        key = self._key(subject)
        callbacks = self._watchers.get(key)
        if callbacks is not None:
            try:
                callbacks.remove(callback)
            except ValueError:
                return
            if not callbacks:
                del self._watchers[key]

    def server_error(self, text: str) -> bool:
        """A server ``-ERR`` text: when it is a refusal, tell that subject's watchers
        and log it (WARNING, unless a watcher expected it); True then."""
        denial = parse_denial(text)
        if denial is None:
            return False
        operation, subject = denial
        expected = False
        for callback in list(self._watchers.get(self._key(subject), ())):
            try:
                expected = bool(callback(operation, subject)) or expected
            except Exception:
                log.exception("a permission watcher raised")
        log.log(
            logging.DEBUG if expected else logging.WARNING,
            "the server refused to let this connection %s %r (permissions violation: "
            "see docs/security.md for the permissions natstream needs)",
            operation,
            subject,
        )
        return True
