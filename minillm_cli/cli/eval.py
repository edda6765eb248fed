"""``minillm eval``: score models on evaluation suites with the paper's protocol; or re-score saved generations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def eval_command(
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="Model to evaluate (repeatable): alias, hub id, directory or .gguf file (default: the newest runs/*/final that minillm distill exported)."),
    suite: List[str] = typer.Option(["default"], "--suite", "-s", help="Suites, comma-separated or repeated: default, dolly, selfinst, vicuna, sinst, uinst, exposure, calibration, judge, any registered evaluator, or a local JSONL file."),
    out: Optional[Path] = typer.Option(None, "--output-dir", "--out", "-o", help="Output directory (default runs/eval; with --from-generations: DIR/rescored)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Directory holding <suite>/test.jsonl files (docs/evaluation.md says where each comes from); default $MINILLM_DATA_DIR, then $MINILLM_HOME/data."),
    seeds: str = typer.Option("10,20,30,40,50", help="Generation seeds; scores are mean ± std over them (docs/method.md §4)."),
    temperature: float = typer.Option(1.0, help="Sampling temperature; 0 = greedy."),
    top_k: int = typer.Option(0, help="Top-k filtering; 0 = off."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling threshold; 1 = off."),
    no_repeat_ngram: int = typer.Option(6, help="Forbid repeating n-grams of this size; 0 = off."),
    max_new_tokens: int = typer.Option(256, help="Maximum new tokens per response."),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N examples of each suite."),
    batch_size: int = typer.Option(8, help="Prompts per generation and loss batch."),
    max_prompt_tokens: int = typer.Option(256, help="Prompts longer than this are skipped (and counted)."),
    prompt_format: Optional[str] = typer.Option(None, help="alpaca or chat (default: the model family's)."),
    family: Optional[str] = typer.Option(None, help="Model family, when it cannot be detected."),
    teacher: Optional[str] = typer.Option(None, help="Teacher model, for suites that compare with one (exposure)."),
    teacher_family: Optional[str] = typer.Option(None, help="The teacher's model family, when it cannot be detected."),
    judge_url: Optional[str] = typer.Option(None, help="OpenAI-compatible chat endpoint for the judge suite (sets judge.url)."),
    judge_model: Optional[str] = typer.Option(None, help="Model name the judge endpoint serves (sets judge.model)."),
    set_options: Optional[List[str]] = typer.Option(None, "--set", help="Suite option SUITE.KEY=VALUE (repeatable), e.g. dolly.limit=100."),
    from_generations: Optional[Path] = typer.Option(None, "--from-generations", help="Re-score the saved generations of an earlier run's --out directory; no model is loaded."),
    dtype: str = typer.Option("fp32", help="fp32, bf16 or fp16."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1, … (default: cuda when available)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG plots (needs matplotlib)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run Python code shipped with the models (auto_map); only for models you trust."),
) -> None:
    """Evaluate models: Rouge-L (mean ± std over seeds), exact match, length buckets, Dist-4, test loss; a table,
    results.json, report.md, a PNG plot and the generations. `minillm eval --model M` runs offline on the
    embedded default suite."""
    from .parsing import parse_seeds

    if from_generations is not None:
        from ..runs.eval import run_rescore

        if model:
            from ..errors import MinillmError

            raise MinillmError("--from-generations re-scores saved generations without a model; drop --model")
        run_rescore(from_generations, out=out, plots=plots)
        return

    from ..models.generation import SamplingConfig
    from ..runs.eval import run_eval

    if not model:   # `minillm eval --suite dolly` right after `minillm distill`: the student it just exported
        from ..runs.latest import default_model

        model = [default_model(lambda text: typer.echo(text, err=True))]

    settings = list(set_options or [])
    if judge_url is not None:
        settings.append(f"judge.url={json.dumps(judge_url)}")   # JSON quoting: the value is read as YAML
    if judge_model is not None:
        settings.append(f"judge.model={json.dumps(judge_model)}")
    run_eval(
        models=list(model or []),
        suites=suite,
        out=out or Path("runs/eval"),
        seeds=parse_seeds(seeds),
        sampling=SamplingConfig(
            temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
            no_repeat_ngram_size=no_repeat_ngram,
        ),
        data_dir=data_dir,
        batch_size=batch_size,
        max_prompt_tokens=max_prompt_tokens,
        limit=limit,
        prompt_format=prompt_format,
        family=family,
        dtype=dtype,
        device=device,
        teacher=teacher,
        teacher_family=teacher_family,
        settings=settings,
        plots=plots,
        trust_remote_code=trust_remote_code,
    )
