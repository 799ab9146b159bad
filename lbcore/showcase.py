"""The demo benchmark behind ``lbind demo``: train every modality's demo preset on its demo data, evaluate it
zero-shot on the held-out demo split, and write one summary.

This is application code: it orchestrates the trainer and the evaluation runner, and only the CLI imports it.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lbcore import __version__
from lbcore.cards import write_card
from lbcore.checkpoint import find_latest, read_meta, write_json
from lbcore.errors import EvaluationError, LbindError
from lbcore.evaluate import Evaluation, ProgressCallback, evaluate_checkpoint
from lbcore.modality import Modality
from lbcore.plot import write_plot
from lbcore.plugins import default_registry
from lbcore.runconfig import resolve_config
from lbcore.trainer import train

__all__ = ["DEMO_MIN_TOP1", "run_demo"]

log = logging.getLogger(__name__)

DEMO_MIN_TOP1 = 80.0

TrainProgress = Callable[[str, Any], None]  # (modality, training event)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 2)


def _has_demo_data(cls: type) -> bool:
    return getattr(cls, "make_demo_data", None) is not Modality.make_demo_data


def _stale_run(run_dir: Path, name: str, plan: Any) -> bool:
    """True when the demo run in ``run_dir`` was trained with another config or anchor than ``plan`` (e.g. the
    plugin's demo preset changed since): it cannot be resumed and is retrained from scratch."""
    latest = find_latest(run_dir)
    if latest is None:
        return False
    meta = read_meta(latest)
    saved = (meta["modalities"].get(name) or {}).get("config")
    anchor = (meta["anchor"].get("config") or {}).get("name")
    stale = saved != plan.modalities[name].model_dump(mode="json") or anchor != plan.anchor.name
    if stale:
        log.warning("%s: trained with another %s config or anchor than now; training it again", latest, name)
    return stale


def _demo_plan(name: str, run_dir: Path, config: Mapping[str, Any]) -> Any:
    """The run config of one modality's demo run: its ``demo`` preset unless ``config`` names another."""
    spec = dict((config.get("modalities") or {}).get(name) or {})
    spec.setdefault("preset", "demo")
    return resolve_config(
        {
            "anchor": config.get("anchor") or {},
            "modalities": {name: spec},
            "train": {**(config.get("train") or {}), "output_dir": str(run_dir), "resume": True},
        },
        source="lbind demo",
    )


def _record(
    row: dict[str, Any], evaluation: Evaluation, final: Path, run_dir: Path, *, plots: bool, min_top1: float
) -> None:
    """Write the run's result card (and plot) and fill ``row`` with its headline numbers and status."""
    card = evaluation.card
    card_path = write_card(card, run_dir / "eval.json")
    if plots and evaluation.plot is not None:
        row["plot"] = str(write_plot(evaluation.plot, run_dir / "eval.png"))
    metrics = card["metrics"]
    row.update(
        top1=_rounded(metrics.get("top1")),
        top5=_rounded(metrics.get("top5")),
        chance=_rounded(metrics.get("chance_top1")),
        classes=metrics.get("num_classes"),
        test_items=card["dataset"]["num_items"],
        checkpoint=str(final),
        card=str(card_path),
    )
    passed = card["task"] == "classification" and metrics["top1"] >= min_top1
    row["status"] = "ok" if passed else "below bar"


def _demo_one(
    name: str,
    cls: type,
    run_dir: Path,
    config: Mapping[str, Any],
    *,
    min_top1: float,
    fresh: bool,
    plots: bool,
    num_workers: int | None,
    train_progress: TrainProgress | None,
    eval_progress: ProgressCallback | None,
) -> dict[str, Any]:
    """Train and evaluate one modality's demo run; its summary row (a failure is recorded, not raised)."""
    row: dict[str, Any] = {"modality": name, "status": "skipped", "top1": None, "top5": None}
    if not _has_demo_data(cls):
        row["error"] = "the plugin has no demo dataset generator"
        return row
    plan = _demo_plan(name, run_dir, config)
    if run_dir.exists() and (fresh or _stale_run(run_dir, name, plan)):
        shutil.rmtree(run_dir)
    try:
        t0 = time.perf_counter()
        final = train(plan, progress=None if train_progress is None else (lambda e, n=name: train_progress(n, e)))
        row["train_s"] = round(time.perf_counter() - t0, 2)
        row["steps"] = (read_meta(final).get("train") or {}).get("step")
        t0 = time.perf_counter()
        evaluation = evaluate_checkpoint(final, name, num_workers=num_workers, progress=eval_progress)
        row["eval_s"] = round(time.perf_counter() - t0, 2)
    except (LbindError, NotImplementedError) as err:
        log.error("demo %s failed: %s", name, err)
        row.update(status="failed", error=f"{type(err).__name__}: {err}")
        return row
    _record(row, evaluation, final, run_dir, plots=plots, min_top1=min_top1)
    return row


def run_demo(
    modalities: Sequence[str] | None = None,
    output: str | Path = "runs/demo",
    *,
    config: Mapping[str, Any] | None = None,
    min_top1: float = DEMO_MIN_TOP1,
    fresh: bool = False,
    plots: bool = True,
    num_workers: int | None = None,
    train_progress: TrainProgress | None = None,
    eval_progress: ProgressCallback | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train each modality's ``demo`` preset on its demo dataset, evaluate it zero-shot on the held-out demo split
    and write ``<output>/summary.json`` (returned). Runs live in ``<output>/<modality>`` with their result card
    ``eval.json`` (and ``eval.png``). An earlier run in the same folder is resumed (a finished one is only
    re-evaluated) unless ``fresh`` or its config differs from today's (then it is trained again). ``config``: a run config whose ``anchor``, ``train`` and per-modality
    ``modalities`` sections apply to every run. A modality whose training or evaluation fails is recorded with its
    error and the others still run; one below ``min_top1`` is marked ``below bar``.
    """
    started = time.perf_counter()
    output = Path(output)
    registry = default_registry().load()
    names = list(modalities) if modalities else registry.modality_names()
    config = dict(config or {})
    unknown = sorted(set(config.get("modalities") or {}) - set(names))
    if unknown:
        raise EvaluationError(f"the demo config has settings for {', '.join(unknown)}, which this demo does not run")
    rows: list[dict[str, Any]] = []
    for name in names:
        row = _demo_one(
            name,
            registry.registered(name).cls,
            output / name,
            config,
            min_top1=min_top1,
            fresh=fresh,
            plots=plots,
            num_workers=num_workers,
            train_progress=train_progress,
            eval_progress=eval_progress,
        )
        rows.append(row)
        if on_result is not None:
            on_result(row)
    summary = {
        "lbind_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "min_top1": min_top1,
        "modalities": rows,
        "passed": all(r["status"] in ("ok", "skipped") for r in rows) and any(r["status"] == "ok" for r in rows),
        "total_s": round(time.perf_counter() - started, 2),
    }
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "summary.json", summary)
    return summary
