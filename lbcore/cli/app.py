"""``lbind app``: the interactive demo as a local web page (the page is :mod:`lbcore.appview`)."""

from __future__ import annotations

import click

from lbcore.appview import start
from lbcore.cli import render


@click.command()
@click.option(
    "--checkpoint", "-c", "checkpoints", multiple=True, type=click.Path(file_okay=False),
    help="Checkpoint folder (repeat for several; default: the demo checkpoints runs/demo/<modality>/final).",
)  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on (local only by default).")
@click.option("--port", type=int, help="Port (default: the first free one from 7860).")
def app(checkpoints: tuple[str, ...], host: str, port: int | None) -> None:
    """Serve the interactive demo as a local web page: text <-> media, zero-shot, media <-> media, the model."""
    running = start(checkpoints or None, host=host, port=port)
    render.app_serving(running.url, running.session.modalities)
    try:
        running.wait()
    finally:
        running.close()
