"""Evaluator plugins during ``minillm distill``: the suites named by ``eval.suites``, at every validation.

The engine's own validation (loss, KL to the teacher, greedy Rouge-L on the held-out split) is unchanged; these
suites add ``valid_<suite>_<metric>`` numbers to the same record. They run through the same evaluator classes
as ``minillm eval``, on ``eval.suite_examples`` examples, with the paper's sampling (docs/method.md §4) cut to
``eval.max_new_tokens`` and the seeds ``eval.suite_seeds``; nothing is written to disk.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import EvalContext, paper_sampling


class SuiteValidation:
    """The suites of ``eval.suites``, built once when the run is prepared (their names and options are checked
    then), run on the student at every validation of the engine."""

    def __init__(self, config, *, tokenizer, prompt_format: str, add_bos: bool, vocab_width: int):
        from .select import build_evaluators

        self.config, self.tokenizer, self.vocab_width = config, tokenizer, vocab_width
        self.prompt_format, self.add_bos = prompt_format, add_bos
        self.evaluators = build_evaluators(config.eval.suites)

    def __call__(self, model, *, device, teacher=None) -> dict:
        """``{"valid_<suite>_<metric>": value}`` for every suite (standard deviations left out)."""
        import torch

        results: dict = {}
        device = torch.device(device)
        # Seeded sampling reseeds torch's generator; forking it keeps training's random stream as if the suites
        # had not run (otherwise every validation would restart training's samples from the same state).
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            for evaluator in self.evaluators:
                result = evaluator.evaluate(self._context(model, device, teacher))
                prefix = "valid_" + re.sub(r"[^A-Za-z0-9]+", "_", evaluator.name).strip("_")
                for key, value in result.metrics.items():
                    if not key.endswith("_std") and isinstance(value, (int, float)):
                        results[f"{prefix}_{key}"] = float(value)
        return results

    def _context(self, model, device, teacher) -> EvalContext:
        config = self.config
        cfg = config.eval
        return EvalContext(
            model_name="student", model=model, tokenizer=self.tokenizer, prompt_format=self.prompt_format,
            add_bos=self.add_bos, seeds=list(cfg.suite_seeds), sampling=paper_sampling(cfg.max_new_tokens),
            batch_size=config.train.batch_size, max_prompt_tokens=config.data.max_prompt_tokens,
            limit=cfg.suite_examples, data_dir=Path(cfg.data_dir) if cfg.data_dir else None, device=device,
            vocab_width=self.vocab_width, teacher_name=config.teacher, quiet=True,
            teacher_loader=(lambda: teacher) if teacher is not None else None,
        )
