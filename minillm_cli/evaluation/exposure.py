"""Exposure bias as the excess accumulated error, ExAccErr (docs/method.md §4; MiniLLM, Gu et al. 2023,
Appendix B.5, eqs. 30-32, which follow Arora et al. 2022, "Why Exposure Bias Matters").

The per-token error at step t of a response is the teacher-student divergence over the full (shared)
vocabulary, computed exactly rather than sampled:

    e_t(y<t) = E_{y_t ~ p(.|y<t, x)} [log p(y_t|y<t, x) / q(y_t|y<t, x)] = KL(p || q)(. | y<t, x)

with p the teacher and q the student (``divergences.token_divergence("fkl", ...)``). The paper accumulates it
along prefixes drawn from the student (free running) and, as the reference point, from the teacher (oracle
prefixes):

    R(l)      = sum_{t<=l} E_{y<t ~ q(.|x)} [e_t(y<t)]          accumulated error, student prefixes
    eps(l)    = 1/l sum_{t<=l} E_{y<t ~ p(.|x)} [e_t(y<t)]      average per-step error, teacher prefixes
    ExAccErr(l) = (R(l) - l eps(l)) / (l eps(l)) x 100%

Normalisation used here. Both curves are reported as *per-step means*, as docs/method.md §4 words it:
``R[l-1] = 1/l sum_{t<=l} r_t`` and ``epsilon[l-1] = 1/l sum_{t<=l} e_t``, where r_t and e_t are the
per-position expectations (mean over prompts) with student and teacher prefixes. Dividing the paper's R(l) by
l changes nothing in the ratio: ExAccErr(l) = (R[l-1] - epsilon[l-1]) / epsilon[l-1] x 100 is exactly the
paper's value, and R and epsilon are directly comparable numbers (nats per token).

Each expectation over prefixes is estimated with ``samples`` sampled responses per prompt (the paper draws 10
per Dolly test prompt; the default is 1, one rollout per prompt and model), at the paper's decoding settings
(temperature 1, no top-k / top-p: pure sampling), drawn by ``rollout.sample_rollouts`` from q alone
(alpha 0) or p alone (alpha 1) over the shared vocabulary. Both runs use the same seed (common random
numbers): with identical models they draw identical prefixes, and for similar models the difference R - eps
has less noise. The errors are then computed by one teacher-forced forward pass of each model.

Responses that end early. A response that emits end-of-sequence at step n made n decisions: steps 1..n
count (the step that chose EOS included, its distribution is one the student had to match), later steps do not
exist. r_t is therefore the mean over the responses *still generating* at step t (the expectation conditioned
on the prefix existing), and the per-position counts are returned (``student_counts``, ``teacher_counts``).
When no response reaches step t (all ended earlier), r_t is undefined and that position is left out of the
mean: R[l-1] is the mean of r_t over the positions t <= l that at least one response reached (step 1 always
is). Whenever every position up to l is reached on both sides — the usual case with many prompts — this is
exactly the paper's formula above.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..errors import MinillmError

__all__ = ["exposure_bias", "per_token_errors"]

DIVERGENCE = "fkl"   # KL(p || q), p = teacher, q = student: the paper's per-step error
_ROWS = 64           # positions whose logits are computed at once


def _width(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise MinillmError("the tokenizer has neither a pad nor an end-of-sequence token; set eos_token")
    return pad


def per_token_errors(
    student,
    teacher,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    pad_id: int,
    vocab_width: Optional[int] = None,
    batch_size: int = 8,
) -> list[list[float]]:
    """KL(p || q) at every step of every response, under teacher forcing: ``result[i][t]`` is the error of the
    distributions that predict ``responses[i][t]`` given ``prompts[i] + responses[i][:t]``.

    Logits are computed only at those positions (gathered hidden states, not [B, L, V]) and trimmed to
    ``vocab_width``; the divergence runs in float32 (float64 for float64 models), see ``divergences``.
    """

    from ..data.batches import make_batch
    from ..losses.divergences import token_divergence
    from ..models.forward import forward_hidden, inference

    errors: list[list[float]] = []
    with inference(student, teacher):
        for start in range(0, len(prompts), batch_size):
            chunk_prompts = prompts[start:start + batch_size]
            chunk_responses = responses[start:start + batch_size]
            batch = make_batch(chunk_prompts, chunk_responses, pad_id)
            sides = []
            for model in (student, teacher):
                on_device = batch.to(next(model.parameters()).device)
                forward = forward_hidden(model, on_device, vocab_width)
                # Row-major gather: the rows come out sequence by sequence, step by step.
                sides.append((forward.hidden[on_device.loss_mask], forward.head))
            (student_rows, student_head), (teacher_rows, teacher_head) = sides
            values = []
            # _ROWS positions at a time: only [_ROWS, vocab] logits of each model exist at once, however
            # many positions the batch has (batch_size x max_len of them, times a vocabulary of up to 150k).
            for lo in range(0, student_rows.shape[0], _ROWS):
                student_logits = student_head(student_rows[lo:lo + _ROWS])
                teacher_logits = teacher_head(teacher_rows[lo:lo + _ROWS]).to(student_logits.device)
                values += token_divergence(DIVERGENCE, student_logits, teacher_logits).double().cpu().tolist()
            offset = 0
            for response in chunk_responses:
                errors.append(values[offset:offset + len(response)])
                offset += len(response)
    return errors


def _position_means(errors: list[list[float]], max_len: int) -> tuple[list, list[int]]:
    """Per-position mean error over the responses that reached each step (None where none did), and counts."""
    sums = [0.0] * max_len
    counts = [0] * max_len
    for row in errors:
        for t, value in enumerate(row[:max_len]):
            sums[t] += value
            counts[t] += 1
    means = [s / c if c else None for s, c in zip(sums, counts)]
    return means, counts


def _running_mean(values: list) -> list[float]:
    """Mean of the defined values among the first l, for every l (step 1 is always defined)."""
    total, defined, out = 0.0, 0, []
    for value in values:
        if value is not None:
            total += value
            defined += 1
        out.append(total / defined if defined else float("nan"))
    return out


def _excess(r: float, eps: float) -> Optional[float]:
    """(R - eps) / eps x 100; 0 when both are 0 (the student is the teacher), None when only eps is 0."""
    if eps > 0:
        return (r - eps) / eps * 100.0
    return 0.0 if r == eps else None


def exposure_bias(
    student,
    teacher,
    tokenizer,
    prompts: list[list[int]],
    *,
    max_len: int = 64,
    seed: int = 0,
    vocab_width: int | None = None,
    batch_size: int = 8,
    samples: int = 1,
) -> dict:
    """ExAccErr(l) for l = 1..max_len (see the module docstring for the exact definitions).

    ``prompts`` are token ids as the models see them (BOS included where the family needs it); ``samples``
    responses are drawn per prompt from each model (the paper: 10). Returns
    ``lengths`` [1..max_len], ``R`` and ``epsilon`` (per-step mean errors, nats per token), ``exaccerr`` (%;
    None where epsilon is 0 but R is not), ``exaccerr_at_16`` (None when max_len < 16), ``num_prompts``,
    ``student_counts`` / ``teacher_counts`` (responses still generating at each step), and
    ``student_step_error`` / ``teacher_step_error`` (the per-position means r_t and e_t; None where no response
    reached the step).
    """
    from ..models.generation import SamplingConfig
    from ..training.rollout import sample_rollouts

    if not prompts:
        raise MinillmError("exposure bias needs at least one prompt")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise MinillmError(f"max_len must be a positive number of tokens, got {max_len!r}")
    if batch_size < 1:
        raise MinillmError(f"batch size must be >= 1, got {batch_size}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise MinillmError(f"samples (responses per prompt) must be a positive integer, got {samples!r}")
    widths = (_width(student), _width(teacher))
    if vocab_width is None and widths[0] != widths[1]:
        raise MinillmError(
            f"student has {widths[0]} logits and teacher {widths[1]}; pass vocab_width (the shared vocabulary, "
            "see vocab.check_vocab) to compare them over the shared tokens"
        )
    pad = _pad_id(tokenizer)
    # The paper's decoding (docs/method.md §4): temperature 1, top_k 0, top_p 1. No n-gram blocking: the prefixes
    # must be samples of q and p themselves for the expectations to be the paper's.
    sampling = SamplingConfig(max_new_tokens=max_len)
    # Copies of a prompt sit side by side, so they share batches and draw independent responses.
    starts = [list(prompt) for prompt in prompts for _ in range(samples)]
    runs = {}
    for side, alpha in (("student", 0.0), ("teacher", 1.0)):
        rollouts = sample_rollouts(
            student, teacher, tokenizer, starts, sampling,
            alpha=alpha, seed=seed, batch_size=batch_size, vocab_width=vocab_width,
        )
        errors = per_token_errors(
            student, teacher, rollouts.prompts, rollouts.responses,
            pad_id=pad, vocab_width=vocab_width, batch_size=batch_size,
        )
        runs[side] = _position_means(errors, max_len)
    (student_steps, student_counts), (teacher_steps, teacher_counts) = runs["student"], runs["teacher"]
    r = _running_mean(student_steps)
    eps = _running_mean(teacher_steps)
    exaccerr = [_excess(a, b) for a, b in zip(r, eps)]
    return {
        "lengths": list(range(1, max_len + 1)),
        "R": r,
        "epsilon": eps,
        "exaccerr": exaccerr,
        "exaccerr_at_16": exaccerr[15] if max_len >= 16 else None,
        "num_prompts": len(prompts),
        "samples_per_prompt": samples,
        "student_counts": student_counts,
        "teacher_counts": teacher_counts,
        "student_step_error": student_steps,
        "teacher_step_error": teacher_steps,
        "divergence": "KL(teacher || student)",
    }
