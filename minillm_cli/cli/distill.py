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
    cross_tokenizer: Optional[bool] = typer.Option(None, "--cross-tokenizer/--no-cross-tokenizer", help="Allow a teacher and a student with different tokenizers: align them by text (docs/cross-tokenizer.md)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, … (default: cuda when available)."),
    resume: Optional[str] = typer.Option(None, help="Resume from a run's output directory (its newest complete checkpoint), one checkpoint directory, or 'auto' (the --output-dir's); the run continues in that folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run's checkpoints, exports and metrics in the output directory."),
    allow_changes: bool = typer.Option(False, "--allow-changes", help="With --resume: accept a config that differs from the checkpoint's in keys that steer training (the run then does not continue exactly); without it such a resume is refused, naming each changed key."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config as YAML and exit."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the live progress display."),
    num_processes: Optional[int] = typer.Option(None, help="Training processes on this machine (one per GPU; on CPU, processes sharing the cores); >1 starts them through torch.distributed.run.", rich_help_panel="Scaling out"),
    num_machines: int = typer.Option(1, help="Machines in the run; run the same command on each with its --machine-rank.", rich_help_panel="Scaling out"),
    machine_rank: int = typer.Option(0, help="This machine's index, 0 .. num-machines − 1.", rich_help_panel="Scaling out"),
    main_process_ip: Optional[str] = typer.Option(None, help="Address of machine 0, reachable from every machine.", rich_help_panel="Scaling out"),
    main_process_port: Optional[int] = typer.Option(None, help="A free port on machine 0 (the same on every machine).", rich_help_panel="Scaling out"),
    engine: Optional[str] = typer.Option(None, help="accelerate (data parallel) or deepspeed (ZeRO) (parallel.engine).", rich_help_panel="Scaling out"),
    zero_stage: Optional[int] = typer.Option(None, help="ZeRO stage 0-3 with --engine deepspeed (parallel.zero_stage).", rich_help_panel="Scaling out"),
    offload_optimizer: Optional[str] = typer.Option(None, help="none, cpu or nvme (parallel.offload_optimizer).", rich_help_panel="Scaling out"),
    offload_params: Optional[str] = typer.Option(None, help="none, cpu or nvme, ZeRO-3 (parallel.offload_params).", rich_help_panel="Scaling out"),
    deepspeed_config: Optional[str] = typer.Option(None, help="Your DeepSpeed JSON config (parallel.deepspeed_config).", rich_help_panel="Scaling out"),
    teacher_shard: Optional[str] = typer.Option(None, help="none, device_map or zero3 (parallel.teacher_shard).", rich_help_panel="Scaling out"),
) -> None:
    """Distill a teacher into a student. Without --recipe or --objective: the embedded default job, MiniLLM after a
    short SFT warm start (offline, minutes on a laptop CPU); --objective NAME runs that objective on the defaults."""
    from ..runs.distill import run_distill_command
    from ..runs.launch import LaunchOptions, distill_args, inside_launcher, relaunch

    options = {
        "teacher": teacher, "student": student, "objective.name": objective, "output_dir": output_dir,
        "train.steps": steps, "trim_vocab": trim_vocab, "cross_tokenizer": cross_tokenizer, "device": device,
        "parallel.engine": engine, "parallel.zero_stage": zero_stage, "parallel.offload_optimizer": offload_optimizer,
        "parallel.offload_params": offload_params, "parallel.deepspeed_config": deepspeed_config,
        "parallel.teacher_shard": teacher_shard,
    }
    launch = LaunchOptions(num_processes, num_machines, machine_rank, main_process_ip, main_process_port)
    launch.check()   # --num-processes 0 is an error, not one process
    if launch.wanted() and not inside_launcher() and not print_config:
        args = distill_args(overrides=overrides or [], recipe=recipe, options=options, resume=resume,
                            overwrite=overwrite, print_config=print_config, progress=progress,
                            allow_changes=allow_changes)
        raise typer.Exit(relaunch(launch, args))
    run_distill_command(
        overrides=overrides or [], recipe=recipe, resume=resume, print_config=print_config, progress=progress,
        overwrite=overwrite, options=options, allow_changes=allow_changes,
    )
