"""The one writer for tables and plots: every report of every stage goes through here.

- `markdown_table(header, rows)`: a Markdown table from already formatted cells.
- `percent` / `number`: the cell formats reports share (empty for a missing value).
- `save_figure(figure, path)`: a PNG written atomically (a reader never sees half a file).
  Figures are made with `new_figure` on matplotlib's object API, so no GUI backend is selected
  and nothing global (pyplot's current figure) is touched: safe in tests and threads.
- `write_report(folder, name, record, draw, table)`: `NAME.json` + `NAME.png` as one output
  folder (see `prosocial_jax.files.write_output_folder`), the way every command writes reports.

Example:
    >>> print(markdown_table(["setting", "refused"], [["base", percent(0.25)]]))
    | setting | refused |
    |---|---|
    | base | 25.0% |
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prosocial_jax.files import atomic_open, write_output_folder


def percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def number(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def new_figure(width: float, height: float):
    """A matplotlib Figure not registered with pyplot (no backend, no global state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def save_figure(figure, path: str | Path, dpi: int = 120, **savefig_kwargs) -> None:
    """`figure` as a PNG at `path`, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=dpi, **savefig_kwargs)


def write_report(folder: str | Path, name: str, record: dict[str, Any],
                 plot: Callable[[Any, Path], None], table: str, overwrite: bool = False) -> str:
    """`folder/NAME.json` and `folder/NAME.png` (`plot(record["rows"], path)`), written as one
    output folder; prints the table; returns "wrote ..." for the command's closing line."""
    folder = Path(folder)

    def write(tmp: Path) -> None:
        (tmp / f"{name}.json").write_text(json.dumps(record, indent=2))
        plot(record["rows"], tmp / f"{name}.png")

    write_output_folder(folder, f"{name} report", write, overwrite)
    print(table)
    return f"wrote {folder / f'{name}.json'}, {folder / f'{name}.png'}"
