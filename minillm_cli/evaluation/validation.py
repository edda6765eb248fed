"""Evaluator plugins during ``minillm distill``: the suites named by ``eval.suites``, at every validation.

The engine's own validation (loss, KL to the teacher, greedy Rouge-L on the held-out split) is unchanged; these
suites add ``valid_<suite>_<metric>`` numbers to the same record. They run through the same evaluator classes
as ``minillm eval``, on ``eval.suite_examples`` examples, with the paper's sampling (REFERENCE.md §4) cut to
``eval.max_new_tokens`` and the seeds ``eval.suite_seeds``; nothing is written to disk.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import EvalContext, paper_sampling


def _setup(engine) -> dict:
    """Evaluators, prompt format and BOS, worked out once per engine (names and options are checked here)."""
    cached = getattr(engine, "_validation_suites", None)
    if cached is not None:
        return cached
    from ..models.load import resolve_model
    from .select import build_evaluators

    config = engine.config
    evaluators = build_evaluators(config.eval.suites)
    # The student's family decides the prompt template and BOS, as in distill_run.prepare; a student cut from
    # the teacher (student: null) has the teacher's family.
    if config.student is not None:
        family = resolve_model(config.student, family=config.student_family).family
    else:
        family = resolve_model(config.teacher, family=config.teacher_family).family
    cached = {
        "evaluators": evaluators,
        "prompt_format": config.data.prompt_format or family.prompt_format,
        "add_bos": family.add_bos,
    }
    engine._validation_suites = cached
    return cached


def run_suites(engine, model) -> dict:
    """``{"valid_<suite>_<metric>": value}`` for every suite of ``eval.suites`` (standard deviations left out)."""
    import torch

    setup = _setup(engine)
    results: dict = {}
    device = torch.device(engine.device)
    # Seeded sampling reseeds torch's generator; forking it keeps training's random stream as if the suites had
    # not run (otherwise every validation would restart training's samples from the same state).
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        for evaluator in setup["evaluators"]:
            result = evaluator.evaluate(_context(engine, model, setup))
            prefix = "valid_" + re.sub(r"[^A-Za-z0-9]+", "_", evaluator.name).strip("_")
            for key, value in result.metrics.items():
                if not key.endswith("_std") and isinstance(value, (int, float)):
                    results[f"{prefix}_{key}"] = float(value)
    return results


def _context(engine, model, setup) -> EvalContext:
    config = engine.config
    cfg = config.eval
    return EvalContext(
        model_name="student", model=model, tokenizer=engine.tokenizer, prompt_format=setup["prompt_format"],
        add_bos=setup["add_bos"], seeds=list(cfg.suite_seeds), sampling=paper_sampling(cfg.max_new_tokens),
        batch_size=config.train.batch_size, max_prompt_tokens=config.data.max_prompt_tokens,
        limit=cfg.suite_examples, data_dir=Path(cfg.data_dir) if cfg.data_dir else None, device=engine.device,
        vocab_width=engine.vocab_width, teacher_name=config.teacher, quiet=True,
        teacher_loader=(lambda: engine.teacher) if engine.teacher is not None else None,
    )
