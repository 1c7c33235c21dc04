"""Load a YAML config into a dataclass schema: overrides, imports, closed keys, types.

    config = load_config("run.yaml", RunConfig, ["training.lr=1e-4"], allow_imports=["mypkg.*"])

Every error is a ``ConfigError`` naming the file and line (or the override) and the dotted key.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tune.config.errors import ConfigError
from tune.config.imports import ALLOW_HINT, allowed_from_env, check_component_keys
from tune.config.registries import check_components
from tune.config.schema import (
    build,
    convert,
    did_you_mean,
    find_unknown_keys,
    strip_optional,
    type_at,
    type_name,
)
from tune.config.validation import ValidationContext, validate_config, world_size_from_env

logger = logging.getLogger(__name__)

# Top-level keys every config may carry, whether or not its schema declares them.
RESERVED_KEYS: dict[str, Any] = {"recipe": str | None}
COMMAND_LINE = "command line"
# Set by the loader from the command line and the environment, never by a config.
ALLOW_IMPORTS_KEY = "allow_imports"
# (text, key) -> the text as an error may quote it. ``key`` is the dotted key when ``text`` is a
# whole ``key=value`` override, else "". Pass a rule that hides credentials (tune-train's
# redaction, or your own); the default quotes the text as given.
Redact = Callable[[str, str], str]


def _verbatim(text: str, key: str = "") -> str:
    return text


def unknown_key_message(
    key: str, schema: type, removed_keys: Mapping[str, str] | None = None
) -> str:
    """Why ``key`` is refused: removed (with what to do instead), or unknown (did-you-mean).

    Args:
        key: the full dotted key.
        schema: the root dataclass.
        removed_keys: dotted keys that were accepted once -> what to do instead.
    """
    if removed_keys and key in removed_keys:
        return f"was removed: {removed_keys[key]}"
    return "unknown key" + did_you_mean(key, schema)


def key_lines(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line number of every key (and list item) in a YAML document."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = f"{prefix}{key_node.value}"
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key + ".")
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[f"{prefix}{i}"] = item.start_mark.line + 1
                walk(item, f"{prefix}{i}.")

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def _schema_type(schema: type, key: str) -> Any:
    root = key.split(".")[0]
    hints = {f.name for f in dataclasses.fields(schema)}
    if root in RESERVED_KEYS and root not in hints:
        if "." in key:
            raise KeyError(key)
        return RESERVED_KEYS[root]
    return type_at(schema, key)


def parse_override(
    schema: type,
    item: str,
    *,
    removed_keys: Mapping[str, str] | None = None,
    redact: Redact | None = None,
) -> tuple[str, Any]:
    """``key=value`` -> (key, value typed by the schema's annotation of ``key``).

    Strings stay verbatim (``resume=007`` is the string "007"); numbers, booleans, lists and
    mappings are parsed as YAML; ``null`` sets an optional key to None.

    Args:
        schema: the root dataclass.
        item: one ``key=value`` override.
        removed_keys: dotted keys that were accepted once -> what to do instead.
        redact: hides credentials in the text an error quotes (see ``Redact``).

    Raises:
        ConfigError: malformed item, unknown key (with did-you-mean) or a value of the wrong type.
    """
    quote = redact or _verbatim
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or key.startswith("-"):
        # The item may hold a secret (a value with no key): quote it only through ``redact``.
        raise ConfigError(
            quote(item, ""),
            "overrides are written key=value (e.g. training.epochs=2)",
            COMMAND_LINE,
        )
    shown = f"{COMMAND_LINE} ({key}=...)"
    if key == ALLOW_IMPORTS_KEY or key.startswith(ALLOW_IMPORTS_KEY + "."):
        raise ConfigError(key, f"imports are not granted by overrides: {ALLOW_HINT}", shown)
    try:
        tp = _schema_type(schema, key)
    except KeyError:
        # A mistyped key (`data.hf_tokn=hf_...`) may carry a secret: name the key only.
        raise ConfigError(key, unknown_key_message(key, schema, removed_keys), shown) from None
    inner, optional = strip_optional(tp)
    if optional and raw.strip() in ("null", "~", "None"):
        return key, None
    is_str = inner is str or (
        typing.get_origin(inner) is Literal
        and all(isinstance(a, str) for a in typing.get_args(inner))
    )
    if is_str:
        return key, raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"cannot parse {quote(raw, '')!r}: {exc}", COMMAND_LINE) from None
    if inner is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-4 (no dot) as a string
            value = float(value)
        except ValueError:
            raise ConfigError(
                key, f"expected {type_name(tp)}, got {quote(raw, '')!r}", COMMAND_LINE
            ) from None
    return key, value


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The raw (unresolved) mapping of a YAML file and its key -> line map."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            "<file>", f"cannot read config: {exc.strerror or exc}", str(path)
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            "<file>",
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} cannot be "
            "decoded (save the file as UTF-8)",
            str(path),
            bad_line,
        ) from None
    try:
        cfg = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    except (yaml.YAMLError, OmegaConfBaseException) as exc:
        message, line = _yaml_problem(exc)
        raise ConfigError("<file>", message, str(path), line) from None
    if not OmegaConf.is_dict(cfg):
        raise ConfigError("<file>", "the top level must be a mapping of keys", str(path))
    return OmegaConf.to_container(cfg, resolve=False), key_lines(text)  # type: ignore[return-value]


def _yaml_problem(exc: Exception) -> tuple[str, int | None]:
    """(one-line message, line where the broken construct starts) of a YAML parse error."""
    parts, first_line = [], None
    for what, mark_name in (("context", "context_mark"), ("problem", "problem_mark")):
        text, mark = getattr(exc, what, None), getattr(exc, mark_name, None)
        if text:
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            parts.append(f"{' '.join(str(text).split())}{where}")
            if mark is not None and first_line is None:
                first_line = mark.line + 1
    message = "; ".join(parts) or " ".join(str(exc).split())
    return f"not valid YAML: {message}", first_line


def resolve_tree(
    schema: type,
    raw: dict[str, Any],
    overrides: Sequence[str],
    source: str,
    lines: dict[str, int | str] | None = None,
    *,
    removed_keys: Mapping[str, str] | None = None,
    redact: Redact | None = None,
) -> dict[str, Any]:
    """Apply ``key=value`` overrides to a raw tree, then resolve ``${...}`` interpolations.

    ``lines`` (key -> location) is updated so that overridden keys point at the command line;
    ``removed_keys`` and ``redact`` are those of ``parse_override``.
    """
    cfg = OmegaConf.create(raw)
    for item in overrides:
        key, value = parse_override(schema, item, removed_keys=removed_keys, redact=redact)
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
        if lines is not None:
            for k in [k for k in lines if k == key or k.startswith(key + ".")]:
                del lines[k]
            lines[key] = f"{COMMAND_LINE} ({(redact or _verbatim)(item, key)!r})"
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "<interpolation>"
        raise ConfigError(
            str(key), f"cannot resolve: {exc.msg if hasattr(exc, 'msg') else exc}", source
        ) from None


def load_config(
    path: str | Path,
    schema: type,
    overrides: Sequence[str] = (),
    *,
    recipe: str | None = None,
    allow_imports: Sequence[str] = (),
    validate: bool = True,
    world_size: int | None = None,
    missing_paths: Literal["error", "warn"] = "error",
    removed_keys: Mapping[str, str] | None = None,
    redact: Redact | None = None,
) -> Any:
    """Parse a YAML file with overrides into an instance of ``schema`` and validate it.

    Order: overrides typed by the schema, interpolation, refusal of dotted imports outside the
    allow-list, closed keys (did-you-mean), types, registry names, then ``schema.validate()``.

    Args:
        path: the YAML file.
        schema: the config dataclass (nested dataclasses are sections); a ``validate(context)``
            method returning ``Issue``s adds range and relation checks.
        overrides: ``key=value`` items applied on top of the file.
        recipe: the program the config is for; a ``recipe:`` key naming another is an error.
        allow_imports: patterns of dotted paths the config may import (``--allow-import``),
            joined by those of ``TUNE_ALLOW_IMPORTS``; a config cannot add any. The config's
            ``allow_imports`` field, where its schema has one, is set to the joined list.
        validate: run the schema's ``validate()``.
        world_size: processes of the run (default: ``WORLD_SIZE`` from the environment, or 1).
        missing_paths: ``"warn"`` reports paths absent on this machine as warnings.
        removed_keys: dotted keys that were accepted once -> what to do instead; a config that
            sets one is refused with that text (``data.hf_token: was removed: ...``).
        redact: hides credentials in the override text an error quotes (see ``Redact``).

    Raises:
        ConfigError: a key, type, or import problem, naming the dotted key and the file.
        ConfigValidationError: range or relation problems, every one named by its key.
    """
    source = str(path)
    raw, file_lines = read_yaml(path)
    lines: dict[str, int | str] = dict(file_lines)
    if ALLOW_IMPORTS_KEY in raw:
        raise ConfigError(
            ALLOW_IMPORTS_KEY,
            f"a config cannot grant itself imports: {ALLOW_HINT}",
            source,
            lines.get(ALLOW_IMPORTS_KEY),
        )
    tree = resolve_tree(
        schema, raw, overrides, source, lines, removed_keys=removed_keys, redact=redact
    )
    allowed = list(dict.fromkeys([*allow_imports, *allowed_from_env()]))
    check_component_keys(tree, allowed, source, lines)
    declared = tree.get("recipe")
    fields = {f.name for f in dataclasses.fields(schema)}
    for name, tp in RESERVED_KEYS.items():
        if name in tree and name not in fields:
            convert(tp, tree.pop(name), name, source, lines)
    if recipe is not None and declared is not None and declared != recipe:
        raise ConfigError(
            "recipe",
            f"config is for recipe {declared!r}, not {recipe!r}",
            source,
            lines.get("recipe"),
        )
    unknown = find_unknown_keys(tree, schema)
    if unknown:
        key = unknown[0]
        raise ConfigError(
            key, unknown_key_message(key, schema, removed_keys), source, lines.get(key)
        )
    config = build(schema, tree, source, lines)
    if ALLOW_IMPORTS_KEY in fields:
        config = dataclasses.replace(config, **{ALLOW_IMPORTS_KEY: allowed})
    check_components(config, allowed, source, lines)
    if validate:
        context = ValidationContext(
            world_size=world_size if world_size is not None else world_size_from_env(),
            missing_paths=missing_paths,
        )
        for issue in validate_config(config, context, source):
            logger.warning("%s: %s", source, issue)
    return config


def declared_recipe(path: str | Path) -> str | None:
    """The ``recipe:`` a YAML config declares, if any."""
    raw, _ = read_yaml(path)
    value = raw.get("recipe")
    return value if isinstance(value, str) else None
