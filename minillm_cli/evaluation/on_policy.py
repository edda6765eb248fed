"""Reverse KL on the student's own samples: the quantity MiniLLM minimises (docs/method.md §1), on held-out prompts."""

from __future__ import annotations

from typing import Optional, Sequence

# A fixed seed of its own: every validation of a run samples with the same stream (before and after compare the
# same kind of draw), and the training run's random streams are never touched.
VALIDATION_SEED = 1234


def reverse_kl_on_own_samples(student, teacher, tokenizer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                              vocab_width: Optional[int], batch_size: int, chunk_tokens: Optional[int] = None) -> float:
    """Mean over the sampled tokens of KL(q_θ(·|y_<t) ‖ p(·|y_<t)), exactly over the vocabulary, where each
    response y is sampled from the student alone at temperature 1 (the paper's sampling) for its prompt: per
    token, the reverse KL of the two next-token distributions along the student's own trajectories. The teacher's
    states come from the sampler's own teacher pass (``rollout.Rollouts.teacher_hidden``)."""
    import torch

    from ..losses.head import distill_loss
    from ..models.forward import Forward, forward_hidden, output_head
    from ..models.generation import SamplingConfig
    from ..training.rollout import sample_rollouts

    rollouts = sample_rollouts(student, teacher, tokenizer, prompts, SamplingConfig(max_new_tokens=max_new_tokens),
                               alpha=0.0, seed=VALIDATION_SEED, batch_size=batch_size, vocab_width=vocab_width)
    device = next(student.parameters()).device
    total = tokens = 0.0
    with torch.no_grad():
        for start in range(0, len(rollouts), batch_size):
            part = rollouts.slice(start, start + batch_size)
            batch = part.to_batch(tokenizer.pad_token_id).to(device)
            if not batch.num_tokens:
                continue
            student_pass = forward_hidden(student, batch, vocab_width)
            teacher_pass = Forward(batch.extras["teacher_hidden"], output_head(teacher, vocab_width))
            total += float(distill_loss("rkl", student_pass, teacher_pass, batch.loss_mask, num_tokens=1,
                                        chunk_tokens=chunk_tokens))
            tokens += batch.num_tokens
    return total / max(tokens, 1.0)
