"""Config validation, bad input refused before any call, the entry point and public surface."""

from __future__ import annotations

import logging

import cloudvm_azure
import pytest
from azure_fake_arm import FakeARM
from azure_support import SET_ID, FakeCredential, make_config
from test_azure_lifecycle import IMAGE, SMALL, assert_nothing_left

import cloudvm
from cloudvm import ConfigError, ImageID, InitCommand

CLIENT_SECRET = "client-secret-value-0123456789"


def test_the_entry_point_finds_the_driver() -> None:
    assert "azure" in cloudvm.available_drivers()
    assert cloudvm.load_driver("azure") is cloudvm_azure.DRIVER
    assert isinstance(cloudvm_azure.DRIVER, cloudvm.Driver)


def test_all_lists_exactly_the_public_names() -> None:
    public = {n for n in dir(cloudvm_azure) if not n.startswith("_")} - {"contextlib"}
    assert set(cloudvm_azure.__all__) == public
    # Sorted as ruff's RUF022 sorts: CONSTANTS, then Classes, then functions.
    order = sorted(cloudvm_azure.__all__, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    assert cloudvm_azure.__all__ == order
    assert cloudvm_azure.AzureConfig.__module__ == "cloudvm_azure"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"subscription_id": None}, "subscription_id"),
        ({"resource_group": "bad/name"}, "resource_group"),
        ({"base_url": "ftp://127.0.0.1:1"}, "base_url"),
        ({"base_url": "http://arm.example.com"}, "base_url"),
        ({"base_url": "https://arm.example.com"}, "connection_verify"),
        ({"allow_insecure_transport": "sometimes"}, "allow_insecure_transport"),
        ({"authority": "http://login.example.com"}, "authority"),
        ({"connection_verify": "maybe"}, "connection_verify"),
        ({"admin_username": "root"}, "admin_username"),
        ({"lro_polling_interval": -1}, "lro_polling_interval"),
        ({"resourcegroup": "typo"}, "resourcegroup"),
        ({"client_id": "id-only"}, "tenant_id, client_id and client_secret"),
    ],
)
async def test_bad_config_is_refused_naming_the_field(
    arm: FakeARM, change: dict[str, object], field: str
) -> None:
    config = {k: v for k, v in make_config(arm, **change).items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        await cloudvm_azure.DRIVER.instance_set(config, SET_ID, {}, logging.getLogger("t"))
    assert field in str(caught.value)
    assert arm.requests == []


@pytest.mark.parametrize(
    "base_url",
    [
        "https://127.0.0.1:1",
        "https://127.9.8.7:1",
        "https://[::1]:1",
        "https://localhost:1",
        "https://LocalHost.:1/",
        "http://127.0.0.1:1",
        "http://[::1]:1",
    ],
)
async def test_insecure_transport_is_allowed_to_loopback_addresses(base_url: str) -> None:
    config = make_config(FakeARM(), base_url=base_url, connection_verify=False)
    async with await cloudvm_azure.DRIVER.instance_set(config, SET_ID, {}, logging.getLogger("t")):
        pass


@pytest.mark.parametrize(
    ("base_url", "verify", "field"),
    [
        ("http://arm.example.com", True, "base_url"),
        ("HTTP://10.1.2.3:8080", True, "base_url"),
        ("https://arm.example.com", False, "connection_verify"),
        ("https://10.0.0.1", False, "connection_verify"),
        ("https://127.0.0.1.example.com", False, "connection_verify"),
        ("https://localhost.example.com", False, "connection_verify"),
        ("https://[::2]", False, "connection_verify"),
    ],
)
async def test_insecure_transport_to_other_hosts_needs_the_explicit_flag(
    base_url: str, verify: bool, field: str
) -> None:
    config = make_config(FakeARM(), base_url=base_url, connection_verify=verify)
    with pytest.raises(ConfigError) as caught:
        await cloudvm_azure.DRIVER.instance_set(config, SET_ID, {}, logging.getLogger("t"))
    assert f"{field}:" in str(caught.value)
    assert "allow_insecure_transport: true" in str(caught.value)
    config["allow_insecure_transport"] = True
    async with await cloudvm_azure.DRIVER.instance_set(config, SET_ID, {}, logging.getLogger("t")):
        pass


async def test_plain_http_to_a_loopback_server_works(
    credential: FakeCredential, logger: logging.Logger
) -> None:
    async with FakeARM(tls=False) as arm:
        config = make_config(arm, connection_verify=True)
        assert config["base_url"].startswith("http://127.0.0.1:")
        async with await cloudvm_azure.open_instance_set(
            config, SET_ID, {}, logger, credential=credential
        ) as instance_set:
            instance = await instance_set.create(SMALL, IMAGE, {}, InitCommand(""), None)
            assert [i.id for i in await instance_set.instances()] == [instance.id]
            await instance.destroy()
        assert_nothing_left(arm)
        assert arm.requests[0].headers["authorization"] == "Bearer fake-arm-token"


async def test_config_errors_never_echo_the_client_secret(arm: FakeARM) -> None:
    config = make_config(arm, client_secret=CLIENT_SECRET)  # no tenant_id or client_id
    with pytest.raises(ConfigError) as caught:
        await cloudvm_azure.DRIVER.instance_set(config, SET_ID, {}, logging.getLogger("t"))
    assert CLIENT_SECRET not in str(caught.value)


async def test_a_config_as_json_with_a_service_principal_makes_a_set(arm: FakeARM) -> None:
    config = make_config(arm, tenant_id="tenant", client_id="client", client_secret=CLIENT_SECRET)
    import json

    instance_set = await cloudvm_azure.DRIVER.instance_set(
        json.dumps(config), SET_ID, {}, logging.getLogger("t")
    )
    assert isinstance(instance_set, cloudvm_azure.AzureInstanceSet)
    async with instance_set:
        assert CLIENT_SECRET not in repr(instance_set._config)
    assert arm.requests == []


@pytest.mark.parametrize(
    ("image", "reference"),
    [
        (
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/images/img",
            {"id": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/images/img"},
        ),
        (
            "/SharedGalleries/gal/Images/img/Versions/1.0.0",
            {"sharedGalleryImageId": "/SharedGalleries/gal/Images/img/Versions/1.0.0"},
        ),
    ],
)
async def test_image_ids_become_image_references(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet, image: str, reference: dict[str, str]
) -> None:
    instance = await iset.create(SMALL, ImageID(image), {}, InitCommand(""), None)
    (put,) = arm.calls("PUT", "/virtualMachines/")
    assert put.body["properties"]["storageProfile"]["imageReference"] == reference
    await instance.destroy()
    assert_nothing_left(arm)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"image_id": "not-an-image"}, ValueError),
        ({"tags": {"cloudvm-instance-set": "x"}}, ValueError),
        ({"tags": {"k": 1}}, ValueError),
        ({"init_command": "x" * 1024}, ValueError),
        ({"public_key": "ssh-ed25519 AAAA"}, TypeError),
    ],
)
async def test_bad_create_input_fails_before_any_call(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet, args: dict[str, object], error: type
) -> None:
    call: dict[str, object] = {
        "itype": SMALL,
        "image_id": IMAGE,
        "tags": {},
        "init_command": "",
        "public_key": None,
    }
    call.update(args)
    with pytest.raises(error):
        await iset.create(**call)  # type: ignore[arg-type]
    assert arm.requests == []


AZURE_REFUSED_NAMES = ["a<b", "a>b", "50%", "R&D", "back\\slash", "why?", "team/unit"]


@pytest.mark.parametrize("key", AZURE_REFUSED_NAMES)
async def test_tag_names_azure_refuses_fail_create_before_any_call(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet, key: str
) -> None:
    with pytest.raises(ValueError, match="refuses in tag names") as caught:
        await iset.create(SMALL, IMAGE, {"ok": "1", key: "v"}, InitCommand(""), None)
    assert repr(key) in str(caught.value)
    assert arm.requests == []


@pytest.mark.parametrize("key", AZURE_REFUSED_NAMES)
async def test_tag_names_azure_refuses_fail_set_tags_before_any_call(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet, key: str
) -> None:
    instance = await iset.create(SMALL, IMAGE, {"job": "a"}, InitCommand(""), None)
    arm.requests.clear()
    with pytest.raises(ValueError, match="refuses in tag names") as caught:
        await instance.set_tags({key: "v"})
    assert repr(key) in str(caught.value)
    assert arm.requests == []
    assert instance.tags == {"job": "a"}
    await instance.destroy()
    assert_nothing_left(arm)


async def test_shared_tag_names_azure_refuses_fail_before_any_call(
    arm: FakeARM, credential: FakeCredential, logger: logging.Logger
) -> None:
    with pytest.raises(ValueError, match="shared resource tags: key 'cost/center'"):
        await cloudvm_azure.open_instance_set(
            make_config(arm), SET_ID, {"cost/center": "x"}, logger, credential=credential
        )
    assert arm.requests == []


async def test_more_tags_than_azure_allows_fail_before_any_call(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    # 50 tags a resource, three of them the set's own (set id, created-at, secret).
    many = {f"k{i}": "v" for i in range(48)}
    with pytest.raises(ValueError, match="at most 47"):
        await iset.create(SMALL, IMAGE, many, InitCommand(""), None)
    assert arm.requests == []
    del many["k0"]
    instance = await iset.create(SMALL, IMAGE, many, InitCommand(""), None)
    assert instance.tags == many
    await instance.destroy()
    assert_nothing_left(arm)


async def test_stopped_set_refuses_calls(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    await iset.stop()
    await iset.stop()
    with pytest.raises(RuntimeError):
        await iset.instances()
    assert arm.requests == []
