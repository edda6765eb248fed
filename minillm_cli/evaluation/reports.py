"""Reports of an evaluation: a table in the terminal, results.json, report.md and PNG plots.

A report is one dict (what results.json holds): ``settings``, ``models`` (name -> path, family, weights
hash), ``suites`` (names, in order) and ``results`` (model -> suite -> ``SuiteResult.to_dict()``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from ..atomic import atomic_open

JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "results.json", "report.md", "comparison.png"
MISSING_MATPLOTLIB = "no PNG plots: matplotlib is not installed (pip install 'minillm[eval]')"


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"


def cell(result: Optional[dict]) -> str:
    """The headline number of one result: "23.41 ± 1.20" when it has a spread over seeds."""
    if not result:
        return "-"
    key = result.get("headline")
    metrics = result.get("metrics", {})
    if key is None or key not in metrics:
        return "-"
    std = metrics.get(f"{key}_std")
    return _number(metrics[key]) + (f" ± {_number(std)}" if std is not None and len(_seeds(result)) > 1 else "")


def _seeds(result: dict) -> list:
    return result.get("details", {}).get("seeds") or result.get("settings", {}).get("seeds") or []


def headline_names(report: dict) -> dict:
    """suite -> the headline metric its results report (the first one found)."""
    names = {}
    for per_suite in report["results"].values():
        for suite, result in per_suite.items():
            if result.get("headline") and suite not in names:
                names[suite] = result["headline"]
    return names


def print_table(report: dict, console) -> None:
    from rich.table import Table

    headlines = headline_names(report)
    table = Table(title="minillm eval")
    table.add_column("model", overflow="fold")
    for suite in report["suites"]:
        table.add_column(f"{suite}\n{headlines.get(suite, '')}", justify="right", overflow="fold")
    for model, per_suite in report["results"].items():
        table.add_row(model, *(cell(per_suite.get(suite)) for suite in report["suites"]))
    console.print(table)


def write_json(report: dict, path: Path) -> Path:
    with atomic_open(path) as handle:
        json.dump(report, handle, indent=2, ensure_ascii=False, allow_nan=False)
        handle.write("\n")
    return path


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict, images: Optional[list] = None) -> str:
    settings = report.get("settings", {})
    lines = ["# minillm eval", ""]
    if settings:
        lines += ["## Settings", ""]
        lines += [f"- {key}: `{json.dumps(value, ensure_ascii=False)}`" for key, value in settings.items()]
        lines.append("")
    if report.get("models"):
        lines += ["## Models", "", "| model | path | family | weights sha256 |", "|---|---|---|---|"]
        for name, info in report["models"].items():
            digest = info.get("weights_sha256") or "unknown"
            lines.append(f"| {_md(name)} | {_md(info.get('path', ''))} | {_md(info.get('family', ''))} | `{digest[:16]}` |")
        lines.append("")
    headlines = headline_names(report)
    lines += ["## Results", "", "| model | " + " | ".join(f"{_md(s)} ({headlines.get(s, '-')})" for s in report["suites"]) + " |"]
    lines.append("|---|" + "---:|" * len(report["suites"]))
    for model, per_suite in report["results"].items():
        lines.append(f"| {_md(model)} | " + " | ".join(cell(per_suite.get(s)) for s in report["suites"]) + " |")
    lines.append("")
    for suite in report["suites"]:
        keys = []
        for per_suite in report["results"].values():
            for key in per_suite.get(suite, {}).get("metrics", {}):
                if not key.endswith("_std") and key not in keys:
                    keys.append(key)
        if not keys:
            continue
        lines += [f"### {_md(suite)}", "", "| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        for model, per_suite in report["results"].items():
            metrics = per_suite.get(suite, {}).get("metrics", {})
            values = []
            for key in keys:
                value, std = metrics.get(key), metrics.get(f"{key}_std")
                values.append(_number(value) + (f" ± {_number(std)}" if std is not None else ""))
            lines.append(f"| {_md(model)} | " + " | ".join(values) + " |")
        source = next((r[suite]["settings"].get("source") for r in report["results"].values()
                       if suite in r and r[suite].get("settings", {}).get("source")), None)
        if source:
            lines += ["", f"Data: {_md(source)}."]
        lines.append("")
    for image in images or []:
        lines += [f"![{Path(image).stem}]({Path(image).name})", ""]
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "plot"


def _figure(width: float, height: float, columns: int = 1):
    """A matplotlib Figure on the Agg canvas (no pyplot: no global backend switch, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(1, columns, i + 1) for i in range(columns)]


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    with atomic_open(path, "wb", encoding=None) as handle:
        figure.savefig(handle, format="png")
    return path


def plot(report: dict, out_dir: Path) -> list:
    """comparison.png (one panel per suite, its headline metric, one bar per model, error bars = std over
    seeds; each panel has its own scale, since Rouge-L, ECE and ExAccErr are not comparable) and one line plot
    per named curve (the exposure-bias curve, for one). Returns the files written."""
    out_dir = Path(out_dir)
    written = []
    models = list(report["results"])
    suites = [s for s in report["suites"] if any(cell(report["results"][m].get(s)) != "-" for m in models)]
    if suites and models:
        headlines = headline_names(report)
        figure, panels = _figure(max(3.2, 2.4 * len(suites)) + 0.2 * len(models), 3.6, columns=len(suites))
        colours = [f"C{i % 10}" for i in range(len(models))]
        for axes, suite in zip(panels, suites):
            values, errors = [], []
            for model in models:
                result = report["results"][model].get(suite) or {}
                metrics, key = result.get("metrics", {}), result.get("headline")
                values.append(metrics.get(key) or 0.0)
                errors.append(metrics.get(f"{key}_std") or 0.0)
            axes.bar(range(len(models)), values, 0.8, yerr=errors, capsize=3, color=colours)
            axes.set_xticks([])
            axes.set_title(f"{suite}\n{headlines.get(suite, '')}", fontsize="medium")
        from matplotlib.patches import Patch

        rows = (len(models) + 2) // 3
        figure.legend(handles=[Patch(color=c, label=m) for c, m in zip(colours, models)], loc="lower center",
                      ncol=min(3, len(models)), fontsize="small")
        figure.suptitle("headline metric per suite, mean ± std over seeds", fontsize="small")
        figure.tight_layout(rect=(0, 0.07 * rows, 1, 1))   # room for the legend under the panels
        with atomic_open(out_dir / PLOT_NAME, "wb", encoding=None) as handle:
            figure.savefig(handle, format="png")
        written.append(out_dir / PLOT_NAME)
    curves: dict = {}
    for model, per_suite in report["results"].items():
        for suite, result in per_suite.items():
            for name, curve in (result.get("curves") or {}).items():
                curves.setdefault(name, []).append((model, suite, curve))
    for name, series in curves.items():
        figure, (axes,) = _figure(5.5, 3.6)
        several_suites = len({suite for _, suite, _ in series}) > 1
        for model, suite, curve in series:
            points = [(x, y) for x, y in zip(curve["x"], curve["y"]) if y is not None]
            axes.plot([x for x, _ in points], [y for _, y in points], marker=".",
                      label=f"{model} ({suite})" if several_suites else model)
        first = series[0][2]
        axes.set_xlabel(first.get("xlabel", "x"))
        axes.set_ylabel(first.get("ylabel", name))
        axes.set_title(first.get("title", name))
        axes.legend(fontsize="small")
        written.append(_save(figure, out_dir / f"{_slug(name)}.png"))
    return written


def write_reports(report: dict, out_dir: Path, *, plots: bool = True, console=None) -> dict:
    """results.json, report.md and the plots in ``out_dir``; name -> path of each file written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    if plots:
        try:
            images = plot(report, out_dir)
        except ImportError:
            if console is not None:
                from rich.markup import escape

                console.print(f"[yellow]{escape(MISSING_MATPLOTLIB)}[/]")
    files = {"json": str(out_dir / JSON_NAME), "markdown": str(out_dir / MARKDOWN_NAME)}
    files.update({Path(p).stem: str(p) for p in images})
    report["files"] = files
    write_json(report, out_dir / JSON_NAME)
    with atomic_open(out_dir / MARKDOWN_NAME) as handle:
        handle.write(markdown(report, images))
    return files
