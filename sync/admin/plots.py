"""PNG plots of the admin commands (matplotlib on the Agg backend: files, no display; the [plot] extra)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgerec.sdk.cli.output import print_json
from edgerec.sync.protocol.errors import ConfigError


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (PNG files, no display); ConfigError naming --plot without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("--plot: needs matplotlib (pip install 'edgerec[plot]')") from exc
    return plt


def as_text(text: Any) -> Any:
    """A matplotlib ``Text`` drawn as written: no math text (``$...$``), no TeX; returns it."""
    text.set_parse_math(False)
    text.set_usetex(False)
    return text


def set_title(ax: Any, title: str) -> None:
    """``ax``'s title as plain text: it may hold node- or admin-supplied names (a ``$`` is no math text)."""
    as_text(ax.set_title(title))


def legend(ax: Any, entries: list[tuple[Any, str]], **kwargs: Any) -> Any:
    """A legend of these (artist, label) pairs, each label plain text whatever it holds: a node- or
    admin-supplied ``$`` is no math text (``$\\foo{$`` would make savefig raise), and a leading ``_`` is
    kept (matplotlib leaves such labels out only when it gathers the artists itself, not when they are given)."""
    if not entries:
        return None
    handles, labels = [h for h, _ in entries], [label for _, label in entries]
    box = ax.legend(handles, labels, **kwargs)
    for text in box.get_texts():
        as_text(text)
    return box


def save_png(fig: Any, path: Path) -> None:
    """Write ``fig`` to ``path`` as a PNG and close it; ConfigError naming --plot if it cannot be written."""
    plt = pyplot()
    try:
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    except OSError as exc:
        raise ConfigError(f"--plot: cannot write {path} ({exc.strerror})") from exc
    finally:
        plt.close(fig)


def show(doc: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], None], plot: Path | None,
         plotter: Callable[[dict[str, Any], Path], None]) -> None:
    """A report's output: the plot first (when asked; an error there leaves stdout empty), then JSON or a table."""
    if plot is not None:
        plotter(doc, plot)
    if as_json:
        print_json(doc)
    else:
        render(doc)


__all__ = ["as_text", "legend", "pyplot", "save_png", "set_title", "show"]
