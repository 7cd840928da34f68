"""``fedlink futures``: the three personas' questions under the four futures, as a persona x future
matrix (HTML and PNG). :mod:`fedlink.cli.main` adds it to ``fedlink``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from fedlink.cli.common import handles_errors, out, progress_lines


@handles_errors
def futures(
    people: Annotated[int, typer.Option(help="Synthetic population shared by the four futures' federations.")] = 5_000,
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Folder for index.html, matrix.png, matrix.json and what each future publishes: new, empty, or an "
            "earlier run's (whose files are replaced).",
        ),
    ] = Path("futures"),
    seed: Annotated[int, typer.Option(help="Random seed of the synthetic population.")] = 7,
) -> None:
    """Run each persona's question under each of the four futures (for public good, in silos, for
    government, deprioritised), each future a real federation, and write the persona x future matrix.

    Four federations start in turn on loopback (a coordinator and the nodes of that future), each asked
    by the three personas under their own analyst certificates; nothing of them is kept but what the
    matrix and the publishing futures show.
    """
    from fedlink_tools.futures import run_futures  # the demo tooling loads only for this command

    matrix, page, chart = run_futures(out_dir, people, seed, progress=progress_lines("futures:"))
    table = Table(title="what each persona got", title_justify="left")
    table.add_column("persona")
    for future in matrix.futures:
        table.add_column(future.title)
    for persona in matrix.personas:
        table.add_row(Text(persona.key), *(Text(matrix.cell(persona.key, f.key).outcome.value) for f in matrix.futures))
    out.print(table)
    out.print(f"wrote {page} and {chart}", highlight=False)
