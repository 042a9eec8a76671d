"""The public surface, the error tree, input checks and the driver registry."""

from __future__ import annotations

import logging
import types
from datetime import UTC, datetime
from typing import Any

import prometheus_client
import pydantic
import pytest

import cloudvm
import cloudvm.driverkit
import cloudvm.testing
from cloudvm.driverkit import (
    CallMetrics,
    InstanceSetBase,
    check_secret,
    parse_config,
    validate_init_command,
    validate_tags,
)


@pytest.mark.parametrize("module", [cloudvm, cloudvm.driverkit, cloudvm.testing])
def test_all_lists_exactly_the_public_names(module: types.ModuleType) -> None:
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(module.__all__) == public | ({"__version__"} & set(module.__all__))


def test_public_classes_say_cloudvm_in_their_module() -> None:
    assert cloudvm.QuotaError.__module__ == "cloudvm"
    assert cloudvm.SSHExecutor.__module__ == "cloudvm"
    assert repr(cloudvm.InstanceSet).startswith("<class 'cloudvm.InstanceSet'")


def test_contract_names_from_the_design_exist() -> None:
    for name in [
        "InstanceSetID", "InstanceID", "ImageID", "InstanceQuotaGroup", "InitCommand",
        "InstanceTags", "SharedResourceTags", "InstanceType", "InstancePrice",
        "CloudError", "RateLimitError", "QuotaError", "CapacityError", "HostKeyError",
        "ExecuteError", "ExecutorTarget", "Instance", "InstanceSet", "Driver", "Executor",
        "SSHExecutor", "driver_func", "load_driver", "available_drivers", "resilient",
    ]:  # fmt: skip
        assert hasattr(cloudvm, name), name


def test_error_tree() -> None:
    for cls in (
        cloudvm.RateLimitError, cloudvm.QuotaError, cloudvm.CapacityError,
        cloudvm.HostKeyError, cloudvm.ExecuteError,
    ):  # fmt: skip
        assert issubclass(cls, cloudvm.CloudError)
    assert issubclass(cloudvm.ConfigError, ValueError)
    assert not issubclass(cloudvm.ConfigError, cloudvm.CloudError)


def test_rate_limit_error_needs_an_aware_time() -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    err = cloudvm.RateLimitError("slow down", when, code="RequestLimitExceeded")
    assert (err.earliest_retry, err.code, str(err)) == (when, "RequestLimitExceeded", "slow down")
    with pytest.raises(ValueError, match="timezone-aware"):
        cloudvm.RateLimitError("slow down", datetime(2030, 1, 1))


def test_one_error_may_mean_several_things() -> None:
    class QuotaAndCapacity(cloudvm.QuotaError, cloudvm.CapacityError):
        pass

    err = QuotaAndCapacity(
        "VcpuLimitExceeded", instance_type_specific=False, quota_group_specific=True
    )
    assert isinstance(err, cloudvm.QuotaError)
    assert isinstance(err, cloudvm.CapacityError)
    assert err.quota_group_specific


def test_capacity_error_flags() -> None:
    err = cloudvm.CapacityError(
        "none left", instance_type_specific=True, quota_group_specific=False
    )
    assert err.instance_type_specific and not err.quota_group_specific


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"": "x"}, "non-empty"),
        ({"k" * 129: "x"}, "at most 128"),
        ({"k": "v" * 257}, "at most 256"),
        ({"k": "line\nbreak"}, "control"),
        ({"cloudvm-instance-set": "x"}, "cloudvm-"),
        ({"k": 3}, "must be a string"),
    ],
)
def test_invalid_tags_are_refused(tags: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_tags(tags)


def test_tags_may_be_any_printable_text() -> None:
    tags = {"Name": "web 1", "ünïcode ✓": "", "a/b:c=d": "x y"}
    assert validate_tags(tags) == tags


def test_init_command_must_be_under_one_kib() -> None:
    assert validate_init_command("x" * 1023) == "x" * 1023
    with pytest.raises(ValueError, match="under 1 KiB"):
        validate_init_command("x" * 1024)
    with pytest.raises(ValueError, match="under 1 KiB"):
        validate_init_command("é" * 512)  # 1024 bytes in UTF-8


class _Config(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    region: str
    secret_access_key: str
    retries: int = 0


def test_parse_config_names_fields_and_never_echoes_values() -> None:
    with pytest.raises(cloudvm.ConfigError) as info:
        parse_config(
            _Config,
            {"region": "x", "secret_access_key": 12345678, "retries": "many", "regoin": "y"},
            driver="demo",
        )
    message = str(info.value)
    assert "secret_access_key" in message and "retries" in message and "regoin" in message
    assert "12345678" not in message and "many" not in message


def test_parse_config_reads_json() -> None:
    parsed = parse_config(_Config, '{"region": "r", "secret_access_key": "k"}', driver="demo")
    assert parsed.region == "r"
    with pytest.raises(cloudvm.ConfigError, match="demo"):
        parse_config(_Config, "{not json", driver="demo")


def test_check_secret() -> None:
    check_secret(b"abc\n", "abc")
    with pytest.raises(cloudvm.HostKeyError):
        check_secret("abd", "abc")


def test_loopback_is_registered() -> None:
    assert "loopback" in cloudvm.available_drivers()
    driver = cloudvm.load_driver("loopback")
    assert isinstance(driver, cloudvm.Driver)
    assert cloudvm.load_driver("loopback") is driver


def test_unknown_driver_lists_what_is_installed() -> None:
    with pytest.raises(LookupError, match="loopback"):
        cloudvm.load_driver("nimbus")


def test_missing_driver_distribution_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudvm import _drivers

    monkeypatch.setitem(_drivers._KNOWN_DISTRIBUTIONS, "nimbus", "cloudvm-nimbus")
    with pytest.raises(LookupError, match="pip install cloudvm-nimbus"):
        cloudvm.load_driver("nimbus")


class _EmptySet(InstanceSetBase):
    def __init__(self) -> None:
        super().__init__()
        self.stops = 0

    async def create(self, *args: Any) -> cloudvm.Instance:
        raise NotImplementedError

    async def instances(self, tags: cloudvm.InstanceTags | None = None) -> list[cloudvm.Instance]:
        self._check_open()
        return []

    def instance_quota_group(self, itype: cloudvm.InstanceType) -> cloudvm.InstanceQuotaGroup:
        return cloudvm.InstanceQuotaGroup("g")

    async def _stop(self) -> None:
        self.stops += 1


async def test_driver_func_and_the_base_lifecycle() -> None:
    seen: list[object] = []

    async def make(
        config: Any, id: cloudvm.InstanceSetID, tags: Any, logger: Any, registry: Any
    ) -> cloudvm.InstanceSet:
        seen.append((config, id, tags))
        return _EmptySet()

    driver = cloudvm.driver_func(make)
    assert isinstance(driver, cloudvm.Driver)
    iset = await driver.instance_set({}, cloudvm.InstanceSetID("s"), {}, logging.getLogger())
    assert isinstance(iset, cloudvm.InstanceSet)
    async with iset as entered:
        assert await entered.instances() == []
    await iset.stop()  # a second stop is harmless
    assert isinstance(iset, _EmptySet) and iset.stops == 1
    with pytest.raises(RuntimeError, match="stopped"):
        await iset.instances()
    assert seen == [({}, "s", {})]


def test_call_metrics_count_by_operation_and_outcome() -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics = CallMetrics(registry, "demo")
    CallMetrics(registry, "other")  # a second user of one registry is fine
    with metrics.observe("create"):
        pass
    with pytest.raises(cloudvm.QuotaError), metrics.observe("create"):
        raise cloudvm.QuotaError("full")
    sample = registry.get_sample_value
    labels = {"driver": "demo", "operation": "create"}
    assert sample("cloudvm_api_calls_total", {**labels, "outcome": "ok"}) == 1
    assert sample("cloudvm_api_calls_total", {**labels, "outcome": "QuotaError"}) == 1
    assert sample("cloudvm_api_call_duration_seconds_count", labels) == 2
