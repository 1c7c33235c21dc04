"""Deterministic, rank-sharded sample order with a cursor that resumes exactly at any world size.

The order is a stream of global positions 0, 1, 2, ...; position `p` is row
`permutation(epoch=p // N)[p % N]`. Rank `r` of `W` reads the positions `pending[r::W]` left over
from a previous run, then `frontier + r`, `frontier + r + W`, ... so one global step of batch B
on every rank consumes the contiguous block of `W * B` positions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

STATE_VERSION = 1


class SampleOrder:
    """Maps a global position to a row index: a fresh permutation per epoch, keyed by the seed.

    Args:
        num_rows: rows in the dataset (N).
        seed: the shuffle seed.
        shuffle: permute each epoch (False: rows in order).
        epochs: number of epochs (None: endless).
    """

    def __init__(
        self, num_rows: int, seed: int = 0, shuffle: bool = True, epochs: int | None = 1
    ) -> None:
        if num_rows <= 0:
            raise ValueError(f"num_rows must be positive, got {num_rows}")
        self.num_rows = num_rows
        self.seed = seed
        self.shuffle = shuffle
        self.epochs = epochs
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    @property
    def total(self) -> int | None:
        """Number of positions in the stream (None: endless)."""
        return None if self.epochs is None else self.epochs * self.num_rows

    def row(self, position: int) -> int:
        """The row index at a global position.

        Args:
            position: the global position (>= 0).
        """
        epoch, offset = divmod(position, self.num_rows)
        if not self.shuffle:
            return offset
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            # A tensor, not a list: 8 bytes per row instead of ~36 for large datasets.
            self._perm = torch.randperm(self.num_rows, generator=generator)
            self._epoch = epoch
        return int(self._perm[offset])


class RankCursor:
    """The positions one rank reads, in order, and how far it has read.

    Args:
        rank: this rank.
        world_size: number of ranks.
        frontier: first global position of the strided part.
        pending: positions left over from a previous run; this rank takes `pending[rank::world_size]`.
    """

    def __init__(
        self, rank: int = 0, world_size: int = 1, frontier: int = 0, pending: Sequence[int] = ()
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.rank = rank
        self.world_size = world_size
        self.frontier = frontier
        self.pending = list(pending)[rank::world_size]
        self.pending_read = 0
        self.strided_read = 0

    def next_position(self) -> int:
        """Read the next position (advances the cursor)."""
        if self.pending_read < len(self.pending):
            self.pending_read += 1
            return self.pending[self.pending_read - 1]
        position = self.frontier + self.rank + self.strided_read * self.world_size
        self.strided_read += 1
        return position

    def peek(self) -> int:
        """The position `next_position` would return, without advancing."""
        if self.pending_read < len(self.pending):
            return self.pending[self.pending_read]
        return self.frontier + self.rank + self.strided_read * self.world_size

    def positions(self) -> Iterator[int]:
        """Endless iterator of `next_position()`."""
        while True:
            yield self.next_position()

    def state_dict(self, buffered: Sequence[int] = ()) -> dict[str, Any]:
        """This rank's cursor; `buffered` are positions read but not yet emitted (a packing buffer).

        Args:
            buffered: positions held back, in the order they were read.
        """
        return {
            "version": STATE_VERSION,
            "rank": self.rank,
            "world_size": self.world_size,
            "frontier": self.frontier,
            "strided_read": self.strided_read,
            "pending": list(buffered) + self.pending[self.pending_read :],
        }


def merge_rank_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Combine every rank's cursor (saved at the same step) into a world-size-free cursor.

    The result names the global frontier below which every position was consumed, except the
    listed `pending` ones (buffered, unread leftovers, and positions one rank had not reached).

    Args:
        states: `state_dict()` of ranks 0..W-1 (any order).
    """
    if not states:
        raise ValueError("merge_rank_states needs at least one rank state")
    world = states[0]["world_size"]
    if world is None:
        if len(states) != 1:
            raise ValueError("a merged cursor cannot be merged with others")
        return dict(states[0])
    by_rank = {s["rank"]: s for s in states}
    if sorted(by_rank) != list(range(world)) or any(s["world_size"] != world for s in states):
        raise ValueError(
            f"need one state per rank of world size {world}; got ranks {sorted(by_rank)} "
            f"with world sizes {sorted({s['world_size'] for s in states})}"
        )
    frontier = states[0]["frontier"]
    if any(s["frontier"] != frontier for s in states):
        raise ValueError("rank states come from different runs (frontiers differ)")
    steps = max(s["strided_read"] for s in states)
    pending: list[int] = []
    for rank in range(world):
        state = by_rank[rank]
        pending.extend(state["pending"])
        pending.extend(frontier + rank + k * world for k in range(state["strided_read"], steps))
    return {
        "version": STATE_VERSION,
        "rank": None,
        "world_size": None,
        "frontier": frontier + steps * world,
        "strided_read": 0,
        "pending": sorted(pending),
    }


def cursor_from_state(state: dict[str, Any], rank: int, world_size: int) -> RankCursor:
    """Rebuild a rank's cursor from a saved state.

    A state from the same rank and world size resumes exactly, buffer included. A merged state
    (`merge_rank_states`) or a single rank's state with nothing pending (ranks in lock step, as in
    unpacked training) resumes at any world size.

    Args:
        state: a rank state or a merged state.
        rank: this rank.
        world_size: number of ranks now.
    """
    if state.get("version") != STATE_VERSION:
        raise ValueError(
            f"unknown data cursor version {state.get('version')!r}; expected {STATE_VERSION}"
        )
    if state["world_size"] == world_size and state["rank"] == rank:
        cursor = RankCursor(rank, world_size, state["frontier"])
        cursor.strided_read = state["strided_read"]
        cursor.pending = list(state["pending"])
        return cursor
    if state["world_size"] is not None:
        if state["pending"]:
            raise ValueError(
                f"the cursor of rank {state['rank']}/{state['world_size']} holds {len(state['pending'])} "
                f"buffered positions; to resume as rank {rank}/{world_size} merge every rank's state "
                "with merge_rank_states()"
            )
        # Lock step: every rank read the same number of strided positions.
        state = {
            **state,
            "frontier": state["frontier"] + state["strided_read"] * state["world_size"],
        }
        state["strided_read"] = 0
    if state["strided_read"]:
        raise ValueError("a merged cursor must have strided_read == 0")
    return RankCursor(rank, world_size, state["frontier"], state["pending"])
