"""Each sample config in examples/config/ is valid for its driver's config
model and documents every key of it (the drivers' tests run the fleet
examples on these samples, pointed at their local stand-ins)."""

from __future__ import annotations

import pydantic
import pytest

from cloudvm.testing import load_sample_config, undocumented_keys

from .conftest import EXAMPLES

pytest.importorskip("yaml")

#: Each sample's config model, by the sample's name.
MODELS = {
    "azure": "cloudvm_azure:AzureConfig",
    "ec2": "cloudvm_ec2:EC2Config",
    "gce": "cloudvm_gce:GCEConfig",
}


def test_every_sample_has_a_model() -> None:
    assert sorted(p.stem for p in (EXAMPLES / "config").glob("*.yaml")) == sorted(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_sample_is_valid_and_documents_every_key(name: str) -> None:
    module, _, attribute = MODELS[name].partition(":")
    model = getattr(pytest.importorskip(module), attribute)
    assert issubclass(model, pydantic.BaseModel)
    sample = EXAMPLES / "config" / f"{name}.yaml"
    load_sample_config(sample, model)
    assert undocumented_keys(model, sample.read_text(encoding="utf-8")) == []
