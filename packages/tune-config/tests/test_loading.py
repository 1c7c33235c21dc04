"""Loading: closed keys with did-you-mean (file:line), types, enums, overrides typed by schema."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from config_test_schema import NoImports, RunConfig

from tune.config import (
    ConfigError,
    ConfigValidationError,
    declared_recipe,
    key_lines,
    load_config,
    parse_override,
)


def test_a_valid_config_loads_into_typed_dataclasses(write_yaml) -> None:
    cfg = load_config(write_yaml(), RunConfig)
    assert isinstance(cfg, RunConfig)
    assert cfg.training.method == "lora"
    assert cfg.training.optimizer.lr == pytest.approx(1e-3)
    assert cfg.data.column_map == {"prompt": "q"}
    assert cfg.log_path == "out/metrics.jsonl"  # interpolation
    assert declared_recipe(write_yaml()) == "train"


def test_interpolation_sees_overrides(write_yaml, tmp_path: Path) -> None:
    cfg = load_config(write_yaml(), RunConfig, [f"output_dir={tmp_path}/run2"])
    assert cfg.log_path == f"{tmp_path}/run2/metrics.jsonl"


def test_a_misspelled_nested_key_names_full_key_file_line_and_suggestion(write_yaml) -> None:
    text = write_yaml().read_text().replace("    lr: 0.001", "    lrr: 0.001")
    path = write_yaml(text, name="typo.yaml")
    line = text.splitlines().index("    lrr: 0.001") + 1
    with pytest.raises(ConfigError) as exc:
        load_config(path, RunConfig)
    assert exc.value.key == "training.optimizer.lrr"
    assert (exc.value.source, exc.value.line) == (str(path), line)
    assert str(exc.value) == (
        f"{path}:{line}: training.optimizer.lrr: unknown key "
        "(did you mean 'training.optimizer.lr'?)"
    )


def test_the_right_name_in_the_wrong_section_is_suggested(write_yaml) -> None:
    path = write_yaml(write_yaml().read_text() + "warmup_steps: 3\n", name="misplaced.yaml")
    with pytest.raises(ConfigError, match=r"did you mean 'training.warmup_steps'"):
        load_config(path, RunConfig)


@pytest.mark.parametrize(
    ("item", "suggestion"),
    [
        ("data.max_seqlen=3", "data.max_seq_len"),  # typo
        ("data.max=3", "data.max_seq_len"),  # abbreviation
        ("trainng.method=full", "training.method"),  # misspelled section
        ("warmup_steps=1", "training.warmup_steps"),  # wrong section
    ],
)
def test_did_you_mean_suggestions(item: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_override(RunConfig, item)
    assert str(exc.value).endswith(f"unknown key (did you mean '{suggestion}'?)")


def test_an_unknown_override_key_names_the_command_line(write_yaml) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write_yaml(), RunConfig, ["training.optimizer.lrr=4"])
    assert exc.value.key == "training.optimizer.lrr"
    assert "command line (training.optimizer.lrr=...)" in str(exc.value)
    assert "did you mean 'training.optimizer.lr'" in str(exc.value)


def test_a_wrong_type_names_key_expected_type_and_value(write_yaml) -> None:
    text = write_yaml().read_text().replace("max_steps: 10", "max_steps: ten")
    with pytest.raises(ConfigError) as exc:
        load_config(write_yaml(text, name="t.yaml"), RunConfig)
    assert exc.value.key == "training.max_steps"
    assert "expected an integer or null, got 'ten'" in str(exc.value)
    with pytest.raises(ConfigError, match=r"data.packing: expected a boolean"):
        load_config(write_yaml(), RunConfig, ["data.packing=3"])
    with pytest.raises(ConfigError, match=r"data.targets: expected a list of str"):
        load_config(write_yaml(), RunConfig, ["data.targets=q_proj"])
    path = write_yaml(data={"source": "x", "column_map": {"prompt": 3}}, name="c.yaml")
    with pytest.raises(ConfigError, match=r"data.column_map.prompt: expected a string, got 3"):
        load_config(path, RunConfig)
    assert load_config(write_yaml(), RunConfig, ["data.column_map.prompt=3"]).data.column_map == {
        "prompt": "3"  # an override of a str key stays text
    }


def test_an_overridden_value_of_the_wrong_type_points_at_the_override(write_yaml) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write_yaml(), RunConfig, ["data.packing=3"])
    assert exc.value.line == "command line ('data.packing=3')"


def test_a_bad_enum_lists_the_allowed_values(write_yaml) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write_yaml(), RunConfig, ["training.method=lorra"])
    assert exc.value.key == "training.method"
    assert "expected one of 'full', 'lora', 'dora', got 'lorra'" in str(exc.value)


def test_a_missing_required_key(write_yaml) -> None:
    with pytest.raises(ConfigError, match=r"data.source: is required \(str\) but missing"):
        load_config(write_yaml("data:\n  packing: true\n", name="m.yaml"), RunConfig)
    with pytest.raises(ConfigError, match=r"data: is required"):
        load_config(write_yaml("output_dir: x\n", name="n.yaml"), RunConfig)


def test_null_only_where_the_schema_allows_it(write_yaml) -> None:
    cfg = load_config(write_yaml(), RunConfig, ["data.max_seq_len=null", "log_path=null"])
    assert (cfg.data.max_seq_len, cfg.log_path) == (None, None)
    with pytest.raises(ConfigError, match=r"training.warmup_steps: expected int \(null is not"):
        load_config(write_yaml(), RunConfig, ["training.warmup_steps=null"])


def test_a_config_for_another_program_is_refused(write_yaml) -> None:
    path = write_yaml(recipe="eval", name="d.yaml")
    with pytest.raises(ConfigError, match=r"recipe: config is for recipe 'eval', not 'train'"):
        load_config(path, RunConfig, recipe="train")
    assert load_config(path, RunConfig, recipe="eval").output_dir == "out"
    with pytest.raises(ConfigError, match=r"recipe: expected a string or null, got 3"):
        load_config(write_yaml(recipe=3, name="e.yaml"), RunConfig)


def test_not_a_mapping_bad_yaml_and_not_utf8(tmp_path: Path) -> None:
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listing, RunConfig)
    broken = tmp_path / "broken.yaml"
    broken.write_text("output_dir: x\ndata: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as exc:
        load_config(broken, RunConfig)
    assert str(exc.value).startswith(f"{broken}:2: <file>: ")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"output_dir: x\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text: byte 0xe9") as exc:
        load_config(latin, RunConfig)
    assert exc.value.line == 2
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml", RunConfig)


def test_an_unresolvable_interpolation_names_its_key(write_yaml) -> None:
    path = write_yaml(log_path="${nowhere}/m.jsonl", name="i.yaml")
    with pytest.raises(ConfigError, match=r"log_path: cannot resolve"):
        load_config(path, RunConfig)


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("code=007", ("code", "007")),  # a str field keeps the text verbatim
        ("output_dir=true", ("output_dir", "true")),
        ("training.warmup_steps=12", ("training.warmup_steps", 12)),
        ("training.optimizer.lr=1e-4", ("training.optimizer.lr", 1e-4)),  # YAML 1.1: a string
        ("training.max_steps=null", ("training.max_steps", None)),
        ("data.targets=[a, b]", ("data.targets", ["a", "b"])),
        ("training.optimizer.kwargs.anything=5", ("training.optimizer.kwargs.anything", 5)),
        ("recipe=train", ("recipe", "train")),  # reserved top-level keys
    ],
)
def test_overrides_are_typed_by_the_schema(item: str, expected: tuple) -> None:
    assert parse_override(RunConfig, item) == expected


def test_malformed_override_items() -> None:
    with pytest.raises(ConfigError, match="overrides are written key=value"):
        parse_override(RunConfig, "code")
    with pytest.raises(ConfigError, match="overrides are written key=value"):
        parse_override(RunConfig, "--code=1")
    with pytest.raises(ConfigError, match=r"lr: expected float, got 'fast'"):
        parse_override(RunConfig, "training.optimizer.lr=fast")
    with pytest.raises(ConfigError, match=r"recipe\.x"):
        parse_override(RunConfig, "recipe.x=1")


def test_removed_keys_say_what_to_do_instead(write_yaml) -> None:
    removed = {"data.streaming": "batches are built on the fly; remove the key"}
    with pytest.raises(ConfigError) as exc:  # as an override
        load_config(write_yaml(), RunConfig, ["data.streaming=true"], removed_keys=removed)
    assert exc.value.key == "data.streaming"
    assert str(exc.value).endswith(
        "data.streaming: was removed: batches are built on the fly; remove the key"
    )
    path = write_yaml(data={"source": "x", "streaming": True}, name="r.yaml")
    with pytest.raises(ConfigError, match=r"data.streaming: was removed: batches"):  # in a file
        load_config(path, RunConfig, removed_keys=removed)
    with pytest.raises(ConfigError, match=r"data.streaming: unknown key"):  # not given: unknown
        load_config(path, RunConfig)


def test_redact_hides_what_an_error_quotes(write_yaml) -> None:
    secret = "s3cr3t-" * 4

    def redact(text: str, key: str) -> str:
        return f"{key}=***" if key else text.replace(secret, "***")

    for item in [secret, f"training.optimizer.lr={secret}"]:
        with pytest.raises(ConfigError) as exc:
            load_config(write_yaml(), RunConfig, [item], redact=redact)
        assert secret not in str(exc.value), exc.value
        assert "***" in str(exc.value)
    # The location of an overridden key quotes the item through the rule, with its key.
    with pytest.raises(ConfigError) as exc:
        load_config(write_yaml(), RunConfig, ["data.packing=3"], redact=redact)
    assert exc.value.line == "command line ('data.packing=***')"
    # Without a rule the override is quoted as given.
    with pytest.raises(ConfigError, match=secret):
        parse_override(RunConfig, secret)


def test_validation_reports_every_error_by_key(write_yaml, caplog) -> None:
    items = ["training.optimizer.lr=0", "training.warmup_steps=20"]
    with pytest.raises(ConfigValidationError) as exc:
        load_config(write_yaml(), RunConfig, items)
    assert exc.value.keys == ["training.optimizer.lr", "training.warmup_steps"]
    assert str(exc.value).count("\n") == 0
    assert "2 invalid setting(s)" in str(exc.value)
    assert "training.warmup_steps: must be < training.max_steps (10)" in str(exc.value)
    # validate=False stops before the schema's checks; warnings are logged, not raised.
    assert load_config(write_yaml(), RunConfig, items, validate=False).training.warmup_steps == 20
    with caplog.at_level(logging.WARNING, logger="tune.config.loading"):
        load_config(write_yaml(), RunConfig, ["training.method=dora"], world_size=2)
    assert "warning: training.method: dora under several processes is slow" in caplog.text


def test_key_lines_maps_every_key_and_list_item() -> None:
    text = "a:\n  b: 1\n  c:\n    - x\n    - y\nd: 2\n"
    assert key_lines(text) == {"a": 1, "a.b": 2, "a.c": 3, "a.c.0": 4, "a.c.1": 5, "d": 6}
    assert key_lines("a: [unclosed\n") == {}


def test_a_schema_without_allow_imports_loads(write_yaml) -> None:
    assert load_config(write_yaml("name: y\n", name="s.yaml"), NoImports).name == "y"
