"""The report folder every ablation writes: results.json, table.md and its figure."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prosocial_jax.files import write_output_folder


def write_ablation_report(out_dir: str | Path, kind: str, record: dict[str, Any],
                          table: Callable[[dict[str, Any]], str],
                          plot: Callable[[dict[str, Any], Path], None], figure_name: str,
                          overwrite: bool = False,
                          jsonl: dict[str, Sequence[dict[str, Any]]] | None = None) -> Path:
    """`record` as results.json, `table(record)` as table.md, `plot(record, path)` as
    `figure_name` and each of `jsonl` (file name -> rows) as JSON lines, written atomically
    into `out_dir` (a previous `kind` output is replaced only with `overwrite`)."""
    def write(folder: Path) -> None:
        (folder / "results.json").write_text(json.dumps(record, indent=2) + "\n")
        (folder / "table.md").write_text(table(record) + "\n")
        plot(record, folder / figure_name)
        for name, rows in (jsonl or {}).items():
            with (folder / name).open("w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    return write_output_folder(out_dir, kind, write, overwrite)
