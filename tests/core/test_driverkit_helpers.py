"""driverkit.InstanceBase, driverkit.is_loopback_url, testing.capture_every_log."""

from __future__ import annotations

import logging

import pytest

from cloudvm.driverkit import (
    SECRET_TAG,
    SET_ID_TAG,
    InstanceBase,
    add_log_filter,
    is_loopback_url,
    publish_names,
)
from cloudvm.testing import capture_every_log


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://127.3.4.5/", True),
        ("http://[::1]:5000/x", True),
        ("http://localhost", True),
        ("http://LOCALHOST.:80", True),
        ("http://user:pw@127.0.0.1/x", True),
        ("127.0.0.1", True),
        ("[::1]", True),
        ("https://ec2.us-east-1.amazonaws.com", False),
        ("http://10.0.0.1", False),
        ("http://localhost.example.com", False),
        ("http://127.0.0.1.example.com", False),
        ("http://[::ffff:10.0.0.1]", False),
        ("", False),
    ],
)
def test_is_loopback_url(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


def test_instance_base_hides_the_drivers_own_tags_and_keeps_them() -> None:
    own = {SET_ID_TAG: "set-a", SECRET_TAG: "s3cret"}
    inst = InstanceBase(
        id="i-1", provider_type="m5.large", all_tags={"a": "1", **own},
        address="10.0.0.5", remote_user="admin",
    )  # fmt: skip
    assert (inst.id, inst.provider_type, inst.address, inst.remote_user, str(inst)) == (
        "i-1", "m5.large", "10.0.0.5", "admin", "i-1",
    )  # fmt: skip
    assert inst.tags == {"a": "1"}
    inst.tags["b"] = "2"  # a copy
    assert inst.tags == {"a": "1"}
    inst._replace_user_tags({"c": "3"})
    assert inst.tags == {"c": "3"}
    assert inst._all_tags == {"c": "3", **own}
    assert "s3cret" not in repr(inst) and "InstanceBase i-1" in repr(inst)


def test_capture_every_log_sees_non_propagating_loggers_and_restores_levels() -> None:
    quiet = logging.getLogger("tests.quiet")
    quiet.propagate = False
    quiet.setLevel(logging.WARNING)
    try:
        with capture_every_log() as logs:
            quiet.debug("token=%s", "abc123")
            logging.getLogger("tests.new.logger").debug("x", extra={"field": "hidden-9"})
        assert logs.containing("abc123") and logs.containing("hidden-9")
        assert quiet.level == logging.WARNING and quiet.handlers == []
    finally:
        quiet.propagate = True


def test_capture_every_log_sees_a_logger_that_stops_propagating_inside_the_block() -> None:
    # What google-api-core does on a client's first use: "google" (until then a
    # placeholder for its children) becomes a logger that does not propagate.
    child = logging.getLogger("tests.sdk_like.transport")
    try:
        with capture_every_log() as logs:
            logging.getLogger("tests.sdk_like").propagate = False
            child.debug("payload=%s", "s3cret-payload")
            child.warning("seen once")
        assert logs.containing("s3cret-payload")
        assert len([r for r in logs.records if r.getMessage() == "seen once"]) == 1
    finally:
        logging.getLogger("tests.sdk_like").propagate = True


def test_publish_names_shows_public_objects_under_the_package() -> None:
    class Thing:
        pass

    def helper() -> None:
        pass

    namespace: dict[str, object] = {
        "__name__": "somepkg",
        "__all__": ["Thing", "helper", "LIMIT", "Number"],
        "Thing": Thing,
        "helper": helper,
        "LIMIT": 3,
        "Number": int,
    }
    publish_names(namespace)
    assert Thing.__module__ == "somepkg"
    assert repr(Thing).startswith("<class 'somepkg.")
    assert helper.__module__ == "somepkg"
    assert int.__module__ == "builtins"  # a builtin type refuses, and is left alone


class _Redact(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.args = ("<redacted>",)
        return True


def test_add_log_filter_adds_one_filter_per_logger_however_often_called() -> None:
    names = ["cloudvm.test.sdk.a", "cloudvm.test.sdk.b"]
    try:
        add_log_filter(names, _Redact)
        add_log_filter(names, _Redact)  # a second set opened: no second filter
        for name in names:
            assert [type(f) for f in logging.getLogger(name).filters] == [_Redact]
        with capture_every_log() as capture:
            logging.getLogger(names[0]).warning("token %s", "s3cret")
        assert capture.containing("s3cret") == []
        assert [r.getMessage() for r in capture.records if r.name == names[0]] == [
            "token <redacted>"
        ]
    finally:
        for name in names:
            for f in list(logging.getLogger(name).filters):
                logging.getLogger(name).removeFilter(f)
