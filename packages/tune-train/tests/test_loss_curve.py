"""``plot_loss_curve`` draws the loss and validation loss of a metrics file as a PNG."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tune.train.loggers import JsonlLogger, can_plot, plot_loss_curve

PNG = b"\x89PNG\r\n\x1a\n"


def _metrics(path: Path) -> Path:
    logger = JsonlLogger(path)
    for step in range(1, 9):
        logger.log({"loss": 3.0 / step, "lr": 1e-4}, step)
        if step % 4 == 0:
            logger.log({"val_loss": 3.5 / step}, step)
    logger.close()
    return path


def test_curve_is_a_png_of_the_logged_series(tmp_path: Path) -> None:
    assert can_plot()
    out = plot_loss_curve(_metrics(tmp_path / "m.jsonl"), tmp_path / "plots" / "curve.png")
    assert out == tmp_path / "plots" / "curve.png"
    assert out.read_bytes()[:8] == PNG
    assert [p.name for p in out.parent.iterdir()] == ["curve.png"]  # nothing partial left
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (640, 400)
        colours = {image.getpixel((x, y))[:3] for x in range(80, 560, 4) for y in range(40, 360, 4)}
    assert len(colours) > 10  # lines were drawn, not an empty frame


def test_nothing_to_draw_returns_none(tmp_path: Path) -> None:
    empty = tmp_path / "m.jsonl"
    empty.write_text('{"step": 1, "lr": 0.1}\n')
    assert plot_loss_curve(empty, tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()


def test_without_matplotlib_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m.startswith("matplotlib")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'tune-train\[plot\]'"):
        plot_loss_curve(_metrics(tmp_path / "m.jsonl"), tmp_path / "c.png")
