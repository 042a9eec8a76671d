"""Arbitrary tags round-trip exactly; derived labels are valid GCE labels."""

from __future__ import annotations

import re

import pytest
from cloudvm_gce._tags import decode_tags, encode_tags, label_filter, labels_for
from gce_fake_api import FakeCompute
from gce_helpers import IMAGE, ITYPE
from hypothesis import given
from hypothesis import strategies as st

import cloudvm
from cloudvm import InitCommand

_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
# Tag strings as validate_tags accepts them: no control characters.
_text = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=0, max_size=256)
_tags = st.dictionaries(
    _text.filter(lambda k: 0 < len(k) <= 128 and not k.startswith("cloudvm-")),
    _text,
    max_size=8,
)

AWKWARD = {
    "Role": "Worker",
    "role": "worker",
    "with space": "a value with  spaces ",
    "ünïcödé ключ": "値 🚀",
    'quote"and=AND': '(labels.x = "y")',
    "empty": "",
}


@given(_tags)
def test_tags_encode_and_decode_exactly(tags: dict[str, str]) -> None:
    assert decode_tags(encode_tags(tags)) == tags


@given(_text.filter(bool), _tags)
def test_derived_labels_are_valid_gce_labels(set_id: str, tags: dict[str, str]) -> None:
    labels = labels_for(set_id, tags)
    assert len(labels) == len(tags) + 1
    for key, value in labels.items():
        assert _LABEL_KEY.match(key), key
        assert _LABEL_VALUE.match(value), value


def test_labels_tell_case_apart() -> None:
    assert labels_for("s", {"a": "X"}) != labels_for("s", {"a": "x"})
    assert label_filter("s", {"A": "1"}) != label_filter("s", {"a": "1"})


def test_decode_refuses_what_this_driver_did_not_write() -> None:
    assert decode_tags(None) is None
    assert decode_tags("not json") is None
    assert decode_tags('{"a": 1}') is None
    assert decode_tags("[]") is None


async def test_awkward_tags_round_trip_through_the_api(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    inst = await gce_set.create(ITYPE, IMAGE, AWKWARD, InitCommand(""), None)
    assert inst.tags == AWKWARD
    (listed,) = await gce_set.instances(AWKWARD)
    assert listed.tags == AWKWARD
    assert [i.id for i in await gce_set.instances({"Role": "Worker"})] == [inst.id]
    assert await gce_set.instances({"Role": "worker"}) == []
    assert await gce_set.instances({"with space": "a value with spaces"}) == []
    await inst.set_tags({"ünïcödé ключ": "другое"})
    (listed,) = await gce_set.instances({"ünïcödé ключ": "другое"})
    assert listed.tags == {"ünïcödé ключ": "другое"}
    await inst.destroy()


async def test_reserved_and_too_many_tags_fail_before_any_call(
    gce_set: cloudvm.InstanceSet, fake_gce: FakeCompute
) -> None:
    with pytest.raises(ValueError, match="cloudvm-"):
        await gce_set.create(ITYPE, IMAGE, {"cloudvm-secret": "x"}, InitCommand(""), None)
    with pytest.raises(ValueError, match="at most 63"):
        await gce_set.create(ITYPE, IMAGE, {f"k{i}": "v" for i in range(64)}, InitCommand(""), None)
    with pytest.raises(ValueError, match="1 KiB"):
        await gce_set.create(ITYPE, IMAGE, {}, InitCommand("x" * 1024), None)
    assert fake_gce.requests == []
