"""Run directory: an output directory apart from every input, claimed by one run at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune.checkpoint import (
    OutputOverlapsInputError,
    RunLock,
    RunLockedError,
    check_output_apart,
    claim_run_directory,
    read_lock_holder,
)


@pytest.mark.parametrize(
    ("output", "relation"),
    [("base", "is"), ("base/runs/one", "lies inside"), ("", "contains"), ("link", "is")],
)
def test_an_output_overlapping_an_input_is_refused_naming_both(
    tmp_path: Path, output: str, relation: str
) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (tmp_path / "link").symlink_to(base)  # resolved: writing through it writes into base
    out = tmp_path / output
    with pytest.raises(OutputOverlapsInputError) as err:
        check_output_apart(out, {"tok": None, "model.checkpoint_dir": base}, output_name="out_dir")
    assert str(err.value).startswith(f"out_dir={out} ({out.resolve()}) {relation} the input ")
    assert f"model.checkpoint_dir={base} ({base.resolve()})" in str(err.value)


def test_apart_outputs_and_missing_inputs_pass(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    check_output_apart(
        tmp_path / "base-runs",  # a shared name prefix is not containment
        {"model": tmp_path / "base", "hub": "org/model", "gone": tmp_path / "runs"},
    )


def test_the_claim_holds_the_lock_until_the_block_ends(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "exp"
    with claim_run_directory(out, {}, command=["train", "--x"]) as lock:
        assert lock is not None
        assert read_lock_holder(lock.path)["command"] == ["train", "--x"]
        with pytest.raises(RunLockedError, match=r"locked by pid .*command: train --x"):
            RunLock(out).acquire()
    RunLock(out).acquire().release()  # released on leaving


def test_a_refused_claim_takes_no_lock(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    with (
        pytest.raises(OutputOverlapsInputError),
        claim_run_directory(base / "out", {"model": base}),
    ):
        pass
    assert not (base / "out").exists()  # nothing written into the input
