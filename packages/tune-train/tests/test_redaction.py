"""The redaction rule covers everything tune-recipes' config rule covers, and log lines too."""

from __future__ import annotations

from typing import Any

import pytest

from tune.train import is_secret_key, redact_message, redact_secrets, redact_text
from tune.train.loggers import REDACTED

HF = "hf_" + "AbCdEfGhIj" * 3 + "12"
SK = "sk-proj-" + "a1B2c3D4e5" * 3
WANDB = "0123456789abcdef" * 2 + "01234567"  # 40 hex
NO_ENV: dict[str, str] = {}


@pytest.mark.parametrize(
    "name",
    ["token", "hf_token", "hf-token", "auth_token", "access_token", "api_key", "apikey",
     "wandb_api_key", "secret", "client_secret", "secret_key", "password", "passwd",
     "credentials", "credential", "private_key", "start_token", "image_token"],
)  # fmt: skip
def test_every_name_tune_recipes_redacts_is_secret(name: str) -> None:
    assert is_secret_key(name, "value123")
    assert redact_secrets({name: "value123", "nested": [{name: {"a": 1}}]}, NO_ENV) == {
        name: REDACTED,
        "nested": [{name: REDACTED}],
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [("pad_token", "<pad>"), ("eos_token", "</s>"), ("max_new_tokens", 64),
     ("num_key_value_heads", 8), ("flops_per_token", 3.1e9), ("use_auth_token", True),
     ("hf_token", None), ("api_key", ""), ("tokenizer_path", "/m/tokenizer.json")],
)  # fmt: skip
def test_settings_that_are_not_secrets_are_kept(name: str, value: Any) -> None:
    assert not is_secret_key(name, value)
    assert redact_secrets({name: value}, NO_ENV) == {name: value}


def test_numbers_under_credential_names_are_redacted() -> None:
    red = redact_secrets({"api_key": 12345, "db_password": 1, "access_token": 7}, NO_ENV)
    assert red == {"api_key": REDACTED, "db_password": REDACTED, "access_token": REDACTED}


def test_values_that_look_like_tokens_are_redacted_anywhere() -> None:
    config = {
        "model": HF,  # the tune-recipes value rule: a bare HF token
        "output_dir": f"/runs/{HF}/out",
        "headers": ["Authorization: Bearer abc.def-123456"],
        "openai": {"base": "x", "k": SK},
        "wandb": {"entity": "me", "kk": WANDB},
        "revision": WANDB,  # a bare 40-hex outside wandb is a git commit: kept
    }
    red = redact_secrets(config, NO_ENV)
    assert red["model"] == REDACTED
    assert red["output_dir"] == f"/runs/{REDACTED}/out"
    assert red["headers"] == [f"Authorization: Bearer {REDACTED}"]
    assert red["openai"] == {"base": "x", "k": REDACTED}
    assert red["wandb"] == {"entity": "me", "kk": REDACTED}
    assert red["revision"] == WANDB


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f"loading with hf_token={HF} from hub", "loading with hf_token=*** from hub"),
        ('{"api_key": "plainsecret", "lr": 0.001}', '{"api_key": "***", "lr": 0.001}'),
        ("password: hunter22 user: bob", "password: *** user: bob"),
        ("tune run sft --hf-token abcdefgh12 --lr 1e-4", "tune run sft --hf-token *** --lr 1e-4"),
        (f"WANDB_API_KEY={WANDB}", "WANDB_API_KEY=***"),
        (f"wandb login {WANDB}", "wandb login ***"),
        (f"using key {SK} now", "using key *** now"),
        ("slack xoxb-1234567890-abcdefghij aws AKIAABCDEFGHIJKLMNOP", "slack *** aws ***"),
        ("gh " + "ghp_" + "a1" * 18, "gh ***"),
        (f"checkout {WANDB}", f"checkout {WANDB}"),
        ("eos_token=</s> max_new_tokens=64 loss=2.5", "eos_token=</s> max_new_tokens=64 loss=2.5"),
        ("the token count is 5 --eos-token </s>", "the token count is 5 --eos-token </s>"),
    ],
)  # fmt: skip
def test_redact_text_for_log_lines(line: str, expected: str) -> None:
    assert redact_text(line, NO_ENV) == expected


def test_redact_text_scrubs_secret_environment_values() -> None:
    env = {"HF_TOKEN": "custom-secret-value", "MY_SERVICE_SECRET": "abcdef123", "HOME": "/home/u"}
    line = "sent custom-secret-value and abcdef123 from /home/u"
    assert redact_text(line, env) == "sent *** and *** from /home/u"


@pytest.mark.parametrize(
    ("name", "value"),
    [("hf_token", 123456789), ("token", 12345), ("auth_token", 7), ("secret", 1.5),
     ("credentials", [1, 2]), ("hf_token", ["a", "b"]), ("api_key", {"k": "v"})],
)  # fmt: skip
def test_any_value_under_a_credential_name_is_redacted(name: str, value: Any) -> None:
    # Merged from tune-recipes' rule: a YAML `hf_token: 123456789` is an int, still a secret.
    assert is_secret_key(name, value)
    assert redact_secrets({name: value}, NO_ENV) == {name: REDACTED}


@pytest.mark.parametrize(
    "name",
    ["tokenizer", "max_tokens", "tokens_per_second", "secretary", "keep_last_n", "eos-token",
     "bos_token"],
)  # fmt: skip
def test_names_that_only_resemble_credentials_are_kept(name: str) -> None:
    assert not is_secret_key(name, "value123")
    assert not is_secret_key(name, 42)


def test_a_config_tree_keeps_its_shape_with_secrets_replaced() -> None:
    tree = {
        "data": {"hf_token": HF, "source": "x"},
        "logging": {"options": {"wandb": {"api_key": "k-123", "project": "p"}}},
        "notes": [HF, "plain", ("a", SK)],  # token-shaped values under innocent keys
        "empty": {"token": None},
        "flags": {"use_auth_token": False},
    }
    assert redact_secrets(tree, NO_ENV) == {
        "data": {"hf_token": REDACTED, "source": "x"},
        "logging": {"options": {"wandb": {"api_key": REDACTED, "project": "p"}}},
        "notes": [REDACTED, "plain", ("a", REDACTED)],
        "empty": {"token": None},
        "flags": {"use_auth_token": False},
    }
    assert tree["data"]["hf_token"] == HF  # a copy: the run keeps its secret


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("cfg.yaml:3: data.hf_token: unknown key", "cfg.yaml:3: data.hf_token: unknown key"),
        ("training.sort_key: expected int", "training.sort_key: expected int"),
        ("bad override data.hf_token=abcdef12", "bad override data.hf_token=***"),
        ("got {'api_key': 'plainsecret'}", "got {'api_key': '***'}"),
        (f"model.path: {HF} not found", "model.path: *** not found"),
        ("--hf-token abcdefgh12 is not a flag", "--hf-token *** is not a flag"),
    ],
)  # fmt: skip
def test_redact_message_keeps_the_words_after_a_key(message: str, expected: str) -> None:
    assert redact_message(message, NO_ENV) == expected


def test_redact_message_scrubs_secret_environment_values() -> None:
    env = {"HF_TOKEN": "custom-secret-value"}
    assert redact_message("HF_TOKEN value custom-secret-value", env) == "HF_TOKEN value ***"


def test_the_working_directory_is_not_a_secret() -> None:
    # `PWD` reads as a password name; redacting it turned every path under the cwd into ***.
    from tune.train.loggers.redaction import secret_env_values

    env = {"PWD": "/home/user/project", "OLDPWD": "/home/user", "DB_PWD": "hunter2-hunter2"}
    assert secret_env_values(env) == ["hunter2-hunter2"]
    config = {"output_dir": "/home/user/project/out", "password": "x"}
    assert redact_secrets(config, env) == {
        "output_dir": "/home/user/project/out",
        "password": "***",
    }
