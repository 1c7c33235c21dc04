"""What happens to samples longer than `max_seq_len`, with counts of every decision."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tune.data.masking import IGNORE_INDEX

TRUNCATION_POLICIES = ("truncate", "drop", "error")


class SampleTooLongError(ValueError):
    """A sample exceeds `max_seq_len` under the `error` policy."""


@dataclass
class DataStats:
    """Counters of what the pipeline kept, truncated and dropped (per rank).

    Args:
        seen: samples read from the source.
        kept: samples emitted for training.
        truncated: samples cut to `max_seq_len`.
        dropped_too_long: samples longer than `max_seq_len` dropped by the `drop` policy.
        dropped_no_labels: samples with no trained token (before or after truncation).
        dropped_by_filter: samples a user filter rejected.
        skipped_malformed: malformed source rows skipped under `max_bad_rows`.
        tokens_kept: tokens in emitted samples.
    """

    seen: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_labels: int = 0
    dropped_by_filter: int = 0
    skipped_malformed: int = 0
    tokens_kept: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a dict."""
        return asdict(self)

    def reasons(self) -> str:
        """A one-line summary of why samples were dropped."""
        parts = [f"{name}={value}" for name, value in self.as_dict().items() if value]
        return ", ".join(parts) if parts else "no samples read"


def apply_truncation(
    sample: dict[str, list[int]], max_seq_len: int, policy: str, stats: DataStats, where: str = ""
) -> dict[str, list[int]] | None:
    """Apply the truncation policy to one `{"tokens", "labels", ...}` sample; None means dropped.

    Args:
        sample: token and aligned label lists of equal length T.
        max_seq_len: the longest sample allowed.
        policy: `truncate` (keep the first `max_seq_len` tokens if a label survives, else drop),
            `drop`, or `error`.
        stats: counters updated in place.
        where: where the sample comes from, for errors.
    """
    if policy not in TRUNCATION_POLICIES:
        raise ValueError(f"truncation policy must be one of {TRUNCATION_POLICIES}, got {policy!r}")
    tokens, labels = sample["tokens"], sample["labels"]
    if len(tokens) > max_seq_len:
        if policy == "error":
            raise SampleTooLongError(
                f"{where}: {len(tokens)} tokens > max_seq_len={max_seq_len} (truncation='error')"
            )
        if policy == "drop":
            stats.dropped_too_long += 1
            return None
        labels = [*labels[: max_seq_len - 1], IGNORE_INDEX]  # its target was cut off
        sample = {**sample, "tokens": tokens[:max_seq_len], "labels": labels}
        if all(label == IGNORE_INDEX for label in labels):
            stats.dropped_no_labels += 1
            return None
        stats.truncated += 1
    elif all(label == IGNORE_INDEX for label in labels):
        stats.dropped_no_labels += 1
        return None
    return sample
