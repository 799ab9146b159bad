"""Model cards: the README.md of a checkpoint folder, with the Hugging Face Hub's YAML metadata.

The card is built from ``lbind.json`` alone (plus, on request, the result cards of :func:`lbcore.cards.cards_of`)
with huggingface_hub's :class:`~huggingface_hub.ModelCard`: metadata (``library_name: lbind``, tags with the
modalities, ``license``, ``base_model`` when a modality was converted from or refers to weights on the Hub,
``pipeline_tag: feature-extraction``) and a body listing the modalities with their plugins, the anchor, the
conversion and training records, the evaluation results and how to load the checkpoint.
:meth:`lbcore.model.BindModel.write_files` writes it with every checkpoint; ``lbind push`` rewrites it with the
metrics found beside the checkpoint. A README.md without :data:`GENERATED_MARK` is the user's and is kept.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData

from lbcore.cards import headline
from lbcore.hub import HUB_SCHEME, hub_origin, parse_hub_id

log = logging.getLogger(__name__)

__all__ = ["CARD_FILE", "GENERATED_MARK", "base_models", "model_card", "portability_problems", "write_model_card"]

CARD_FILE = "README.md"
GENERATED_MARK = "<!-- lbind:generated-card (delete this line to keep your own text when lbind writes the card) -->"
BASE_TAGS = ("lbind", "language-bind", "multimodal-embeddings")


def _hub_ids_of_init(init: Any) -> list[str]:
    """Hub ids among a run's ``train.init`` specs (``clip:org/name``, ``languagebind:hf://org/name@rev``, ...)."""
    specs = init.values() if isinstance(init, Mapping) else [init]
    found = []
    for spec in specs:
        _, sep, rest = str(spec).partition(":")
        hub = parse_hub_id(rest, bare=not Path(rest).expanduser().exists()) if sep and rest else None
        if hub is not None:
            found.append(hub.repo_id)
    return found


def base_models(meta: Mapping[str, Any]) -> list[str]:
    """The Hub repositories this checkpoint's weights come from: adapter bases and ``train.init`` named by hub id,
    and LanguageBind releases converted from the Hub cache (``converted.*.source``), in first-seen order."""
    found: list[str] = []
    for spec in meta["modalities"].values():
        source = str((spec.get("base") or {}).get("source") or "")
        hub = parse_hub_id(source.partition(":")[2]) if source else None
        if hub is not None:
            found.append(hub.repo_id)
    for record in (meta.get("converted") or {}).values():
        origin = hub_origin(str((record or {}).get("source") or ""))
        if origin is not None:
            found.append(origin.repo_id)
    found.extend(_hub_ids_of_init(((meta.get("train") or {}).get("config") or {}).get("init", "scratch")))
    return list(dict.fromkeys(found))


def portability_problems(meta: Mapping[str, Any]) -> list[str]:
    """What would keep this checkpoint from loading on another machine: an anchor or an adapter base named by a
    path outside the checkpoint folder (a hub id, ``minilm`` or ``./anchor`` inside it are fine)."""
    problems = []
    anchor = str(meta["anchor"].get("name") or "")
    if os.path.isabs(os.path.expanduser(anchor)):
        problems.append(
            f"the anchor is the local folder {anchor}: text embeddings need it (or pass another anchor of the "
            "same fingerprint); name the anchor by hub id, or convert it into the checkpoint"
        )
    for name, spec in meta["modalities"].items():
        source = str((spec.get("base") or {}).get("source") or "")
        if source and not source.partition(":")[2].startswith(HUB_SCHEME):
            problems.append(
                f"the {name} adapter applies to base weights {source} on this machine; loaders elsewhere must pass "
                f"base={{{name!r}: ...}} (or save full weights with `lbind train --save-full`)"
            )
    return problems


def _modalities_section(meta: Mapping[str, Any]) -> list[str]:
    lines = ["## Modalities", "", "| modality | plugin | version | weights | logit scale |", "|---|---|---|---|---|"]
    for name, spec in meta["modalities"].items():
        plugin = spec.get("distribution") or spec.get("plugin") or spec.get("module") or "?"
        weights = spec.get("weights", "full")
        if weights == "adapter":
            lora = spec.get("lora") or {}
            weights = f"LoRA adapter (rank {lora.get('rank')}) on `{(spec.get('base') or {}).get('source')}`"
        scale = spec.get("logit_scale")
        shown = f"{scale:.4f} (x{math.exp(scale):.1f})" if isinstance(scale, (int, float)) else "-"
        lines.append(f"| {name} | {plugin} | {spec.get('version') or '-'} | {weights} | {shown} |")
    return [*lines, ""]


def _anchor_section(meta: Mapping[str, Any]) -> list[str]:
    anchor = meta["anchor"]
    config = anchor.get("config") or {}
    name = anchor.get("name")
    where = " (inside this repository)" if str(name).startswith(("./", "../")) else ""
    return [
        "## Anchor",
        "",
        f"Text embeddings come from the frozen text encoder `{name}`{where}: {anchor.get('embed_dim')}-d, "
        f"pooling `{config.get('pooling', 'auto')}`, at most {config.get('max_length', '-')} tokens, "
        f"fingerprint `{str(anchor.get('fingerprint'))[:12]}`.",
        "",
    ]


def _converted_section(meta: Mapping[str, Any]) -> list[str]:
    converted = meta.get("converted") or {}
    if not converted:
        return []
    lines = ["## Converted from", "", "| modality | release | model type | LoRA merged |", "|---|---|---|---|"]
    for name, record in converted.items():
        origin = hub_origin(str(record.get("source") or ""))
        source = f"[{origin.repo_id}](https://huggingface.co/{origin.repo_id})" if origin else "a local folder"
        lora = record.get("lora_merged")
        merged = f"rank {lora.get('rank')}, alpha {lora.get('alpha')}" if isinstance(lora, dict) else "-"
        lines.append(f"| {name} | {source} | {record.get('model_type', '-')} | {merged} |")
    return [*lines, ""]


def _training_section(meta: Mapping[str, Any]) -> list[str]:
    train = meta.get("train") or {}
    if not train:
        return []
    step, total = train.get("step"), train.get("total_steps")
    epoch = train.get("epoch")
    when = f"Saved at step {step} of {total}" + (f" (epoch {epoch:.2f})." if isinstance(epoch, float) else ".")
    config = yaml.safe_dump(train.get("config") or {}, sort_keys=True, default_flow_style=False).rstrip()
    return ["## Training", "", when, "", "```yaml", config, "```", ""]


def _results_section(results: Sequence[Mapping[str, Any]]) -> list[str]:
    if not results:
        return []
    lines = ["## Evaluation", "", "Zero-shot results (`lbind eval`; metrics in %, ranks as they are):", ""]
    lines += ["| modality | task | dataset | split | items | metrics |", "|---|---|---|---|---|---|"]
    for card in results:
        evaluated = card.get("modality", "?")
        if card.get("fuse"):
            evaluated += f" + {card['fuse']} (fused)"
        if card.get("emergent"):
            evaluated += f" <-> {card['emergent']}"
        data = card.get("dataset") or {}
        metrics = ", ".join(f"{k} {v:.2f}" for k, v in headline(card).items())
        lines.append(
            f"| {evaluated} | {card.get('task')} | {data.get('name') or data.get('reader')} | "
            f"{data.get('split') or '-'} | {data.get('num_items', '-')} | {metrics or '-'} |"
        )
    return [*lines, ""]


def _usage_section(meta: Mapping[str, Any], repo_id: str | None) -> list[str]:
    names = list(meta["modalities"])
    target = f"{HUB_SCHEME}{repo_id}" if repo_id else "path/to/checkpoint"
    plugins = sorted({str(s.get("distribution")) for s in meta["modalities"].values() if s.get("distribution")})
    first = names[0] if names else "MODALITY"
    return [
        "## Use",
        "",
        "```bash",
        f"pip install lbind {' '.join(plugins)}".rstrip(),
        "```",
        "",
        "```python",
        "import lbcore",
        "",
        f'model = lbcore.load("{target}")',
        f'media = model.embed("{first}", ["example file"])  # L2-normalised, [N, {meta["anchor"].get("embed_dim")}]',
        'texts = model.embed_text(["a description", "another one"])',
        "print(model.similarity(media, texts))",
        "```",
        "",
        f"or from the command line: `lbind eval --checkpoint {target}`.",
        "",
    ]


def model_card(
    meta: Mapping[str, Any],
    *,
    repo_id: str | None = None,
    license: str | None = None,
    results: Sequence[Mapping[str, Any]] = (),
) -> ModelCard:
    """The model card of a checkpoint described by ``meta`` (its ``lbind.json``): ``repo_id`` shapes the loading
    example, ``license`` the metadata, ``results`` are result cards (see :func:`lbcore.cards.cards_of`)."""
    names = list(meta["modalities"])
    bases = base_models(meta)
    data = ModelCardData(
        library_name="lbind",
        license=license,
        base_model=bases or None,
        pipeline_tag="feature-extraction",
        tags=[*BASE_TAGS, *names],
    )
    title = repo_id.split("/")[-1] if repo_id else f"lbind checkpoint: {', '.join(names)}"
    body = [
        GENERATED_MARK,
        "",
        f"# {title}",
        "",
        f"An [lbind](https://pypi.org/project/lbind/) checkpoint: encoders for {', '.join(names)} that embed into "
        "the text embedding space of a frozen anchor (language-anchored multimodal embeddings, as LanguageBind).",
        "",
        *_modalities_section(meta),
        *_anchor_section(meta),
        *_converted_section(meta),
        *_training_section(meta),
        *_results_section(results),
        *_usage_section(meta, repo_id),
    ]
    problems = portability_problems(meta)
    if problems:
        body += ["## Limitations", "", *[f"- {p}" for p in problems], ""]
    if license is None:
        body += ["License: not stated.", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def write_model_card(directory: str | Path, meta: Mapping[str, Any], **options: Any) -> Path | None:
    """Write :func:`model_card` (``options``: its keywords) as ``directory/README.md``; return its path, or None
    when a README.md written by someone else (no :data:`GENERATED_MARK`) is there: that one is kept."""
    path = Path(directory) / CARD_FILE
    if path.is_file() and GENERATED_MARK not in path.read_text(encoding="utf-8", errors="replace"):
        log.info("%s: not written by lbind, kept as it is", path)
        return None
    model_card(meta, **options).save(path)
    return path
