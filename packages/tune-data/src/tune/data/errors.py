"""The exception types of tune.data that several modules raise."""

from __future__ import annotations


class DataSourceError(ValueError):
    """A source that cannot be read: a malformed row, a missing column, no rows."""
