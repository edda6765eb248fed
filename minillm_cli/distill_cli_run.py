"""The command-line flow of ``minillm distill``: config, run, and the before/after summary."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def run_distill_command(
    *, overrides, recipe: Optional[str], resume: Optional[str], print_config: bool, progress: bool, options: dict,
    overwrite: bool = False,
):
    from rich.console import Console

    from .checkpoint import find_resume_checkpoint
    from .recipes import dump_config, load_config

    console = Console(stderr=True)
    checkpoint = None
    if resume:
        output_dir = options.get("output_dir") or _output_dir_of(recipe, overrides, options)
        checkpoint = find_resume_checkpoint(resume, Path(output_dir))
        if recipe is None:
            # The run continues with the config it was started with, plus whatever this command overrides.
            recipe = str(checkpoint / "config.yaml")
    config, objective_options = load_config(recipe, overrides=overrides, options=options)
    config_yaml = dump_config(config, objective_options)
    if print_config:
        print(config_yaml, end="")
        return
    if checkpoint is None:
        _claim_output_dir(Path(config.output_dir), overwrite)
    from .distill_run import prepare

    prepared = prepare(config, objective_options, console=console, progress=progress, config_yaml=config_yaml)
    engine = prepared.engine
    counts = prepared.counts
    console.print(
        f"[bold]minillm distill[/] {config.objective['name']}: {prepared.teacher_ref.spec} → "
        f"{prepared.student_ref.display}; {counts['train']} train / {counts['valid']} valid examples"
        + (f" ({counts['dropped_long_prompts']} over-long prompts dropped)" if counts["dropped_long_prompts"] else "")
        + f"; {counts['steps']} steps → {config.output_dir}"
    )
    if checkpoint is not None:
        engine.resume(checkpoint)
        console.print(f"resumed from {checkpoint} at step {engine.state.step}")
    result = engine.run()
    if result.interrupted:
        console.print(
            f"[yellow]interrupted at step {result.steps}[/]; checkpoint {result.final_dir}; "
            f"resume with: minillm distill --resume {config.output_dir}"
        )
        raise SystemExit(130)
    _print_summary(console, result, config)


RUN_OUTPUTS = ("checkpoints", "final", "best", "metrics.jsonl", "tensorboard")


def _claim_output_dir(output_dir: Path, overwrite: bool) -> None:
    """A new run never mixes its checkpoints and metrics with an earlier run's."""
    import shutil

    from .checkpoint import list_checkpoints
    from .errors import MinillmError

    existing = [name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    if not existing:
        return
    if not overwrite:
        latest = list_checkpoints(output_dir)
        held = f" (checkpoints up to {latest[-1].name})" if latest else ""
        raise MinillmError(
            f"output directory '{output_dir}' already holds a run{held}; pass --resume {output_dir} to continue "
            "it, --overwrite to start over, or another --output-dir"
        )
    for name in existing:
        path = output_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _output_dir_of(recipe, overrides, options) -> str:
    from .recipes import load_config

    config, _ = load_config(recipe, overrides=overrides, options=options)
    return config.output_dir


def _print_summary(console, result, config) -> None:
    from rich.table import Table

    table = Table(title=f"student before and after {result.steps} steps of {config.objective['name']}")
    table.add_column("validation")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    names = {"valid_loss": "loss (CE, nats/token)", "valid_fkl": "KL(teacher‖student)", "valid_rougeL": "Rouge-L"}
    for key, label in names.items():
        if key in result.after or key in result.before:
            fmt = lambda d: f"{d[key]:.3f}" if key in d else "-"  # noqa: E731
            table.add_row(label, fmt(result.before), fmt(result.after))
    console.print(table)
    console.print(
        f"median {result.seconds_per_step:.2f} s/step, {result.tokens_per_second:.0f} sequence tokens/s; "
        f"final student: {result.final_dir}; best: {result.best_dir}"
    )
