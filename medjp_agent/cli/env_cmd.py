"""`medjp env`: versions, hardware, the bitsandbytes 4-bit path and the caches, for a bug report."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from .options import console, reports_errors

if TYPE_CHECKING:
    from rich.table import Table

    from medjp_agent.envinfo import EnvInfo


def register(app: typer.Typer) -> None:
    @app.command("env")
    @reports_errors
    def env(
        as_json: Annotated[bool, typer.Option("--json", help="Print the same as one JSON object.")] = False,
    ) -> None:
        """What a bug report needs: library versions, GPUs or CPU features, the bitsandbytes 4-bit path this host
        takes, and MEDJP_HOME with the size of each cache under it. Loads no model."""
        from medjp_agent.envinfo import collect

        info = collect()
        if as_json:
            typer.echo(json.dumps(info.to_dict(), ensure_ascii=False, indent=2))
            return
        console.print(env_table(info))
        console.print(caches_table(info))


def env_table(info: EnvInfo) -> Table:
    from rich.table import Table

    from medjp_agent.envinfo import human_bytes

    table = Table(title="medjp env", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("Python", f"{info.python} ({info.platform})")
    for name, found in info.versions.items():
        table.add_row(name, found or "[dim]not installed[/]")
    gpus = "; ".join(f"{i}: {g.name}, {human_bytes(g.bytes)}" for i, g in enumerate(info.gpus))
    table.add_row("CUDA devices", gpus or "none")
    flags = ", ".join(f"{name} {'yes' if has else 'no'}" for name, has in info.cpu.flags.items()) or "not reported"
    cpu = info.cpu
    table.add_row("CPU", f"{cpu.model}, {cpu.cores} cores; {flags}; torch kernels {cpu.torch_capability}")
    table.add_row("bitsandbytes 4-bit", info.bnb_4bit_path)
    table.add_row("MEDJP_HOME", info.medjp_home)
    return table


def caches_table(info: EnvInfo) -> Table:
    from rich.table import Table

    from medjp_agent.envinfo import human_bytes

    table = Table(title="caches (MEDJP_HOME)", title_justify="left", min_width=40)
    table.add_column("cache")
    table.add_column("size", justify="right")
    for cache in info.caches:
        table.add_row(cache.name, human_bytes(cache.bytes))
    if not info.caches:
        table.add_row("[dim]none yet[/]", "")
    return table
