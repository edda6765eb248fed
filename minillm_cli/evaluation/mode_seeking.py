"""Measures behind the paper's argument that reverse KL is mode-seeking (Gu et al. 2023, §1 and §3), per suite.

With a teacher (``minillm eval --teacher``), on the suite's prompts:

- ``teacher_nll``: the teacher's mean per-token negative log-likelihood of the model's own samples (every seed's
  responses, end-of-sequence included where a response ended). Low = precision: the model stays where the teacher
  puts its mass, away from the teacher's low-probability regions.
- ``student_nll_on_teacher``: the model's mean per-token negative log-likelihood of the teacher's samples (one
  response per prompt, the first seed, the same sampling). Low = coverage of what the teacher says.
- ``rkl_own_samples``: KL(q ‖ p) per token, exactly over the vocabulary, along the model's own samples: the
  quantity MiniLLM minimises.
- ``fkl_teacher_samples``: KL(p ‖ q) per token along the teacher's samples: what word-level KD minimises.
- ``teacher_mean_new_tokens``: the teacher samples' mean length (the model's own is ``mean_new_tokens``).

Per-token means weigh every token equally (Σ over all tokens / their number), as the validation loss does. The
teacher's samples depend only on the teacher, the prompts, the seed and the sampling, so they are drawn once per
suite and shared by every model of an evaluation.
"""

from __future__ import annotations

from typing import Sequence

KEYS = ("teacher_nll", "student_nll_on_teacher", "rkl_own_samples", "fkl_teacher_samples", "teacher_mean_new_tokens")

_TEACHER_SAMPLES: dict = {}     # (id(teacher), prompts, seed, sampling) -> [response ids], across the models


def mode_seeking_metrics(ctx, examples: Sequence, by_seed: dict) -> dict:
    """The measures of the module docstring for ``ctx.model`` against ``ctx.teacher()``; ``by_seed`` are the
    model's sampled records (``protocol.sample``: each with ``index``, ``token_ids`` and ``finished``)."""
    from ..data.tokenization import tokenize_prompts

    teacher = ctx.teacher()
    prompt_ids, kept, _ = tokenize_prompts(examples, ctx.tokenizer, prompt_format=ctx.prompt_format,
                                           add_bos=ctx.add_bos, max_prompt_tokens=ctx.max_prompt_tokens)
    prompt_of = dict(zip(kept, prompt_ids))
    eos = ctx.tokenizer.eos_token_id
    own = [(prompt_of[r["index"]], list(r["token_ids"]) + ([eos] if r["finished"] else []))
           for seed in sorted(by_seed) for r in by_seed[seed]]
    teacher_nll, rkl = _per_token(ctx, scorer=teacher, other=ctx.model, pairs=own, divergence="rkl")
    responses = _teacher_samples(ctx, teacher, prompt_ids, min(by_seed))
    theirs = list(zip(prompt_ids, responses))
    student_nll, fkl = _per_token(ctx, scorer=ctx.model, other=teacher, pairs=theirs, divergence="fkl")
    lengths = [len(r) for r in responses]
    return {
        "teacher_nll": teacher_nll, "student_nll_on_teacher": student_nll, "rkl_own_samples": rkl,
        "fkl_teacher_samples": fkl, "teacher_mean_new_tokens": sum(lengths) / max(len(lengths), 1),
    }


def _teacher_samples(ctx, teacher, prompt_ids, seed: int) -> list:
    """One teacher response per prompt (ids, end-of-sequence included where it ended), drawn once per suite."""
    from ..models.generation import generate

    key = (id(teacher), tuple(tuple(p) for p in prompt_ids), seed, repr(ctx.sampling))
    if key not in _TEACHER_SAMPLES:
        generations = generate(teacher, ctx.tokenizer, prompt_ids, ctx.sampling, seed=seed, batch_size=ctx.batch_size)
        eos = ctx.tokenizer.eos_token_id
        _TEACHER_SAMPLES[key] = [g.token_ids + ([eos] if g.finished else []) for g in generations]
    return _TEACHER_SAMPLES[key]


def _per_token(ctx, *, scorer, other, pairs, divergence: str) -> tuple:
    """(mean −log scorer(token), mean per-token divergence) over every response token of ``pairs``; the divergence
    is ``rkl`` = KL(other ‖ scorer) or ``fkl`` = KL(scorer ‖ other), always between the model (q) and the teacher
    (p), exactly over the shared vocabulary (``ctx.vocab_width``)."""
    import torch

    from ..data.batches import make_batch
    from ..losses.head import distill_loss, lm_loss
    from ..models.forward import forward_hidden, inference

    pairs = [(p, r) for p, r in pairs if r]
    nll = kl = tokens = 0.0
    pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else ctx.tokenizer.eos_token_id
    device = next(scorer.parameters()).device
    with inference(scorer, other), torch.no_grad():
        for start in range(0, len(pairs), ctx.batch_size):
            chunk = pairs[start:start + ctx.batch_size]
            batch = make_batch([p for p, _ in chunk], [r for _, r in chunk], pad).to(device)
            scored = forward_hidden(scorer, batch, ctx.vocab_width)
            compared = forward_hidden(other, batch.to(next(other.parameters()).device), ctx.vocab_width)
            nll += float(lm_loss(scored, batch.labels, batch.loss_mask, num_tokens=1))
            # rkl on the model's samples: the model is ``other``; fkl on the teacher's: the model is ``scorer``
            student, teacher = (compared, scored) if divergence == "rkl" else (scored, compared)
            kl += float(distill_loss(divergence, student, teacher, batch.loss_mask, num_tokens=1))
            tokens += batch.num_tokens
    return nll / max(tokens, 1.0), kl / max(tokens, 1.0)
