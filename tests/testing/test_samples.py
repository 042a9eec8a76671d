"""The sample-config checks and import_program, on samples and programs
written by each test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest

from cloudvm.testing import import_program, load_sample_config, undocumented_keys

pytest.importorskip("yaml")


class Model(pydantic.BaseModel):
    region: str
    zones: list[str] = []
    client_id: str | None = pydantic.Field(default=None, alias="client.id")


SAMPLE = """\
# Where the instances run.
region: us-east-1
# zones: [a, b]
#   client.id: set, but indented: not documented at the top level
"""


def test_a_sample_that_documents_every_key_has_none_missing() -> None:
    assert undocumented_keys(Model, SAMPLE + "# client.id: app-1\n") == []


def test_a_key_the_sample_does_not_document_is_reported() -> None:
    # client.id is only in an indented comment; its alias is what a file spells.
    assert undocumented_keys(Model, SAMPLE) == ["client.id"]
    # The alias is matched literally, not as a pattern ("." is no wildcard).
    assert undocumented_keys(Model, SAMPLE + "clientXid: app-1\n") == ["client.id"]
    # A key only in a sentence, or commented without the "# " form, is not documented.
    text = "region: r\nsee zones: below\n#zones: [a]\n# client.id: c\n"
    assert undocumented_keys(Model, text) == ["zones"]


def test_load_sample_config_validates_and_lays_overrides_over_the_sample(tmp_path: Path) -> None:
    path = tmp_path / "sample.yaml"
    path.write_text(SAMPLE, encoding="utf-8")
    assert load_sample_config(path, Model) == {"region": "us-east-1"}
    assert load_sample_config(path, Model, {"region": "eu-west-1", "zones": ["z"]}) == {
        "region": "eu-west-1",
        "zones": ["z"],
    }
    assert load_sample_config(path, Model) == {"region": "us-east-1"}  # the file is unchanged


def test_load_sample_config_refuses_what_the_model_refuses(tmp_path: Path) -> None:
    path = tmp_path / "sample.yaml"
    path.write_text("zones: [a]\n", encoding="utf-8")
    with pytest.raises(pydantic.ValidationError, match="region"):
        load_sample_config(path, Model)
    path.write_text(SAMPLE, encoding="utf-8")
    with pytest.raises(pydantic.ValidationError, match="zones"):
        load_sample_config(path, Model, {"zones": "not a list"})


@pytest.mark.parametrize(
    ("text", "message"),
    [("- region\n", "must hold a mapping, not list"), ("region: [\n", "is not valid YAML")],
)
def test_load_sample_config_names_the_file_that_is_no_mapping(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as caught:
        load_sample_config(path, Model)
    assert str(path) in str(caught.value)


@pytest.fixture
def forget_modules() -> Iterator[list[str]]:
    """Names of the modules a test imports, removed from sys.modules after it."""
    names: list[str] = []
    yield names
    for name in names:
        sys.modules.pop(name, None)


def test_import_program_finds_its_siblings_and_restores_sys_path(
    tmp_path: Path, forget_modules: list[str]
) -> None:
    forget_modules += ["samples_test_program", "samples_test_sibling"]
    (tmp_path / "samples_test_sibling.py").write_text("ANSWER = 42\n", encoding="utf-8")
    program = tmp_path / "samples_test_program.py"
    program.write_text("import samples_test_sibling\n\nANSWER = samples_test_sibling.ANSWER\n")
    path_before = list(sys.path)

    module = import_program(program)

    assert module.ANSWER == 42
    assert sys.path == path_before
    assert import_program(str(program)) is module  # imported once


def test_import_program_refuses_another_file_of_the_same_name(
    tmp_path: Path, forget_modules: list[str]
) -> None:
    forget_modules.append("samples_test_twin")
    for where in ("one", "two"):
        (tmp_path / where).mkdir()
        (tmp_path / where / "samples_test_twin.py").write_text(f"WHERE = {where!r}\n")
    assert import_program(tmp_path / "one" / "samples_test_twin.py").WHERE == "one"
    with pytest.raises(ImportError, match="samples_test_twin"):
        import_program(tmp_path / "two" / "samples_test_twin.py")
    with pytest.raises(FileNotFoundError):
        import_program(tmp_path / "samples_test_missing.py")
