"""Latency of one `lbind app` request on the demo checkpoints (runs/demo/<modality>/final, from `lbind demo`).

Starts the app in this process on a free port and sends each tab's request through gradio_client (HTTP, uploads
included) and, for comparison, straight to the session (the model work alone). Inputs are files of the demo
datasets' held-out split, two per modality, with one caption of each as the texts. The first request of each kind
is reported apart (cold: plus any text embeddings not cached yet, which load the anchor once); then the median and
90th percentile of ``--repeat`` warm requests.

    python benchmarks/app.py --write                        # append the table to benchmarks/RESULTS.md
    python benchmarks/app.py --screenshot docs/app.png      # also the README's screenshot (playwright + chromium)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "# Web app latency"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_inputs(session: Any, per_modality: int = 2) -> tuple[list[tuple[str, Path]], list[str], dict[str, list[str]]]:
    """Files of the demo test split (distinct labels), one caption of each, and each modality's class names."""
    from lbcore.demo import demo_data

    media, texts, labels = [], [], {}
    for name in session.modalities:
        manifest = demo_data(session.modality(name))["test"]
        rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        labels[name] = sorted({r["label"] for r in rows})
        seen: set[str] = set()
        for row in rows:
            if row["label"] not in seen and len(seen) < per_modality:
                seen.add(row["label"])
                media.append((name, manifest.parent / row["path"]))
                texts.append(row["captions"][0])
    return media, texts, labels


def timed(calls: dict[Any, Callable[[], Any]], repeat: int) -> dict[Any, dict[str, float]]:
    """Per call, cold (its first run) and warm (median, p90 of ``repeat`` more) latency in milliseconds. The warm
    runs take turns (one of each call per round), so that load from other jobs hits every row alike."""

    def once(fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000

    cold = {key: once(fn) for key, fn in calls.items()}
    warm: dict[Any, list[float]] = {key: [] for key in calls}
    for _ in range(repeat):
        for key, fn in calls.items():
            warm[key].append(once(fn))
    out = {}
    for key, times in warm.items():
        times.sort()
        p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
        out[key] = {"cold": cold[key], "median": statistics.median(times), "p90": p90}
    return out


def requests(running: Any, media: list[tuple[str, Path]], texts: list[str], labels: dict[str, list[str]]) -> dict:
    """One callable per (request, route): through the page's API and straight to the session."""
    from gradio_client import Client, handle_file

    session = running.session
    names = session.modalities
    client = Client(running.url, verbose=False, download_files=False)
    first, second = media[0], media[-1]
    by_mod = {n: [handle_file(p) for m, p in media if m == n] for n in names}

    def picker(name: str, path: Path) -> list[Any]:
        return [handle_file(path) if n == name else None for n in names]

    return {  # the session first: its first call is the cold one (texts not cached yet load the anchor)
        ("text x media", "session"): lambda: session.similarity(texts, media),
        ("text x media", "API"): lambda: client.predict("\n".join(texts), *by_mod.values(), api_name="/similarity"),
        ("zero-shot", "session"): lambda: session.classify(first[0], first[1], labels[first[0]], 5),
        ("zero-shot", "API"): lambda: client.predict(
            first[0], "\n".join(labels[first[0]]), 5, *picker(*first), api_name="/classify"
        ),
        ("media x media", "session"): lambda: session.cross_similarity(first, [second]),
        ("media x media", "API"): lambda: client.predict(
            first[0], second[0], *picker(*first), *picker(*second), api_name="/cross"
        ),
    }


def screenshot(running: Any, media: list[tuple[str, Path]], texts: list[str], path: Path) -> None:
    """The text x media tab after one request, as a PNG (the README's picture)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(running.url)
        page.locator("#sim-texts textarea").fill("\n".join(texts))
        for name in running.session.modalities:
            files = [str(p) for m, p in media if m == name]
            page.locator(f"#sim-{name} input[type=file]").set_input_files(files)
            page.locator(f"#sim-{name}").get_by_text(Path(files[-1]).stem).first.wait_for()
        page.locator("#sim-run").click()
        page.locator("#sim-heatmap img").first.wait_for(timeout=120_000)
        page.wait_for_timeout(500)
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=True)
        browser.close()
    from PIL import Image

    with Image.open(path) as shot:  # a palette PNG: a third of the size, same look
        shot.convert("RGB").quantize(colors=128).save(path, optimize=True)


def report(rows: dict, startup_s: float, repeat: int, media: list, texts: list, command: str) -> str:
    import torch

    lines = [
        SECTION,
        "",
        "One request of each tab of `lbind app` on the demo checkpoints, through the page's API (gradio_client: HTTP,",
        "uploads, result encoding) and straight to the loaded session (the model work alone). Cold: the first",
        "request of its kind on that route; warm: median and 90th percentile of the next ones (taking turns).",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores visible, torch {torch.__version__}, CPU; "
        f"{len(media)} files ({', '.join(sorted({m for m, _ in media}))}) x {len(texts)} texts; {repeat} warm requests; "
        f"start-up (checkpoints loaded, page built, server up) {startup_s:.1f} s; "
        f"load average {os.getloadavg()[0]:.1f} at the end (other jobs shared the cores).",
        "",
        "| request | route | cold (ms) | warm median (ms) | warm p90 (ms) |",
        "|---|---|---:|---:|---:|",
    ]
    for (request, route), t in rows.items():
        lines.append(f"| {request} | {route} | {t['cold']:.0f} | {t['median']:.0f} | {t['p90']:.0f} |")
    lines += [
        "",
        "CPU numbers on a shared machine are noisy (compare rows of one run only); the API rows add the upload of",
        "every file, the result's encoding and, for text x media, the heatmap PNG (matplotlib).",
        "",
    ]
    return "\n".join(lines)


def write(section: str) -> None:
    from resultsfile import replace_section  # beside this script

    replace_section(SECTION, section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-root", default="runs/demo", help="Folder of the demo runs (lbind demo -o).")
    parser.add_argument("--repeat", type=int, default=10, help="Warm requests per measurement.")
    parser.add_argument("--write", action="store_true", help=f"Append the table to {RESULTS}.")
    parser.add_argument("--screenshot", type=Path, help="Also save the text x media tab as a PNG here.")
    args = parser.parse_args()

    from lbcore.appview import start

    t0 = time.perf_counter()
    running = start(demo_root=args.demo_root, port=free_port())
    startup = time.perf_counter() - t0
    try:
        media, texts, labels = demo_inputs(running.session)
        rows = timed(requests(running, media, texts, labels), args.repeat)
        if args.screenshot:
            screenshot(running, media, texts, args.screenshot)
    finally:
        running.close()
    command = "python benchmarks/app.py" + (" --write" if args.write else "")
    command += f" --screenshot {args.screenshot}" if args.screenshot else ""
    section = report(rows, startup, args.repeat, media, texts, command)
    print(section)
    if args.write:
        write(section)


if __name__ == "__main__":
    main()
