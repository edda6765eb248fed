"""PNG plots of an evaluation report: the headline metric of every suite per model, and the named curves.

Every figure of a report gives a model the same colour (the reference model, a teacher, is grey), labels its
axes with the metric's name and whether lower or higher is better, and names its suites in words.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from ..atomic import atomic_open

PLOT_NAME = "comparison.png"
TEACHER_GREY = "0.45"   # grey: the model every other is measured against

# metric key pattern -> (its name on an axis, lower is better)
METRICS = (
    (r"rougeL", ("Rouge-L", False)),
    (r"exact_match", ("exact match (%)", False)),
    (r"dist4", ("Dist-4", False)),
    (r"test_loss", ("test loss (nats per token)", True)),
    (r"exaccerr_at_(\d+)", ("ExAccErr({0}) (%)", True)),
    (r"ece", ("expected calibration error", True)),
    (r"judge_ratio", ("judge score, % of gold", False)),
)
SUITE_TITLES = {"dolly": "Dolly (DollyEval)", "selfinst": "Self-Instruct", "vicuna": "Vicuna", "sinst": "S-NI",
                "uinst": "UnNI", "exposure": "exposure bias", "calibration": "calibration", "judge": "LLM judge",
                "default": "embedded validation split"}


def metric_label(key: str) -> str:
    """'exaccerr_at_16' -> 'ExAccErr(16) (%), lower is better'; unknown keys keep their name."""
    for pattern, (name, lower) in METRICS:
        match = re.fullmatch(pattern, key or "")
        if match:
            return f"{name.format(*match.groups())}, {'lower' if lower else 'higher'} is better"
    return key or ""


def model_colours(models: list, reference: Optional[str] = None) -> dict:
    """model -> colour, the same in every figure: the reference grey, the others matplotlib's palette in order."""
    others = [m for m in models if m != reference]
    colours = {model: f"C{index % 10}" for index, model in enumerate(others)}
    if reference in models:
        colours[reference] = TEACHER_GREY
    return colours


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "plot"


def new_figure(width: float, height: float, columns: int = 1):
    """A matplotlib Figure on the Agg canvas (no pyplot: no global backend switch, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(1, columns, i + 1) for i in range(columns)]


def save_figure(figure, path: Path) -> Path:
    with atomic_open(path, "wb", encoding=None) as handle:
        figure.savefig(handle, format="png")
    return path


def _headline(result: Optional[dict]) -> Optional[str]:
    """The headline metric of one result when it has a value, else None."""
    key = (result or {}).get("headline")
    return key if (result or {}).get("metrics", {}).get(key) is not None else None


def _headline_panels(report: dict, suites: list, colours: dict, path: Path) -> Path:
    results = report["results"]
    figure, panels = new_figure(max(3.4, 2.9 * len(suites)) + 0.15 * len(results), 4.4, columns=len(suites))
    for axes, suite in zip(panels, suites):
        shown = [m for m in results if _headline(results[m].get(suite))]
        key = _headline(results[shown[0]][suite])
        metrics = [results[m][suite]["metrics"] for m in shown]
        axes.bar(range(len(shown)), [m[key] for m in metrics], 0.8, yerr=[m.get(f"{key}_std") or 0.0 for m in metrics],
                 capsize=3, color=[colours[m] for m in shown])
        axes.set_xticks(range(len(shown)), shown, rotation=45, ha="right", fontsize="small")
        axes.set_ylabel(metric_label(key), fontsize="small")
        axes.set_title(SUITE_TITLES.get(suite, suite), fontsize="medium")
        axes.axhline(0, color="black", linewidth=0.6)
    figure.suptitle("Headline metric per suite (mean ± std over generation seeds)", fontsize="medium")
    figure.tight_layout()
    return save_figure(figure, path)


def _curve(name: str, series: list, colours: dict, path: Path) -> Path:
    figure, (axes,) = new_figure(5.8, 3.8)
    several_suites = len({suite for _, suite, _ in series}) > 1
    for model, suite, curve in series:
        points = [(x, y) for x, y in zip(curve["x"], curve["y"]) if y is not None]
        axes.plot([x for x, _ in points], [y for _, y in points], marker=".", color=colours.get(model),
                  label=f"{model} ({suite})" if several_suites else model)
    first = series[0][2]
    axes.set_xlabel(first.get("xlabel", "x"))
    axes.set_ylabel(first.get("ylabel", name) + (", lower is better" if first.get("lower_is_better") else ""))
    axes.set_title(first.get("title", name))
    axes.legend(fontsize="small")
    figure.tight_layout()
    return save_figure(figure, path)


def plot(report: dict, out_dir: Path, reference: Optional[str] = None) -> list:
    """comparison.png (a panel per suite with its own scale, since Rouge-L, ECE and ExAccErr are not
    comparable; a bar per model; error bars = std over seeds) and a line plot per named curve (the exposure-bias
    curve, for one). ``reference``: the model drawn grey (a teacher). Returns the files written."""
    out_dir = Path(out_dir)
    models = list(report["results"])
    colours = model_colours(models, reference)
    written = []
    suites = [s for s in report["suites"] if any(_headline(report["results"][m].get(s)) for m in models)]
    if suites:
        written.append(_headline_panels(report, suites, colours, out_dir / PLOT_NAME))
    curves: dict = {}
    for model, per_suite in report["results"].items():
        for suite, result in per_suite.items():
            for name, curve in (result.get("curves") or {}).items():
                curves.setdefault(name, []).append((model, suite, curve))
    for name, series in curves.items():
        written.append(_curve(name, series, colours, out_dir / f"{_slug(name)}.png"))
    return written
