"""Config validation happens before any call and never echoes values."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pydantic
import pytest
from cloudvm_gce import DRIVER, GCEConfig
from gce_fake_api import FakeCompute
from gce_helpers import gce_config

import cloudvm
from cloudvm import InstanceSetID


async def _make(config: Any) -> cloudvm.InstanceSet:
    return await DRIVER.instance_set(config, InstanceSetID("c"), {}, logging.getLogger("test"))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"zones": []}, "zones"),
        ({"zones": ["Not A Zone"]}, "zones"),
        ({"zones": "us-central1-a"}, "zones"),
        ({"project": ""}, "project"),
        ({"api_endpoint": "ftp://x"}, "api_endpoint"),
        ({"admin_username": "Root User"}, "admin_username"),
        ({"boot_disk_size_gb": 1}, "boot_disk_size_gb"),
        ({"scratch_disk": "tape"}, "scratch_disk"),
        ({"zonez": ["us-central1-a"]}, "zonez"),
    ],
)
async def test_bad_config_names_the_field(
    fake_gce: FakeCompute, change: dict[str, Any], field: str
) -> None:
    with pytest.raises(cloudvm.ConfigError, match=field):
        await _make(gce_config(fake_gce, **change))
    assert fake_gce.requests == []


async def test_missing_project_is_named(fake_gce: FakeCompute) -> None:
    config = gce_config(fake_gce)
    del config["project"]
    with pytest.raises(cloudvm.ConfigError, match="project"):
        await _make(config)


async def test_config_errors_never_echo_values(fake_gce: FakeCompute) -> None:
    with pytest.raises(cloudvm.ConfigError) as info:
        await _make(gce_config(fake_gce, credentials=["s3cr3t-value"]))
    assert "s3cr3t-value" not in str(info.value)
    assert "credentials" in str(info.value)


async def test_unreadable_credentials_file_is_a_config_error(tmp_path: Path) -> None:
    secret_file = tmp_path / "key.json"
    secret_file.write_text(json.dumps({"type": "service_account", "private_key": "TOPSECRET"}))
    config = {"project": "p", "zones": ["us-central1-a"], "credentials": str(secret_file)}
    with pytest.raises(cloudvm.ConfigError, match="credentials") as info:
        await _make(config)
    assert "TOPSECRET" not in str(info.value)


async def test_config_accepts_a_json_document(fake_gce: FakeCompute) -> None:
    async with await _make(json.dumps(gce_config(fake_gce))) as iset:
        assert await iset.instances() == []


def test_external_address_needs_an_external_ip() -> None:
    with pytest.raises(ValueError, match="external_ip"):
        GCEConfig(project="p", zones=["us-central1-a"], address="external")


def test_driver_is_found_by_name() -> None:
    assert cloudvm.load_driver("gce") is DRIVER


def test_public_surface_is_exactly_all() -> None:
    import cloudvm_gce

    public = {n for n in vars(cloudvm_gce) if not n.startswith("_")}
    assert sorted(cloudvm_gce.__all__) == cloudvm_gce.__all__
    assert set(cloudvm_gce.__all__) == public
    assert GCEConfig.__module__ == "cloudvm_gce"


INSECURE_ENDPOINTS = pytest.mark.parametrize(
    "endpoint", ["http://10.1.2.3:8080", "http://compute.example.com", "http://127.0.0.1.nip.io"]
)


@INSECURE_ENDPOINTS
async def test_plain_http_with_real_credentials_is_refused_off_loopback(endpoint: str) -> None:
    config = {
        "project": "p",
        "zones": ["us-central1-a"],
        "api_endpoint": endpoint,
        # A key file that does not exist: were the endpoint not refused
        # first, loading it would be the error.
        "credentials": "/nonexistent/service-account.json",
    }
    with pytest.raises(cloudvm.ConfigError, match="api_endpoint") as info:
        await _make(config)
    message = str(info.value)
    assert "allow_insecure_transport" in message
    assert "cannot load" not in message  # refused before loading anything
    assert endpoint.split("//")[1] not in message  # the URL itself is not repeated


@INSECURE_ENDPOINTS
def test_plain_http_with_default_credentials_is_refused_off_loopback(endpoint: str) -> None:
    # Application Default Credentials are real credentials too. (Checked on
    # the config alone: loading them would probe for a metadata server.)
    with pytest.raises(pydantic.ValidationError, match="api_endpoint"):
        GCEConfig(project="p", zones=["us-central1-a"], api_endpoint=endpoint)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:8080",
        "http://127.45.6.7",
        "http://[::1]:8080",
        "http://localhost:8080",
        "https://compute.example.com",
        "https://10.1.2.3:8443",
    ],
)
def test_loopback_http_or_https_is_accepted_with_real_credentials(endpoint: str) -> None:
    config = GCEConfig(project="p", zones=["us-central1-a"], api_endpoint=endpoint)
    assert config.api_endpoint == endpoint
    assert not config.allow_insecure_transport


def test_insecure_transport_is_accepted_when_asked_for_by_name() -> None:
    config = GCEConfig(
        project="p",
        zones=["us-central1-a"],
        api_endpoint="http://10.1.2.3:8080",
        credentials="/some/key.json",
        allow_insecure_transport=True,
    )
    assert config.allow_insecure_transport


def test_anonymous_credentials_may_use_plain_http_anywhere() -> None:
    config = GCEConfig(
        project="p",
        zones=["us-central1-a"],
        api_endpoint="http://10.1.2.3:8080",
        credentials="anonymous",
    )
    assert config.api_endpoint == "http://10.1.2.3:8080"
