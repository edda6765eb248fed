"""The comparison's results: every stage's training summary and every model's evaluation, in one table,
one JSON and the evaluation plots (``results/`` under the comparison's output directory)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from ..atomic import atomic_open
from ..evaluation.reports import cell, headline_names, write_reports

JSON_NAME, TABLE_NAME = "comparison.json", "comparison.md"


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def training_summary(comparison, stage) -> dict:
    """What the stage's run did: objective, steps, whether the budget stopped it, its final validation."""
    run = comparison.run_dir(stage.name)
    meta = _read_json(comparison.model_dir(stage.name) / "minillm.json") or {}
    final_meta = _read_json(run / "final" / "minillm.json") or {}
    records = []
    try:
        with open(run / "metrics.jsonl", encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
    except (OSError, ValueError):
        pass
    steps = [r for r in records if "loss" in r]
    validations = [r for r in records if "valid_loss" in r]
    job = comparison.state["jobs"].get(f"train {stage.name}", {})
    summary = {
        "recipe": stage.recipe,
        "objective": final_meta.get("objective") or meta.get("objective"),
        "steps": final_meta.get("step"),
        "model": str(comparison.model_dir(stage.name)),
        "model_step": meta.get("step"),
        "wall_seconds": round(job["seconds"], 1) if job.get("seconds") else None,   # the driver's clock, loading and final export included
        "budget_seconds_used": _seconds_used(run),
        "step_seconds": round(sum(r.get("seconds", 0.0) for r in steps), 1),
        "budget_minutes": comparison.budget if stage.budget else None,
    }
    if validations:
        last = validations[-1]
        summary["final_validation"] = {k: v for k, v in last.items() if k.startswith("valid_")}
    if steps:
        summary["teacher_tokens"] = steps[-1].get("teacher_tokens")
    summary["validations"] = validation_history(records)
    return summary


def validation_history(records: list) -> list:
    """Each validation of a run with the budget spent when it ran: {step, valid_rougeL, valid_loss, step_seconds
    (training time so far), teacher_tokens (so far)}: the curves of what more steps did."""
    history, seconds, tokens = [], 0.0, 0
    for record in records:
        if "loss" in record:
            seconds += record.get("seconds", 0.0)
            tokens = record.get("teacher_tokens", tokens)
        if "valid_loss" in record:
            history.append({"step": record.get("step"), "valid_rougeL": record.get("valid_rougeL"),
                            "valid_loss": record["valid_loss"], "step_seconds": round(seconds, 1),
                            "teacher_tokens": tokens})
    return history


def _seconds_used(run: Path):
    """train.max_minutes' clock at the run's last checkpoint (None for runs from before it existed)."""
    from ..training.checkpoint import list_checkpoints

    checkpoints = list_checkpoints(run) if run.is_dir() else []
    state = _read_json(checkpoints[-1] / "trainer_state.json") if checkpoints else None
    used = (state or {}).get("seconds_used")
    return round(used, 1) if used else None


def merged_report(comparison) -> dict:
    """The evaluations of every model, as one `minillm eval` report whose models are named by stage."""
    merged = {"settings": {}, "models": {}, "suites": [], "results": {}}
    for name in comparison.plan.evaluate.models:
        report = _read_json(comparison.eval_dir(name) / "results.json")
        if not report:
            continue
        merged["settings"] = merged["settings"] or report.get("settings", {})
        for info in report.get("models", {}).values():
            merged["models"][name] = info
        for per_suite in report.get("results", {}).values():
            merged["results"][name] = per_suite
        for suite in report.get("suites", []):
            if suite not in merged["suites"]:
                merged["suites"].append(suite)
    return merged


def _lengths(result: dict) -> dict:
    """The response lengths of a generation suite (its details), beside its metrics: mean new tokens over every
    seed, and the share of responses that ended before the token limit."""
    details = result.get("details") or {}
    return {key: details[key] for key in ("mean_new_tokens", "finished_percent") if details.get(key) is not None}


def _machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def table(comparison, summaries: dict, merged: dict) -> str:
    headlines = headline_names(merged)
    suites = merged["suites"]
    lines = ["| model | objective | steps | wall time | " + " | ".join(f"{s} ({headlines.get(s, '-')})" for s in suites) + " |",
             "|---|---|---:|---:|" + "---:|" * len(suites)]
    for name in comparison.plan.evaluate.models:
        summary = summaries.get(name, {})
        seconds = summary.get("wall_seconds")
        wall = f"{seconds / 60:.1f} min" if seconds else "-"   # "-": the stage ran outside this driver
        per_suite = merged["results"].get(name, {})
        lines.append(
            f"| {name} | {summary.get('objective') or '-'} | {summary.get('steps') if summary.get('steps') is not None else '-'} "
            f"| {wall} | " + " | ".join(cell(per_suite.get(s)) for s in suites) + " |"
        )
    return "\n".join(lines)


def write_comparison(comparison) -> dict:
    """results/comparison.json, results/comparison.md and the merged evaluation report (report.md, plots)."""
    out = comparison.out / "results"
    out.mkdir(parents=True, exist_ok=True)
    summaries = {s.name: training_summary(comparison, s) for s in comparison.plan.stages}
    for name in comparison.plan.sweeps:   # a swept stage reads as its winner, with the sweep
        chosen = comparison.winner(name)
        summaries[name] = {**summaries.get(chosen, {}), "chosen": chosen, "sweep": comparison.sweep_scores(name),
                           "settings": dict(o.split("=", 1) for o in comparison.plan.stage(chosen).swept) if chosen else {}}
    merged = merged_report(comparison)
    machine = _machine()
    machine["torch_threads_per_stage"] = comparison.threads
    exposure = comparison.plan.evaluate.exposure
    files = write_reports(merged, out, plots=True, reference=exposure["teacher"] if exposure else None)
    curves = plot_validation(summaries, [m for m in comparison.plan.evaluate.models if not exposure or m != exposure["teacher"]],
                             out / "validation.png")
    if curves:
        files["validation_plot"] = str(curves)
    modes = plot_mode_seeking(merged, out / "mode_seeking.png")
    if modes:
        files["mode_seeking_plot"] = str(modes)
    document = {
        "plan": str(comparison.plan.path), "title": comparison.plan.title, "data_dir": comparison.data_dir,
        "budget_minutes": comparison.budget, "parallel": comparison.parallel, "machine": machine,
        "stages": summaries, "evaluation": {"settings": merged["settings"], "suites": merged["suites"]},
        "results": {
            model: {suite: {**result.get("metrics", {}), **_lengths(result)} for suite, result in per_suite.items()}
            for model, per_suite in merged["results"].items()
        },
        "headlines": headline_names(merged),   # with the curves: enough to draw the plots again (plot_again)
        "curves": {model: {suite: result["curves"] for suite, result in per_suite.items() if result.get("curves")}
                   for model, per_suite in merged["results"].items()},
        "reference": exposure["teacher"] if exposure else None,
    }
    with atomic_open(out / JSON_NAME) as handle:
        json.dump(document, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    text = [f"# {comparison.plan.title or comparison.plan.path.stem}", "",
            f"Budget: {comparison.budget:g} min of wall time per compared method" if comparison.budget else "No time budget",
            f"({comparison.parallel} stage(s) at a time, {comparison.threads or 'default'} thread(s) each; "
            f"{machine['cpu_count']} CPUs, {machine['processor']}).", "", table(comparison, summaries, merged), ""]
    with atomic_open(out / TABLE_NAME) as handle:
        handle.write("\n".join(text))
    files.update(comparison_json=str(out / JSON_NAME), markdown=str(out / TABLE_NAME))
    return files


def plot_again(document_path: Path, out_dir: Path) -> list:
    """Draw a comparison's plots again from its comparison.json, offline (after the plotting code changed).

    Files written before the JSON kept headlines and curves lack them: the first metric of each suite is its
    headline there (as the evaluators list them), and no curve can be drawn."""
    from ..evaluation.plots import plot

    document = json.loads(Path(document_path).read_text(encoding="utf-8"))
    headlines, curves = document.get("headlines") or {}, document.get("curves") or {}
    results = {
        model: {suite: {"metrics": metrics, "headline": headlines.get(suite) or next(iter(metrics), None),
                        "curves": curves.get(model, {}).get(suite)}
                for suite, metrics in per_suite.items()}
        for model, per_suite in document["results"].items()
    }
    report = {"suites": document["evaluation"]["suites"], "results": results}
    return plot(report, Path(out_dir), reference=document.get("reference"))


def plot_validation(summaries: dict, models: list, path: Path):
    """validation.png: validation Rouge-L of every evaluated stage that validated more than once, against training
    time and against teacher-forward tokens (the budget's two units); None without matplotlib or curves."""
    from ..evaluation.plots import model_colours, new_figure, save_figure   # matplotlib itself loads in new_figure
    series = {m: [v for v in summaries.get(m, {}).get("validations", []) if v.get("valid_rougeL") is not None]
              for m in models}
    series = {m: v for m, v in series.items() if len(v) > 1}
    if not series:
        return None
    try:
        figure, panels = new_figure(11.0, 4.2, columns=2)
    except ImportError:
        return None
    colours = model_colours(list(series))
    for axes, key, label in ((panels[0], "step_seconds", "training time (s, one CPU thread)"),
                             (panels[1], "teacher_tokens", "teacher-forward tokens")):
        for model, points in series.items():
            axes.plot([p[key] for p in points], [p["valid_rougeL"] for p in points], marker=".",
                      color=colours[model], label=model)
        # log scale: a long initialisation and minutes-long comparisons on one axis
        axes.set_xscale("symlog", linthresh=10.0 if key == "step_seconds" else 1000.0)
        axes.set_xlabel(label + " (log scale)")
        axes.set_ylabel("validation Rouge-L (greedy), higher is better", fontsize="small")
    panels[0].legend(fontsize="x-small")
    figure.suptitle("What more steps did: validation Rouge-L during training", fontsize="medium")
    figure.tight_layout()
    return save_figure(figure, path)


def plot_mode_seeking(merged: dict, path: Path):
    """mode_seeking.png: per suite, each model's teacher_nll (precision: the teacher's NLL of the model's samples)
    against student_nll_on_teacher (coverage: the model's NLL of the teacher's samples), both lower is better;
    None without matplotlib or without the measures (docs/evaluation.md)."""
    from ..evaluation.plots import SUITE_TITLES, model_colours, new_figure, save_figure   # matplotlib loads in new_figure
    results = merged["results"]
    suites = [s for s in merged["suites"]
              if any((results[m].get(s) or {}).get("metrics", {}).get("teacher_nll") is not None for m in results)]
    if not suites:
        return None
    try:
        figure, panels = new_figure(5.2 * len(suites), 4.4, columns=len(suites))
    except ImportError:
        return None
    colours = model_colours(list(results))
    for axes, suite in zip(panels, suites):
        for model, per_suite in results.items():
            metrics = (per_suite.get(suite) or {}).get("metrics", {})
            x, y = metrics.get("student_nll_on_teacher"), metrics.get("teacher_nll")
            if x is None or y is None:
                continue
            axes.scatter([x], [y], color=colours[model], s=30)
            axes.annotate(model, (x, y), fontsize="x-small", xytext=(3, 3), textcoords="offset points")
        axes.set_xlabel("student NLL of the teacher's samples (coverage), lower is better", fontsize="small")
        axes.set_ylabel("teacher NLL of the student's samples (precision), lower is better", fontsize="small")
        axes.set_title(SUITE_TITLES.get(suite, suite), fontsize="medium")
    figure.suptitle("Precision (low: mode-seeking) against coverage (left: mass-covering), nats per token",
                    fontsize="medium")
    figure.tight_layout()
    return save_figure(figure, path)
