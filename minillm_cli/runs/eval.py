"""The work behind ``minillm eval``: every model on every suite, then the reports; or re-scoring saved generations.

Output layout (``--out``)::

    results.json  report.md  comparison.png  [<curve>.png]
    suites/<model>/<suite>/result.json          one SuiteResult, with the model's name
    suites/<model>/<suite>/seed-<seed>.jsonl    the generations of each seed (generation suites)
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import re
from pathlib import Path
from typing import Optional, Sequence

from ..atomic import atomic_open, check_output_folder
from ..errors import MinillmError
from ..evaluation.base import EvalContext, SuiteResult
from ..evaluation.reports import JSON_NAME, print_table, write_reports
from ..evaluation.select import build_evaluators, options_dict, parse_settings

RESULT_NAME = "result.json"


def _slug(text: str, taken: set) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "x"
    base = base[-80:]
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _version() -> str:
    from .. import __version__

    return __version__


def run_eval(
    *,
    models: Sequence[str],
    suites: Sequence[str],
    out: Path,
    seeds: Sequence[int],
    sampling,
    data_dir: Optional[str] = None,
    batch_size: int = 8,
    max_prompt_tokens: int = 256,
    limit: Optional[int] = None,
    prompt_format: Optional[str] = None,
    family: Optional[str] = None,
    dtype: str = "fp32",
    device: Optional[str] = None,
    teacher: Optional[str] = None,
    teacher_family: Optional[str] = None,
    settings: Sequence[str] = (),
    plots: bool = True,
    quiet: bool = False,
    trust_remote_code: bool = False,
) -> dict:
    """Evaluate every model on every suite; write the reports and return the report dict."""
    from rich.console import Console

    from ..models.device import pick_device
    from ..models.load import load_model, load_tokenizer, resolve_model
    from ..evaluation.provenance import describe_model

    if not models:
        raise MinillmError("pass at least one --model (or --from-generations DIR to re-score saved generations)")
    if limit is not None and limit < 1:
        raise MinillmError(f"--limit must be >= 1, got {limit}")
    if batch_size < 1:
        raise MinillmError(f"--batch-size must be >= 1, got {batch_size}")
    check_output_folder(out, "--out")
    log = Console(stderr=True, quiet=quiet)
    # Every suite name and option is checked before the first (slow) model load.
    evaluators = build_evaluators(suites, parse_settings(settings))
    if teacher is None:
        needing = [e.name for e in evaluators if "teacher" in e.needs]
        if needing:
            raise MinillmError(f"suite(s) {', '.join(needing)} compare the model with a teacher; pass --teacher MODEL")
    preflight = EvalContext(model_name="", limit=limit, data_dir=Path(data_dir) if data_dir else None, seeds=list(seeds))
    problems = []
    for evaluator in evaluators:
        try:
            evaluator.check(preflight)
        except MinillmError as exc:
            problems.append(str(exc))
    if problems:
        raise MinillmError("; ".join(problems))
    refs = [resolve_model(name, family=family) for name in dict.fromkeys(models)]   # a repeated --model once
    dev = pick_device(device)
    out = Path(out)
    teacher_cache: dict = {}

    def teacher_parts():
        if not teacher_cache:
            teacher_ref = resolve_model(teacher, family=teacher_family)
            log.print(f"loading teacher {teacher}")
            teacher_cache["tokenizer"] = load_tokenizer(teacher_ref, trust_remote_code=trust_remote_code)
            teacher_cache["model"] = load_model(teacher_ref, dtype=dtype, device=dev, trust_remote_code=trust_remote_code)
            teacher_cache["info"] = describe_model(teacher_ref)
        return teacher_cache

    report = {
        "minillm_version": _version(),
        "created": _now(),
        "settings": {
            "seeds": list(seeds),
            "sampling": dataclasses.asdict(sampling),
            "batch_size": batch_size,
            "max_prompt_tokens": max_prompt_tokens,
            "limit": limit,
            "prompt_format": prompt_format or "the model family's",
            "dtype": dtype,
            "device": str(dev),
            "data_dir": data_dir,
            "teacher": teacher,
            "suite_options": {e.name: options_dict(e) for e in evaluators},
        },
        "models": {},
        "suites": [e.name for e in evaluators],
        "results": {},
    }
    model_slugs: set = set()
    for ref in refs:
        log.print(f"loading {ref.spec}")
        tokenizer = load_tokenizer(ref, trust_remote_code=trust_remote_code)
        lm = load_model(ref, dtype=dtype, device=dev, trust_remote_code=trust_remote_code)
        report["models"][ref.spec] = describe_model(ref)
        model_dir = out / "suites" / _slug(ref.spec, model_slugs)
        suite_slugs: set = set()
        per_suite = report["results"].setdefault(ref.spec, {})
        for evaluator in evaluators:
            ctx = EvalContext(
                model_name=ref.spec, model=lm, tokenizer=tokenizer,
                prompt_format=prompt_format or ref.family.prompt_format, add_bos=ref.family.add_bos,
                seeds=list(seeds), sampling=sampling, batch_size=batch_size, max_prompt_tokens=max_prompt_tokens,
                limit=limit, data_dir=Path(data_dir) if data_dir else None,
                output_dir=model_dir / _slug(evaluator.name, suite_slugs), device=dev,
                teacher_name=teacher, console=log, quiet=quiet,
            )
            if teacher is not None:
                ctx.teacher_loader = _teacher_loader(ctx, teacher_parts)
            result = evaluator.evaluate(ctx)
            result.settings.setdefault("prompt_format", ctx.prompt_format)
            result.settings.setdefault("seeds", list(ctx.seeds))
            if "teacher" in evaluator.needs and teacher_cache:
                result.settings.setdefault("teacher", teacher_cache["info"])
            save_result(ctx.output_dir, ref.spec, evaluator.name, result)
            per_suite[evaluator.name] = result.to_dict()
        del lm
        gc.collect()
    return _finish(report, out, plots, log, quiet)


def _teacher_loader(ctx: EvalContext, teacher_parts):
    """ctx.teacher(): load the teacher once for the whole run, check it against this model's vocabulary."""
    def load():
        from ..models.load import logit_width
        from ..models.vocab import check_vocab

        parts = teacher_parts()
        if ctx.vocab_width is None:
            check = check_vocab(
                parts["tokenizer"], ctx.tokenizer, logit_width(parts["model"]), logit_width(ctx.model), trim=True
            )
            ctx.vocab_width = check.width
        return parts["model"]

    return load


def save_result(folder: Path, model: str, suite: str, result: SuiteResult) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESULT_NAME
    with atomic_open(path) as handle:
        json.dump({"model": model, "suite": suite, "result": result.to_dict()}, handle, indent=2,
                  ensure_ascii=False, allow_nan=False)
    return path


def _finish(report: dict, out: Path, plots: bool, log, quiet: bool) -> dict:
    from rich.console import Console

    teacher = report.get("settings", {}).get("teacher")   # drawn grey when it is also evaluated
    files = write_reports(report, out, plots=plots, console=log, reference=teacher)
    print_table(report, Console(quiet=quiet))
    log.print("wrote " + ", ".join(files.values()))
    return report


def run_rescore(source: Path, *, out: Optional[Path] = None, plots: bool = True, quiet: bool = False) -> dict:
    """Re-score the saved generations of an earlier ``minillm eval --out SOURCE``: no model is loaded.

    Generation-based numbers (Rouge-L, exact match, buckets, Dist-4) are recomputed from the seed files;
    numbers that need a model (test loss, exposure bias, calibration, judge scores) are carried over.
    Reports go to ``out`` (default ``SOURCE/rescored``), so the original ones are kept.
    """
    from rich.console import Console

    from ..evaluation import protocol

    source = Path(source)
    if not source.is_dir():
        raise MinillmError(f"--from-generations {source}: no such directory; pass the --out directory of a minillm eval run")
    found = sorted(source.rglob(RESULT_NAME))
    if not found:
        raise MinillmError(
            f"--from-generations {source}: no {RESULT_NAME} files below it; pass the --out directory of a minillm eval run"
        )
    stored_report = {}
    if (source / JSON_NAME).is_file():
        try:
            stored_report = json.loads((source / JSON_NAME).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise MinillmError(f"{source / JSON_NAME}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    results: dict = {}
    for path in found:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            model, suite, stored = data["model"], data["suite"], SuiteResult.from_dict(data["result"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise MinillmError(f"{path}: not a result written by minillm eval ({exc}); remove it or re-run the evaluation") from None
        rescored = protocol.rescore(path.parent, stored)
        results.setdefault(model, {})[suite] = (rescored or stored).to_dict()
    model_order = [m for m in stored_report.get("results", {}) if m in results] + sorted(m for m in results if m not in stored_report.get("results", {}))
    suite_order = [s for s in stored_report.get("suites", []) if any(s in r for r in results.values())]
    suite_order += sorted({s for r in results.values() for s in r} - set(suite_order))
    report = {
        "minillm_version": _version(),
        "created": _now(),
        "rescored_from": str(source),
        "settings": stored_report.get("settings", {}),
        "models": {m: stored_report.get("models", {}).get(m, {"name": m}) for m in model_order},
        "suites": suite_order,
        "results": {m: {s: results[m][s] for s in suite_order if s in results[m]} for m in model_order},
    }
    log = Console(stderr=True, quiet=quiet)
    return _finish(report, Path(out) if out else source / "rescored", plots, log, quiet)
