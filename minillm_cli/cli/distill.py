"""``minillm distill``: train a student from a teacher with any registered objective."""

from __future__ import annotations

from typing import List, Optional

import typer


def distill(
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides key=value, e.g. train.lr=1e-4 objective.ratio=0.3."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="A shipped recipe name (see 'minillm recipes list') or a YAML file."),
    teacher: Optional[str] = typer.Option(None, help="Teacher model: alias, hub id, directory or .gguf file."),
    student: Optional[str] = typer.Option(None, help="Student model (default: cut from the teacher)."),
    objective: Optional[str] = typer.Option(None, "--objective", "-o", help="Objective: sft, kd, rkl, gkd, distillm, tvd, seqkd, …"),
    output_dir: Optional[str] = typer.Option(None, help="Where checkpoints, exported students and metrics go."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    trim_vocab: Optional[bool] = typer.Option(None, "--trim-vocab/--no-trim-vocab", help="Distil over the shared vocabulary when logit widths differ."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, … (default: cuda when available)."),
    resume: Optional[str] = typer.Option(None, help="Resume from a checkpoint directory, a run's output directory, or 'auto'."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run's checkpoints, exports and metrics in the output directory."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config as YAML and exit."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the live progress display."),
) -> None:
    """Distill a teacher into a student. With no arguments: the embedded default, offline, in a few minutes."""
    from ..distill_cli_run import run_distill_command

    run_distill_command(
        overrides=overrides or [], recipe=recipe, resume=resume, print_config=print_config, progress=progress,
        overwrite=overwrite,
        options={
            "teacher": teacher, "student": student, "objective.name": objective, "output_dir": output_dir,
            "train.steps": steps, "trim_vocab": trim_vocab, "device": device,
        },
    )
