"""``minillm compare``: run a comparison plan (several distill stages, their evaluation, one table)."""

from __future__ import annotations

from typing import Optional

import typer


def compare(
    plan: Optional[str] = typer.Option(None, "--plan", "-p", help="A shipped plan name (see --list) or a plan YAML file."),
    data_dir: Optional[str] = typer.Option(None, help="Directory of the data sets the plan reads ({data_dir} in its overrides, --data-dir of the evaluations): dolly/valid.jsonl, dolly/test.jsonl, selfinst/test.jsonl inside (docs/evaluation.md)."),
    output_dir: Optional[str] = typer.Option(None, help="Where the stages' runs, evaluations and results go (default: the plan's output_dir)."),
    parallel: Optional[int] = typer.Option(None, min=1, help="Stages run at once (default: the plan's)."),
    threads: Optional[int] = typer.Option(None, min=1, help="Torch threads per stage (default: the plan's; on a CPU, parallel × threads ≈ cores)."),
    budget_minutes: Optional[float] = typer.Option(None, min=0.001, help="Wall time of each budgeted stage (train.max_minutes; default: the plan's)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print each stage's status and command, run nothing."),
    list_plans: bool = typer.Option(False, "--list", help="List the shipped plans and exit."),
) -> None:
    """Run a comparison plan: distill stages with the same budget, then every model's evaluation and one table
    (results/comparison.md, comparison.json, plots). Rerun the same command to resume."""
    from rich.console import Console

    from ..compare.plan import list_plans as shipped, load_plan
    from ..compare.runner import Comparison
    from ..errors import MinillmError

    console = Console(highlight=False)
    if list_plans:
        for name, description in shipped():
            console.print(f"{name}  {description}")
        return
    if plan is None:
        raise MinillmError("pass --plan NAME or --plan FILE (minillm compare --list shows the shipped plans)")
    loaded = load_plan(plan)
    needs_data = any("{data_dir}" in o for o in loaded.overrides + [o for s in loaded.stages for o in s.overrides])
    if needs_data and not data_dir:
        raise MinillmError(f"plan '{plan}' reads its data from {{data_dir}}; pass --data-dir DIR holding the suites' folders (dolly/, selfinst/; docs/evaluation.md)")

    def log(text: str) -> None:
        import time

        from rich.markup import escape

        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {escape(text)}", soft_wrap=True)

    comparison = Comparison(loaded, data_dir=data_dir, output_dir=output_dir, parallel=parallel, threads=threads,
                            budget_minutes=budget_minutes, log=log)
    comparison.check_data()
    code = comparison.run(dry_run=dry_run)
    if code:
        raise typer.Exit(code)
