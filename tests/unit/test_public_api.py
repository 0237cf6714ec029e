"""The public surface: names, the error tree, configuration checks."""

from __future__ import annotations

import typing

import pytest

import natstream
from natstream import Config, Pool, StreamOptions


def test_all_is_sorted_and_importable() -> None:
    assert natstream.__all__ == sorted(natstream.__all__)
    for name in natstream.__all__:
        assert hasattr(natstream, name), name


def test_markers() -> None:
    assert natstream.STREAM_END == b"__STREAM_END__"
    assert natstream.STREAM_ERROR_PREFIX == b"__STREAM_ERROR__:"


def test_every_error_derives_from_the_root() -> None:
    errors = [
        getattr(natstream, n)
        for n in natstream.__all__
        if isinstance(getattr(natstream, n), type) and issubclass(getattr(natstream, n), Exception)
    ]
    assert len(errors) >= 15
    for cls in errors:
        assert issubclass(cls, natstream.NatstreamError), cls


def test_timeouts_are_builtin_timeouts_and_distinct() -> None:
    timeouts = (natstream.RequestTimeoutError, natstream.StreamTimeoutError, natstream.StalledError)
    for cls in timeouts:
        assert issubclass(cls, TimeoutError)
    assert not issubclass(natstream.RequestTimeoutError, natstream.StreamTimeoutError)
    assert natstream.RequestTimeoutError("x").retryable
    assert not natstream.StreamTimeoutError("x").retryable


def test_stream_error_carries_code_and_retryable() -> None:
    err = natstream.StreamError("busy", code=503, retryable=True)
    assert "busy" in str(err)
    assert (err.message, err.code, err.retryable) == ("busy", 503, True)


def test_config_repr_hides_secrets() -> None:
    cfg = Config(["nats://127.0.0.1:4222"], user="u", password="hunter2", token="tok-123")
    assert "hunter2" not in repr(cfg)
    assert "tok-123" not in repr(cfg)
    assert cfg.redacted()["password"] == "***"
    assert cfg.nats_options()["password"] == "hunter2"


def test_config_accepts_comma_separated_servers() -> None:
    cfg = Config("nats://a:4222, nats://b:4222")  # type: ignore[arg-type]
    assert cfg.servers == ["nats://a:4222", "nats://b:4222"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"servers": []},
        {"servers": ["nats://x"], "idle_per_server": 0},
        {"servers": ["nats://x"], "connect_timeout": 0},
        {"servers": ["nats://x"], "close_grace": -1},
        {"servers": ["nats://x"], "window_budget_messages": 0},
        {"servers": ["nats://x"], "window_budget_bytes": 64e6},  # Ns-Win takes ints
        {"servers": ["nats://x"], "window_budget_messages": True},
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(natstream.ConfigError):
        Config(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_messages": 0},
        {"window_bytes": 0},
        {"heartbeat": -1},
        {"stall_factor": 0.5},
        {"plain_end": "none"},
    ],
)
def test_stream_options_reject_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(natstream.ConfigError):
        StreamOptions(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("subject", ["", " ", "a b", "a.*", "a.>", "a..b", "a.", "x\ty"])
def test_request_subject_validation(subject: str) -> None:
    from natstream._subjects import validate_publish_subject

    with pytest.raises(natstream.InvalidSubjectError):
        validate_publish_subject(subject)


def test_request_subjects_found_valid_are_remembered_not_the_others() -> None:
    from natstream import _subjects

    for _ in range(2):  # the second round answers from what the first remembered
        assert _subjects.validate_publish_subject("orders.eu") == "orders.eu"
        with pytest.raises(natstream.InvalidSubjectError):
            _subjects.validate_publish_subject("orders.*")
        with pytest.raises(natstream.InvalidSubjectError):
            _subjects.validate_publish_subject(["orders.eu"])  # type: ignore[arg-type]
    assert "orders.eu" in _subjects._valid_publish

    class Liar(str):  # equal to and hashed as any valid subject: never trusted
        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return hash("orders.eu")

    with pytest.raises(natstream.InvalidSubjectError):
        _subjects.validate_publish_subject(Liar("orders.*"))
    assert all(type(x) is str for x in _subjects._valid_publish)
    for i in range(2 * _subjects._VALID_MAX):
        _subjects.validate_publish_subject(f"s.{i}")
    assert len(_subjects._valid_publish) <= _subjects._VALID_MAX


@pytest.mark.parametrize("subject", ["a.*", "a.>", "*.b", ">"])
def test_subscribe_subjects_allow_wildcards(subject: str) -> None:
    from natstream._subjects import validate_subscribe_subject

    assert validate_subscribe_subject(subject) == subject


@pytest.mark.parametrize("subject", ["a.>.b", "a.b*", "a..b"])
def test_subscribe_subject_validation(subject: str) -> None:
    from natstream._subjects import validate_subscribe_subject

    with pytest.raises(natstream.InvalidSubjectError):
        validate_subscribe_subject(subject)


def test_safe_server_strips_credentials() -> None:
    from natstream._transport import safe_server

    assert safe_server("nats://user:s3cret@127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert safe_server("127.0.0.1:4222") == "127.0.0.1:4222"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:4222", "https://h:1", "nats://", "ftp://x", "nats://user:pw@"]
)
def test_server_urls_must_be_nats_urls(url: str) -> None:
    with pytest.raises(natstream.ConfigError) as info:
        Config([url])
    assert "pw" not in str(info.value)


@pytest.mark.parametrize(
    "url", ["nats://a:4222", "tls://a:4222", "ws://a:80", "wss://a:443", "a:4222", "NATS://a:1"]
)
def test_every_nats_scheme_is_accepted(url: str) -> None:
    assert Config([url]).servers == [url]


def test_a_pool_takes_a_config_or_server_urls() -> None:
    assert Pool(["nats://a:4222"]).config.servers == ["nats://a:4222"]
    assert Pool("nats://a:4222, nats://b:4222").config.servers == ["nats://a:4222", "nats://b:4222"]
    config = Config(["nats://a:4222"], idle_per_server=2)
    assert Pool(config).config is config
    with pytest.raises(TypeError, match="list of server URLs"):
        Pool({"servers": ["nats://a:4222"]})  # type: ignore[arg-type]
    with pytest.raises(natstream.ConfigError):
        Config(servers={"nats://a:4222"})  # type: ignore[arg-type]


def test_handler_type_aliases_are_public() -> None:
    from natstream import _requester, _responder

    assert natstream.IndexHandler is _responder.IndexHandler
    assert natstream.BatchHandler is _responder.BatchHandler
    assert natstream.GeneratorHandler is _responder.GeneratorHandler
    assert natstream.ReplyHandler is _requester.Handler
    kinds = {natstream.IndexHandler, natstream.BatchHandler, natstream.GeneratorHandler}
    assert set(typing.get_args(natstream.Handler)) == kinds
    for name in ("BatchHandler", "GeneratorHandler", "Handler", "IndexHandler", "ReplyHandler"):
        assert name in natstream.__all__


def test_the_handler_aliases_resolve_from_any_module() -> None:
    # Annotated with them, a function's hints resolve outside natstream's modules
    # (what the API reference, and type checkers at run time, need).
    def serve(index: natstream.IndexHandler, reply: natstream.ReplyHandler) -> None: ...

    hints = typing.get_type_hints(serve)
    assert hints["index"] == natstream.IndexHandler
    assert typing.get_args(hints["index"])[0] == [natstream.StreamRequest, int]
