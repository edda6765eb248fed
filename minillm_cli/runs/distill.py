"""The command-line flow of ``minillm distill``: config, run, and the before/after summary."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def run_distill_command(
    *, overrides, recipe: Optional[str], resume: Optional[str], print_config: bool, progress: bool, options: dict,
    overwrite: bool = False, allow_changes: bool = False,
):
    from rich.console import Console
    from rich.markup import escape

    from ..atomic import check_output_folder
    from ..training.checkpoint import find_resume_checkpoint
    from ..config.recipes import config_to_dict, dump_config, load_config
    from .resume import check_unchanged, output_dir_given, run_folder_of

    # One process speaks for a multi-process run, warnings before the process group exists included.
    console = Console(stderr=True, quiet=os.environ.get("RANK", "0") != "0")
    warn = lambda message: console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)  # noqa: E731
    checkpoint = None
    if resume:
        given = output_dir_given(options, overrides)
        output_dir = resume if resume not in ("auto", "latest") else given or _output_dir_of(recipe, overrides, options)
        checkpoint = find_resume_checkpoint(resume, Path(output_dir), warn=warn)
        run_folder = run_folder_of(resume, checkpoint, given)
        if run_folder is not None:   # the folder --resume points at, never the output_dir saved in the checkpoint
            options = {**options, "output_dir": str(run_folder)}
        if recipe is None:
            # The run continues with the config it was started with, plus whatever this command overrides.
            recipe = str(checkpoint / "config.yaml")
    elif recipe is None and not names_objective(overrides, options):
        recipe = str(DEFAULT_JOB)
    config, objective_options = load_config(recipe, overrides=overrides, options=options)
    config_yaml = dump_config(config, objective_options)
    if print_config:
        print(config_yaml, end="")
        return
    check_output_folder(config.output_dir, "--output-dir")
    if config.device:   # a device this machine lacks fails now, not silently on the CPU
        from ..models.device import pick_device

        pick_device(config.device)
    if config.cross_tokenizer:   # an objective that cannot train across tokenizers: refused before a warm start
        from ..plugins import get_objective
        from ..training.cross_teacher import check_objective

        check_objective(get_objective(config.objective["name"])(objective_options))
    if checkpoint is not None:
        check_unchanged(checkpoint, config_to_dict(config, objective_options), allow_changes, warn)
    else:
        _claim_output_dir(Path(config.output_dir), overwrite, remove=False)   # refuse early, before any work
    warm = None
    if checkpoint is None and config.warm_start.steps > 0:
        warm_objective = config.warm_start.objective
        config, warm = _warm_start(config, console=console, progress=progress, overwrite=overwrite, warn=warn)
        config_yaml = dump_config(config, objective_options)
    result = _train(config, objective_options, console=console, progress=progress, config_yaml=config_yaml,
                    checkpoint=checkpoint, overwrite=overwrite, warn=warn)
    if warm is not None:   # the warm-started student (its best export) is this run's "before"
        columns = [("before", warm.before), (f"after {warm_objective}", result.before),
                   (f"after {config.objective['name']}", result.after)]
    else:
        columns = [("before", result.before), ("after", result.after)]
    _print_summary(console, result, config, columns)


# The embedded default job: what `minillm distill` runs without a recipe or an objective (the paper's pipeline,
# scaled to minutes on a laptop CPU). Any --recipe or objective name starts from the schema's defaults instead.
DEFAULT_JOB = Path(__file__).resolve().parents[1] / "resources" / "default_job.yaml"


def names_objective(overrides, options) -> bool:
    """Whether the command line picks an objective (``--objective``, ``objective=…`` or ``objective.name=…``)."""
    if options.get("objective.name") is not None:
        return True
    return any(str(item).split("=", 1)[0].strip() in ("objective", "objective.name") for item in overrides or [])


def _warm_start(config, *, console, progress: bool, overwrite: bool, warn):
    """Run the warm start (``config.warm_start``) in OUTPUT/warm_start unless a finished one is there, and return
    the main run's config (its student: the warm start's best export, or final) with the warm start's result
    (None when an earlier one was reused)."""
    import copy
    import shutil

    from ..config.schema import WarmStartConfig
    from ..plugins import get_objective

    warm_dir = Path(config.output_dir) / "warm_start"
    result = None
    if overwrite or not (warm_dir / "final").is_dir():
        if warm_dir.exists():   # an earlier, unfinished or replaced warm start of this output directory
            shutil.rmtree(warm_dir)
        warm = copy.deepcopy(config)
        warm.objective = {"name": config.warm_start.objective}
        warm.train.steps, warm.train.lr = config.warm_start.steps, config.warm_start.lr
        warm.output_dir = str(warm_dir)
        warm.warm_start = WarmStartConfig()
        options = get_objective(warm.objective["name"]).Options()
        from ..config.recipes import dump_config

        result = _train(warm, options, console=console, progress=progress, config_yaml=dump_config(warm, options),
                        checkpoint=None, overwrite=True, warn=warn, label="warm start")
    else:
        console.print(f"warm start: reusing {warm_dir} (pass --overwrite to redo it)")
    export = warm_dir / "best" if (warm_dir / "best").is_dir() else warm_dir / "final"
    main = copy.deepcopy(config)
    main.student = str(export)
    main.warm_start.steps = 0          # a resumed run continues from the warm-started student, not again
    return main, result


def _train(config, objective_options, *, console, progress: bool, config_yaml: str, checkpoint, overwrite: bool,
           warn, label: str = "minillm distill"):
    """Prepare and run one training run (the engine), with its run_info, resume and interruption handling."""
    from rich.markup import escape

    from ..training.checkpoint import rewind_metrics
    from ..config.recipes import config_to_dict
    from ..training.display import RunDisplay
    from .prepare import prepare

    loading = RunDisplay(console, progress and os.environ.get("RANK", "0") == "0")   # one process speaks
    with loading.phase("loading the models and the data"):
        prepared = prepare(config, objective_options, console=console, progress=progress, config_yaml=config_yaml)
    engine = prepared.engine
    counts = prepared.counts
    console.quiet = not engine.accelerator.is_main_process   # one process speaks for a multi-process run
    if checkpoint is None and engine.accelerator.is_main_process:
        # Only now, with models and data loaded and checked: bad input never costs the earlier run its files.
        _claim_output_dir(Path(config.output_dir), overwrite, warn=warn)
    engine.accelerator.wait_for_everyone()
    if engine.accelerator.is_main_process:
        from .run_info import collect_run_info, write_run_info

        info = collect_run_info(
            config, config_to_dict(config, objective_options), prepared.teacher_ref, prepared.student_ref,
            engine.data.train, resumed_from=checkpoint,
        )
        write_run_info(Path(config.output_dir), info)
    console.print(
        f"[bold]{label}[/] {config.objective['name']}: {prepared.teacher_ref.spec} → "
        f"{prepared.student_ref.display}; {counts['train']} train / {counts['valid']} valid examples"
        + (f" ({counts['dropped_long_prompts']} over-long prompts dropped)" if counts["dropped_long_prompts"] else "")
        + f"; {counts['steps']} steps → {config.output_dir}"
    )
    if checkpoint is not None:
        engine.resume(checkpoint)
        if engine.accelerator.is_main_process:
            from ..atomic import remove_stale_siblings

            # A killed run logged steps after its last checkpoint; they are about to be logged again. It may also
            # have left half-written exports behind (final.tmp-PID): they are swept, the real ones stay.
            rewind_metrics(Path(config.output_dir), engine.state.step)
            remove_stale_siblings(Path(config.output_dir), only=RUN_OUTPUTS)
        console.print(f"resumed from {checkpoint} at step {engine.state.step}")
    result = engine.run()
    if engine.state.skipped_steps:
        console.print(
            f"[yellow]{engine.state.skipped_steps} step(s) skipped[/] for a non-finite loss or gradient "
            f"(last: {escape(str(engine.state.last_bad_term))}); see skipped_steps in metrics.jsonl", soft_wrap=True,
        )
    if result.interrupted:
        console.print(
            f"[yellow]interrupted at step {result.steps}[/]; checkpoint {result.final_dir}; "
            f"resume with: minillm distill --resume {config.output_dir}"
        )
        raise SystemExit(130)
    return result


RUN_OUTPUTS = ("checkpoints", "final", "best", "metrics.jsonl", "tensorboard", "run_info.json")


def _claim_output_dir(output_dir: Path, overwrite: bool, remove: bool = True, warn=None) -> None:
    """A new run never mixes its checkpoints and metrics with an earlier run's; ``remove=False`` only checks.

    What a run left before its first complete checkpoint (run_info.json, metrics, a half-written save) holds
    nothing to resume: it is cleared with a warning. A run with a checkpoint or an export is kept unless
    ``overwrite``; so is a final/ or best/ that minillm did not write (the user's own model)."""
    import shutil

    from ..errors import MinillmError

    existing = [name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    if not existing:
        return
    if not overwrite:
        problem = _kept_run(output_dir)
        if problem:
            raise MinillmError(problem)
    if not remove:
        return
    if not overwrite and warn is not None:
        warn(f"output directory '{output_dir}' holds what a run left before its first checkpoint "
             f"({', '.join(existing)}); nothing there can be resumed, so this run starts over in it")
    for name in existing:
        path = output_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _kept_run(output_dir: Path) -> Optional[str]:
    """Why ``output_dir`` cannot be reused without --overwrite, or None when it holds nothing worth keeping."""
    from ..training.checkpoint import list_checkpoints, verify_checkpoint

    complete = [p for p in list_checkpoints(output_dir) if verify_checkpoint(p, full=False) is None]
    if complete:
        return (f"output directory '{output_dir}' already holds a run (checkpoints up to {complete[-1].name}); "
                f"pass --resume {output_dir} to continue it, --overwrite to start over, or another --output-dir")
    for name in ("final", "best"):
        export = output_dir / name
        if export.exists() and not (export / "minillm.json").is_file():
            return (f"'{export}' is not a model minillm exported (no minillm.json) and a run would replace it; "
                    "move it, pick another --output-dir, or pass --overwrite to replace it")
        if export.exists():
            return (f"output directory '{output_dir}' holds a finished run ({name}/) but no checkpoint to resume; "
                    "pass --overwrite to start over, or another --output-dir")
    return None


def _output_dir_of(recipe, overrides, options) -> str:
    from ..config.recipes import load_config

    config, _ = load_config(recipe, overrides=overrides, options=options)
    return config.output_dir


def _print_summary(console, result, config, columns) -> None:
    from rich.table import Table

    table = Table(title=f"student before and after {result.steps} steps of {config.objective['name']}")
    table.add_column("validation")
    for label, _ in columns:
        table.add_column(label, justify="right")
    names = {"valid_loss": "loss (CE, nats/token)", "valid_fkl": "KL(teacher‖student)", "valid_rougeL": "Rouge-L",
             "valid_rkl_own_samples": "KL(student‖teacher), own samples"}
    for key, label in names.items():
        if any(key in values for _, values in columns):
            table.add_row(label, *(f"{values[key]:.3f}" if key in values else "-" for _, values in columns))
    console.print(table)
    console.print(
        f"median {result.seconds_per_step:.2f} s/step, {result.tokens_per_second:.0f} sequence tokens/s; "
        f"final student: {result.final_dir}; best: {result.best_dir}"
    )
