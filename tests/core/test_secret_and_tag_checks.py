"""check_secret and validate_tags: the checks that guard proofs and tag text."""

from __future__ import annotations

import pytest

import cloudvm
from cloudvm.driverkit import check_secret, new_secret, validate_tags


@pytest.mark.parametrize("expected", ["", None], ids=["empty", "missing"])
@pytest.mark.parametrize("presented", ["", b"", "anything", b"\n"])
def test_an_empty_or_missing_expected_secret_proves_nothing(
    expected: str | None, presented: str | bytes
) -> None:
    with pytest.raises(cloudvm.HostKeyError, match="no secret"):
        check_secret(presented, expected)


@pytest.mark.parametrize("presented", ["", b"", b"\n", "  \r\n"])
def test_an_empty_presented_secret_is_refused(presented: str | bytes) -> None:
    with pytest.raises(cloudvm.HostKeyError, match="empty"):
        check_secret(presented, new_secret())


def test_the_right_secret_passes_and_a_wrong_one_does_not() -> None:
    secret = new_secret()
    check_secret(secret + "\n", secret)
    check_secret(secret.encode(), secret)
    with pytest.raises(cloudvm.HostKeyError, match="wrong"):
        check_secret(secret[:-1], secret)


@pytest.mark.parametrize(
    "text",
    ["\x9b31m", "a\x80b", "\x85", "tab\there", "\x1b[2J", "\x7f", "nul\x00"],
    ids=["csi", "c1-first", "nel", "tab", "esc", "del", "nul"],
)
@pytest.mark.parametrize("where", ["key", "value"])
def test_tags_refuse_c0_and_c1_control_characters(text: str, where: str) -> None:
    tags = {text: "v"} if where == "key" else {"k": text}
    with pytest.raises(ValueError, match="control characters"):
        validate_tags(tags)


def test_tags_keep_ordinary_unicode() -> None:
    tags = {"owner": "Zo\u00eb \u2013 東京", "empty": "", "sign": "\xa0non-breaking\xa0"}
    assert validate_tags(tags) == tags


EXTRA = "Extra inputs are not permitted"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"max_instance": 3}, f"max_instance: {EXTRA} (did you mean 'max_instances'?)"),
        ({"statedir": "/x"}, f"statedir: {EXTRA} (did you mean 'state_dir'?)"),
        ({"zzz": 1}, f"zzz: {EXTRA}"),
    ],
)
def test_a_config_key_typo_suggests_the_closest_key(
    config: dict[str, object], expected: str
) -> None:
    from cloudvm._loopback._config import LoopbackConfig
    from cloudvm.driverkit import parse_config

    with pytest.raises(cloudvm.ConfigError) as info:
        parse_config(LoopbackConfig, config, driver="loopback")
    assert str(info.value) == f"invalid loopback config: {expected}"


def test_a_typo_in_a_nested_section_suggests_its_key() -> None:
    from cloudvm.driverkit import parse_config
    from cloudvm.testing import FakeConfig

    with pytest.raises(cloudvm.ConfigError, match=r"rate_limits\.creat: .*did you mean 'create'"):
        parse_config(FakeConfig, {"rate_limits": {"creat": {}}}, driver="fake")
