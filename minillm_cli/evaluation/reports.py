"""Reports of an evaluation: a table in the terminal, results.json, report.md and PNG plots.

A report is one dict (what results.json holds): ``settings``, ``models`` (name -> path, family, weights
hash), ``suites`` (names, in order) and ``results`` (model -> suite -> ``SuiteResult.to_dict()``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..atomic import atomic_open

JSON_NAME, MARKDOWN_NAME = "results.json", "report.md"
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


def write_reports(report: dict, out_dir: Path, *, plots: bool = True, console=None,
                  reference: Optional[str] = None) -> dict:
    """results.json, report.md and the plots in ``out_dir`` (``reference``: the model drawn grey, a teacher);
    name -> path of each file written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    if plots:
        try:
            from .plots import plot

            images = plot(report, out_dir, reference=reference)
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
