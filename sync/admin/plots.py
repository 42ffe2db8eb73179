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


__all__ = ["pyplot", "save_png", "show"]
