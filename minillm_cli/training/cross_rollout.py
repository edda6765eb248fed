"""MiniLLM's rollouts across tokenizers: the student samples alone (α = 0), the teacher scores the text.

The long-term reward of MiniLLM is about text: Σ_t r_t = log p(y | x) − log q(y | x) (docs/method.md §1). Across
tokenizers the teacher's log-probability of the student's sampled response is computed by writing prompt and
response as text, tokenising them for the teacher, and one teacher forward pass; its per-token log-probabilities
are given to the student's tokens by the alignment of ``models.alignment``:

- a matched token (the same token on both sides, after the same text) gets the teacher's log-probability of it;
- a span (text the two tokenise differently) gives the sum of its teacher tokens' log-probabilities to its last
  student token (the one that completes the span's text) and 0 to the others;
- teacher tokens after the last common end (text one side has not finished) go to the last student token.

So the per-token teacher log-probabilities of a response sum to the teacher's log-probability of the whole
response, and a row's return is the text-level reward. Teacher-mixed sampling has no meaning across tokenizers
(the two next-token distributions share no vocabulary), so the rollouts are the student's own: α = 0, every
importance weight exactly 1 (``mixed_logprobs`` = ``old_logprobs``, the unfiltered student log-probabilities, as
``training.rollout`` records them).
"""

from __future__ import annotations

from typing import Sequence


def sample_cross_tokenizer_rollouts(student, cross_teacher, tokenizer, prompts: Sequence, sampling, *, seed: int,
                                    batch_size: int, vocab_width: int):
    """``training.rollout.Rollouts`` of the student's own samples for ``prompts``, with text-aligned teacher
    log-probabilities (module docstring)."""
    from ..data.batches import make_batch
    from ..losses.aligned import token_logprob
    from ..models.forward import forward_hidden, inference
    from ..models.generation import generate
    from .rollout import Rollouts

    eos = tokenizer.eos_token_id
    generations = generate(student, tokenizer, prompts, sampling, seed=seed, batch_size=batch_size)
    responses = [list(g.token_ids) + ([eos] if g.finished else []) for g in generations]
    prompts = [list(p) for p in prompts]
    rollouts = Rollouts([], [], [], [], [], [], alpha=0.0, teacher_hidden=None)
    device = next(student.parameters()).device
    batch = make_batch(prompts, responses, tokenizer.pad_token_id).to(device)
    with inference(student):
        forward = forward_hidden(student, batch, vocab_width)
        rows = token_logprob(forward.head(forward.hidden[batch.loss_mask]), batch.labels[batch.loss_mask])
    old = _per_example(rows.float().cpu().tolist(), batch.loss_mask.sum(1).tolist())
    teacher = cross_teacher.response_logprobs(prompts, responses, device=device)
    rollouts.add(prompts, responses, old, teacher, old, [g.finished for g in generations])
    return rollouts


def _per_example(values: list, counts: list) -> list:
    out, start = [], 0
    for count in counts:
        out.append(values[start:start + count])
        start += count
    return out


def assign_to_student_tokens(groups, student_length: int, teacher_logprobs: Sequence[float], matched) -> list:
    """Per student token, its share of the teacher's log-probabilities (module docstring). ``matched(group)`` says
    whether a group is a matched token."""
    assigned = [0.0] * student_length
    covered = 0
    for group in groups:
        total = sum(teacher_logprobs[j] for j in group.teacher)
        target = group.student[0] if matched(group) else group.student[-1]
        assigned[target] += total
        covered = max(covered, group.teacher[-1] + 1)
    if student_length and covered < len(teacher_logprobs):
        assigned[-1] += sum(teacher_logprobs[covered:])
    return assigned
