"""``lbind push``: upload a checkpoint folder to the Hugging Face Hub with its model card (work in lbcore.push)."""

from __future__ import annotations

import click

from lbcore.cli import render
from lbcore.push import push_checkpoint


@click.command()
@click.argument("checkpoint", type=click.Path(file_okay=False, exists=True))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repository private (an existing one keeps its visibility).")
@click.option("--revision", "--branch", "revision", help="Branch to commit to (created when missing; default main).")
@click.option("--token", envvar="HF_TOKEN", help="Hub token (default: HF_TOKEN, or the login of `hf auth login`).")
@click.option("--message", "-m", "commit_message", help="Commit message (default: names the modalities).")
@click.option("--license", "license_id", help="License id for the card's metadata, e.g. mit or apache-2.0.")
def push(
    checkpoint: str,
    repo_id: str,
    private: bool,
    revision: str | None,
    token: str | None,
    commit_message: str | None,
    license_id: str | None,
) -> None:
    """Upload the lbind checkpoint folder CHECKPOINT to the Hub model repository REPO_ID (ORG/NAME), with a model
    card (README.md: metadata, modalities, anchor, training config, the metrics of its result cards, how to load
    it). Load it anywhere with lbcore.load("hf://ORG/NAME")."""
    if license_id is None:
        render.dim_note("no --license given: the card states none")
    url = push_checkpoint(
        checkpoint,
        repo_id,
        private=private,
        revision=revision,
        token=token,
        commit_message=commit_message,
        license=license_id,
    )
    render.pushed(checkpoint, url, repo_id.removeprefix("hf://"))
