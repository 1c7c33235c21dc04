"""Column maps: `{expected name: dataset column}`, the one direction every builder reads.

A builder reads rows by its own column names (`instruction`, `messages`, `chosen`, ...); a
dataset whose columns are named otherwise is mapped with `columns={"instruction": "question"}`
(the recipes' `data.column_map` is the same mapping). `column_map_problem` finds a map written
the other way round and says how to flip it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# The column names each builder reads, by the format name the recipes use.
BUILDER_COLUMNS: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction", "input", "output", "system"),
    "chat": ("messages",),
    "text": ("text",),
    "prompt": ("prompt", "answer", "system"),
    "paired": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
}


def flow_mapping(mapping: Mapping[str, str]) -> str:
    """`{a: b, c: d}`: a mapping as a YAML flow mapping (what a config or override takes)."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"


def column_map_problem(
    column_map: Mapping[str, str], expected: Sequence[str], key: str = "columns"
) -> str | None:
    """Why `column_map` does not fit a builder that reads `expected` columns; None if it does.

    A key that is not an expected name while its value is one was written the other way round
    (`{dataset_column: expected}`): the message shows the flipped map to use.

    Args:
        column_map: expected name -> dataset column.
        expected: the builder's column names (see `BUILDER_COLUMNS`).
        key: how the message names the map (`columns`, `data.column_map`, ...).

    Returns:
        A one-line message that starts with `key: `, or None.
    """
    unknown = [k for k in column_map if k not in expected]
    if not unknown:
        return None
    reversed_keys = [k for k in unknown if column_map[k] in expected]
    names = ", ".join(expected)
    if reversed_keys:
        flipped = {
            (column_map[k] if k in reversed_keys else k): (k if k in reversed_keys else v)
            for k, v in column_map.items()
        }
        return (
            f"{key}: {reversed_keys} are dataset columns, not names the builder reads ({names}); "
            f"the map is {{expected name: dataset column}}: write {key}={flow_mapping(flipped)}"
        )
    return (
        f"{key}: unknown key(s) {unknown}; the keys are the names the builder reads ({names}), "
        "each mapped to a dataset column"
    )
