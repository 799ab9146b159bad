"""The page of ``lbind app``: Gradio components over an :class:`~lbcore.app.AppSession`.

Tabs: text <-> media, zero-shot classification, media <-> media, and the model. Each modality's files are
uploaded through the widget its plugin names (``Modality.widget``: audio, video, image or a plain file upload,
limited to the plugin's ``extensions`` where it declares them). A request that fails shows lbind's error message
(which file, what was expected) in the page; the server keeps running. The click handlers are also the page's
API (``/similarity``, ``/classify``, ``/cross``), e.g. for ``gradio_client``.

Gradio is imported inside the functions: it is a heavy optional dependency (``pip install lbind[app]``).
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbcore.app import (
    DEMO_ROOT,
    MAX_FILE_SIZE,
    AppSession,
    RankedLabel,
    SimilarityResult,
    demo_checkpoints,
    split_lines,
)
from lbcore.errors import ConfigError, LbindError
from lbcore.plot import PlotData, write_plot

log = logging.getLogger(__name__)

__all__ = ["build_page", "launch", "media_input"]


def _gradio() -> Any:
    try:
        import gradio  # heavy optional dependency: only the web app needs it
    except ImportError as err:
        raise ConfigError("`lbind app` needs gradio: `pip install 'lbind[app]'`") from err
    return gradio


# ------------------------------------------------------------------------------------------------ helpers
def _uploads(values: Sequence[Any]) -> Iterator[str]:
    """Every path string among the handler's arguments (single values and lists)."""
    for value in values:
        if isinstance(value, (list, tuple)):
            yield from _uploads(value)
        elif isinstance(value, str) and "\n" not in value and os.path.isfile(value):
            yield value


def _readable(message: str, args: Sequence[Any]) -> str:
    """``message`` with uploaded files named by their file name instead of Gradio's temporary path."""
    for path in sorted(set(_uploads(args)), key=len, reverse=True):
        message = message.replace(path, Path(path).name)
    return message


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a click handler; any failure reaches the page as one message (gr.Error), never a traceback."""

    @functools.wraps(fn)
    def handler(*args: Any) -> Any:
        gr = _gradio()
        try:
            return fn(*args)
        except LbindError as err:
            raise gr.Error(_readable(str(err), args), print_exception=False) from err
        except Exception as err:  # reported to the user and logged with its traceback, never hidden
            log.exception("app request failed")
            message = f"could not process the request: {type(err).__name__}: {err}"
            raise gr.Error(_readable(message, args), print_exception=False) from err

    return handler


def _column_labels(media: Sequence[tuple[str, str]]) -> list[str]:
    names = [f"{m}: {Path(p).name}" for m, p in media]
    return [n if names.count(n) == 1 else f"{n} #{j + 1}" for j, n in enumerate(names)]


def _frame(result: SimilarityResult, matrix: Any) -> Any:
    import pandas as pd  # comes with gradio

    rows = [[text, *[round(v, 4) for v in values]] for text, values in zip(result.texts, matrix.tolist(), strict=True)]
    return pd.DataFrame(rows, columns=["text", *_column_labels(result.media)])


class _Heatmaps:
    """The similarity heatmap of the latest request, as a PNG in a temporary folder (the older one removed)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="lbind-app-"))
        self.last: Path | None = None

    def write(self, result: SimilarityResult) -> str:
        if self.last is not None:
            self.last.unlink(missing_ok=True)
        plot = PlotData(
            "similarity", result.cosine.tolist(), result.texts, _column_labels(result.media), "text x media",
            "media", "text",
        )  # fmt: skip
        self.last = write_plot(plot, self.folder / f"similarity-{uuid.uuid4().hex[:8]}.png")
        return str(self.last)


def media_input(session: AppSession, name: str, *, label: str, visible: bool = True, elem_id: str | None = None) -> Any:
    """The upload component of one file of modality ``name``, as its plugin's ``widget`` asks."""
    gr = _gradio()
    kind = session.widget(name)
    common: dict[str, Any] = {"label": label, "visible": visible, "elem_id": elem_id}
    if kind == "audio":
        return gr.Audio(type="filepath", sources=["upload"], format=None, **common)
    if kind == "video":
        return gr.Video(sources=["upload"], format=None, **common)
    if kind == "image":  # the uploaded file itself (no re-encoding: 16-bit depth maps stay 16-bit)
        return gr.Image(type="filepath", sources=["upload"], image_mode=None, **common)
    return gr.File(file_types=session.extensions(name), type="filepath", **common)


def _picker(session: AppSession, label: str, key: str, default: str) -> tuple[Any, dict[str, Any]]:
    """A modality dropdown and one upload widget per modality; only the chosen modality's widget is shown."""
    gr = _gradio()
    names = session.modalities
    choice = gr.Dropdown(names, value=default, label=f"{label}: modality", elem_id=f"{key}-modality")
    widgets = {
        n: media_input(session, n, label=f"{label}: {n} file", visible=n == default, elem_id=f"{key}-{n}")
        for n in names
    }
    choice.change(
        lambda chosen: [gr.update(visible=n == chosen) for n in names],
        choice,
        list(widgets.values()),
        api_name=False,
    )
    return choice, widgets


def _picked(session: AppSession, modality: str, values: Sequence[Any]) -> tuple[str, Any]:
    """(modality, its widget's file) from a picker's dropdown value and all its widgets' values."""
    names = session.modalities
    if modality not in names:
        raise ConfigError(f"choose a modality ({', '.join(names)})")
    return modality, values[names.index(modality)]


# --------------------------------------------------------------------------------------------------- tabs
def _similarity_tab(session: AppSession) -> None:
    gr = _gradio()
    names = session.modalities
    heatmaps = _Heatmaps()
    with gr.Row():
        with gr.Column(scale=2):
            texts = gr.Textbox(label="Texts, one per line", lines=4, elem_id="sim-texts")
            files = [
                gr.File(file_count="multiple", file_types=session.extensions(n), label=f"{n} files", elem_id=f"sim-{n}")
                for n in names
            ]
            run = gr.Button("Compare", variant="primary", elem_id="sim-run")
        with gr.Column(scale=3):
            heatmap = gr.Image(label="Cosine similarity", type="filepath", interactive=False, elem_id="sim-heatmap")
            softmax = gr.Dataframe(
                label="Softmax over the texts, per file", interactive=False, wrap=True, elem_id="sim-softmax"
            )
            cosine = gr.Dataframe(label="Cosine similarity", interactive=False, wrap=True, elem_id="sim-cosine")
            with gr.Accordion("The numbers as JSON (as `lbind similarity --json`)", open=False):
                raw = gr.JSON(elem_id="sim-json")

    @_guarded
    def similarity(text: str, *uploads: list[str] | None) -> tuple[Any, ...]:
        media = [(n, p) for n, group in zip(names, uploads, strict=True) for p in (group or [])]
        result = session.similarity(split_lines(text), media)
        return _frame(result, result.softmax), _frame(result, result.cosine), heatmaps.write(result), result.as_json()

    run.click(similarity, [texts, *files], [softmax, cosine, heatmap, raw], api_name="similarity")


def _ranking(ranked: Sequence[RankedLabel]) -> Any:
    import pandas as pd  # comes with gradio

    rows = [[i + 1, r.label, round(r.cosine, 4), round(r.probability, 4)] for i, r in enumerate(ranked)]
    return pd.DataFrame(rows, columns=["rank", "label", "cosine", "probability"])


def _zero_shot_tab(session: AppSession) -> None:
    gr = _gradio()
    with gr.Row():
        with gr.Column():
            modality, widgets = _picker(session, "Item", "zs", session.modalities[0])
            labels = gr.Textbox(label="Labels, one per line", lines=5, elem_id="zs-labels")
            top_k = gr.Slider(1, 20, value=5, step=1, label="Top k", elem_id="zs-topk")
            run = gr.Button("Classify", variant="primary", elem_id="zs-run")
        with gr.Column():
            best = gr.Label(label="Top labels (probability)", elem_id="zs-label")
            table = gr.Dataframe(label="Ranking", interactive=False, elem_id="zs-table")

    @_guarded
    def classify(name: str, text: str, k: float, *values: Any) -> tuple[Any, Any]:
        chosen, path = _picked(session, name, values)
        ranked = session.classify(chosen, path, split_lines(text), int(k))
        return {r.label: r.probability for r in ranked}, _ranking(ranked)

    run.click(classify, [modality, labels, top_k, *widgets.values()], [best, table], api_name="classify")


def _media_tab(session: AppSession) -> None:
    gr = _gradio()
    names = session.modalities
    gr.Markdown("Two files of any loaded modalities bound to the same anchor, compared in the shared space.")
    with gr.Row():
        with gr.Column():
            first, first_widgets = _picker(session, "First", "mm-a", names[0])
        with gr.Column():
            second, second_widgets = _picker(session, "Second", "mm-b", names[min(1, len(names) - 1)])
    run = gr.Button("Compare", variant="primary", elem_id="mm-run")
    score = gr.Number(label="Cosine similarity", precision=4, interactive=False, elem_id="mm-cosine")
    n = len(names)

    @_guarded
    def cross(a: str, b: str, *values: Any) -> float:
        query = _picked(session, a, values[:n])
        other = _picked(session, b, values[n:])
        return session.cross_similarity(query, [other])[0]

    inputs = [first, second, *first_widgets.values(), *second_widgets.values()]
    run.click(cross, inputs, score, api_name="cross")


def _summary(info: dict[str, Any]) -> str:
    anchor = info["anchor"]
    lines = [
        f"### `{info['checkpoint']}`",
        f"Anchor **{anchor.get('name')}**, {anchor.get('embed_dim')}-d, fingerprint `{str(anchor.get('fingerprint'))[:12]}`",
        "",
        "| modality | plugin | version | logit scale | templates |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, mod in info["modalities"].items():
        lines.append(
            f"| {name} | {mod['distribution'] or mod['plugin'] or '-'} | {mod['version'] or '-'} "
            f"| {mod['logit_scale']:.2f} | {mod['templates']} |"
        )
    for path, card in info["cards"].items():
        metrics = card.get("metrics") or {}
        shown = ", ".join(f"{k} {metrics[k]:.1f}" for k in ("top1", "top5", "mAP") if isinstance(metrics.get(k), float))
        reader = (card.get("dataset") or {}).get("reader")
        lines.append(f"\nResult card `{Path(path).name}`: {card.get('modality')} on {reader}, {shown}")
    return "\n".join(lines)


def _model_tab(session: AppSession) -> None:
    gr = _gradio()
    described = session.describe()
    for info in described:
        gr.Markdown(_summary(info))
    with gr.Accordion("Everything the checkpoints record (lbind.json, result cards)", open=False):
        gr.JSON(described, elem_id="model-json")


# --------------------------------------------------------------------------------------------------- page
def build_page(session: AppSession) -> Any:
    """The page (a ``gradio.Blocks``) for the session's modalities."""
    gr = _gradio()
    with gr.Blocks(title="lbind", analytics_enabled=False) as page:
        gr.Markdown(
            f"# lbind: language-bound embeddings\nModalities: **{', '.join(session.modalities)}** "
            f"from {len(session.loaded)} checkpoint(s) (see the Model tab)."
        )
        with gr.Tab("Text ↔ media", id="similarity"):
            _similarity_tab(session)
        with gr.Tab("Zero-shot", id="zero-shot"):
            _zero_shot_tab(session)
        with gr.Tab("Media ↔ media", id="media"):
            _media_tab(session)
        with gr.Tab("Model", id="model"):
            _model_tab(session)
    return page


def launch(page: Any, *, host: str, port: int | None, max_file_size: int) -> str:
    """Serve ``page`` in a background thread (one request at a time: one model); return its local URL."""
    page.queue(default_concurrency_limit=1)
    page.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=True,
        show_error=True,
        quiet=True,
        max_file_size=max_file_size,
        ssr_mode=False,
        mcp_server=False,
        footer_links=["api"],
    )
    return str(page.local_url)


@dataclass
class RunningApp:
    """A page being served: ``url``; :meth:`wait` blocks until Ctrl+C, :meth:`close` stops it."""

    url: str
    page: Any
    session: AppSession

    def wait(self) -> None:
        self.page.block_thread()

    def close(self) -> None:
        self.page.close()


def start(
    checkpoints: Sequence[str | Path] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    demo_root: str | Path = DEMO_ROOT,
    max_file_size: int = MAX_FILE_SIZE,
    session: AppSession | None = None,
) -> RunningApp:
    """Load the checkpoints (default: the demo checkpoints under ``demo_root``) and serve the page on
    ``host:port`` (a free port from 7860 when None) in a background thread. No share link, no analytics."""
    if session is None:
        session = AppSession(list(checkpoints) if checkpoints else demo_checkpoints(demo_root))
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio when it is imported and launched
    page = build_page(session)
    url = launch(page, host=host, port=port, max_file_size=max_file_size)
    return RunningApp(url, page, session)
