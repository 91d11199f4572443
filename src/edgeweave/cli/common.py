"""Pieces every command shares: the model choice, JSON output, consoles and tables that read in pipes."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=False, highlight=False, soft_wrap=True)  # long lines wrap where they are read, not mid-pipe
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]


@dataclass
class ModelChoice:
    """What the user asked for, checked; built lazily because building a model can take seconds."""

    spec: str
    input_shape: tuple[int, ...] | None = None
    checkpoint: Path | None = None
    input_kind: str = "float"
    labels: bool = False  # --labels: the model ends in a per-pixel argmax (uint8 label map)
    input_dtype: str | None = None
    input_range: tuple[float, float] | None = None

    def load(self):
        from edgeweave.zoo import load_model

        return load_model(
            self.spec,
            input_shape=self.input_shape,
            checkpoint=self.checkpoint,
            input_kind=self.input_kind,
            labels=self.labels,
            input_dtype=self.input_dtype,
            input_range=self.input_range,
        )

    @property
    def cache_name(self) -> str:
        """The profile cache's name for this model as built (each variant captures other nodes)."""
        name = self.spec if self.input_kind == "float" else f"{self.spec}+{self.input_kind}"
        if self.input_dtype is not None:
            name = f"{name}+{self.input_dtype}"
        return f"{name}+labels" if self.labels else name


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def print_table(table: Table, to: Console | None = None) -> None:
    """A table on a terminal; plain markdown when output goes to a pipe or a file.

    rich fits a table to the terminal's width by cutting cells ("mobilenet_v3_la…"); in a pipe
    it assumes 80 columns and cuts just the same. Markdown rows keep every cell whole, read well
    in a log, and paste into an issue (llama-bench does the same).
    """
    out = to or console
    if out.is_terminal:
        out.print(table)
        return
    headers = [_plain(c.header) for c in table.columns]
    cells = [[_plain(cell) for cell in column.cells] for column in table.columns]
    rows = list(zip(*cells, strict=True)) if cells else []
    right = [c.justify == "right" for c in table.columns]
    lines = []
    if table.title:
        lines.append(f"{_plain(table.title)}\n")
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    out.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
    out.print()


def _plain(renderable: Any) -> str:
    """A cell's text without rich markup; '|' escaped so that it cannot end a markdown cell."""
    from rich.text import Text

    text = renderable.plain if isinstance(renderable, Text) else Text.from_markup(str(renderable)).plain
    return text.replace("|", "\\|").replace("\n", " ")
