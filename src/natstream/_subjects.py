"""Subject validation, done before anything is sent (pure functions)."""

from __future__ import annotations

from ._errors import InvalidSubjectError

__all__ = [
    "subject_covers",
    "validate_publish_subject",
    "validate_queue",
    "validate_subscribe_subject",
]

_MAX_SUBJECT = 4096  # far above real subjects; bounds work on hostile input


def _tokens(subject: str) -> list[str]:
    if not isinstance(subject, str):
        raise InvalidSubjectError(repr(subject), "a subject must be a str")
    if not subject:
        raise InvalidSubjectError(subject, "it is empty")
    if len(subject) > _MAX_SUBJECT:
        raise InvalidSubjectError(subject[:64] + "...", f"longer than {_MAX_SUBJECT} characters")
    if any(c.isspace() for c in subject):
        raise InvalidSubjectError(subject, "it contains whitespace")
    tokens = subject.split(".")
    if any(not t for t in tokens):
        raise InvalidSubjectError(subject, "it has an empty token (leading, trailing or '..')")
    return tokens


def validate_publish_subject(subject: str) -> str:
    """Check a subject a message is sent to: no wildcards allowed.

    Raises:
        InvalidSubjectError: empty, whitespace, empty token, or ``*`` / ``>``.
    """
    if type(subject) is str and subject in _valid_publish:
        return subject
    for token in _tokens(subject):
        if "*" in token or ">" in token:
            raise InvalidSubjectError(
                subject, "wildcards are not allowed in a request subject; name one subject"
            )
    if type(subject) is str:  # not a subclass: its own __eq__/__hash__ could lie
        if len(_valid_publish) >= _VALID_MAX:
            _valid_publish.clear()
        _valid_publish.add(subject)
    return subject


# Subjects already found valid (requests go to few subjects, again and again).
_VALID_MAX = 1024
_valid_publish: set[str] = set()


def validate_subscribe_subject(subject: str) -> str:
    """Check a subject to subscribe to: ``*`` as a whole token, ``>`` as the last one."""
    tokens = _tokens(subject)
    for i, token in enumerate(tokens):
        if token in ("*", ">"):
            if token == ">" and i != len(tokens) - 1:
                raise InvalidSubjectError(subject, "'>' must be the last token")
        elif "*" in token or ">" in token:
            raise InvalidSubjectError(subject, "a wildcard must be a whole token")
    return subject


def validate_queue(queue: str | None) -> str:
    """Check a queue group name ('' or None for none); returns '' for none."""
    if not queue:
        return ""
    if any(c.isspace() for c in queue) or "*" in queue or ">" in queue:
        raise InvalidSubjectError(queue, "a queue group name has no whitespace or wildcards")
    return queue


def subject_covers(pattern: str, subject: str) -> bool:
    """Whether every subject ``subject`` matches is matched by ``pattern`` too (both may
    hold wildcards: ``a.>`` covers ``a.b.*``; ``a.*`` does not cover ``a.>``)."""
    wide = pattern.split(".")
    narrow = subject.split(".")
    for i, token in enumerate(wide):
        if token == ">":
            return len(narrow) > i
        if i >= len(narrow):
            return False
        if token == "*":
            if narrow[i] == ">":
                return False
        elif token != narrow[i]:
            return False
    return len(narrow) == len(wide)
