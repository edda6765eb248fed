"""The token-level loss between a student and a teacher of another tokenizer, over aligned tokens (docs/cross-tokenizer.md).

The two tokenisations of the same text are aligned into groups (``models.alignment``). Two kinds of term:

- a *matched* token (one token on each side, the same token in both vocabularies, read after the same text):
  D(Q ‖ P) between the two next-token distributions restricted to the shared vocabulary S and renormalised,
  q(v | S) = q(v) / Σ_{u ∈ S} q(u), and likewise p: what both models predict, conditioned on the next token
  being one both can write. With identical tokenizers S is the whole vocabulary and this is the ordinary loss;
- a *span* (any other group: text the two tokenise differently): each model's probability of the span's text
  by the chain rule, q(span) = Π_i q(s_i | ·) over its student tokens and p(span) = Π_j p(t_j | ·) over its
  teacher tokens, and D between the two-outcome distributions (the span, anything else), weighted by the
  number of student tokens in the span so that every student token counts once.

The divergence D is any of ``divergences.DIVERGENCES`` (fkl, rkl, jsd, tvd, skl, srkl), on both kinds of term.
The sum is divided by ``num_tokens`` (the step's student tokens), as every loss in ``losses``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .chunks import checkpointed, chunk_bounds, per_token_denominator

SPAN_CERTAINTY = -1e-7   # log-probabilities are capped here so that log(1 − q) of a span stays finite


@dataclass
class AlignedTeacher:
    """The teacher's side of one batch, aligned with the student's loss tokens (rows of ``hidden[loss_mask]``)."""

    teacher_rows: "object"           # [M, H] the teacher's final hidden states at its loss tokens
    teacher_head: "object"           # hidden → the teacher's logits
    student_targets: "object"        # [N] long: the student's token at each loss row
    matched_student: "object"        # [A] long: student rows of matched tokens
    matched_teacher: "object"        # [A] long: the teacher rows they are matched with
    span_student: "object"           # [B] long: student rows inside spans
    span_of_row: "object"            # [B] long: the span of each
    span_teacher_logprob: "object"   # [G] float32: log p(span) by the chain rule
    span_weight: "object"            # [G] float32: student tokens per span
    shared_student: "object"         # [K] long: shared vocabulary, student ids
    shared_teacher: "object"         # [K] long: the same tokens, teacher ids

    def distill_loss(self, divergence: str, student, mask, *, num_tokens=None, chunk_tokens=None, **options):
        """Σ of the matched and span terms (module docstring) / num_tokens."""
        import torch

        from .divergences import DIVERGENCES

        try:
            kernel = DIVERGENCES[divergence]
        except KeyError:
            from ..errors import unknown_name

            raise unknown_name("divergence", divergence, DIVERGENCES) from None
        rows = student.hidden[mask.bool()]
        total = rows.new_zeros((), dtype=torch.float32)

        def matched_chunk(student_chunk, teacher_chunk):
            student_logits = student.head(student_chunk)
            with torch.no_grad():
                teacher_logits = self.teacher_head(teacher_chunk)
            return kernel(shared_logprobs(student_logits, self.shared_student),
                          shared_logprobs(teacher_logits, self.shared_teacher), **options).sum()

        for start, end in chunk_bounds(self.matched_student.numel(), chunk_tokens):
            total = total + checkpointed(matched_chunk, rows[self.matched_student[start:end]],
                                         self.teacher_rows[self.matched_teacher[start:end]])
        if self.span_weight.numel():
            token_logprobs = [
                checkpointed(lambda chunk, targets: token_logprob(student.head(chunk), targets),
                             rows[self.span_student[start:end]], self.student_targets[self.span_student[start:end]])
                for start, end in chunk_bounds(self.span_student.numel(), chunk_tokens)
            ]
            span_student = torch.cat(token_logprobs).new_zeros(self.span_weight.shape).index_add(
                0, self.span_of_row, torch.cat(token_logprobs))
            terms = kernel(two_outcomes(span_student), two_outcomes(self.span_teacher_logprob.to(span_student)), **options)
            total = total + (terms * self.span_weight.to(terms)).sum()
        return total / per_token_denominator(num_tokens, rows.shape[0])


def shared_logprobs(logits, shared_ids):
    """log q(v | the next token is in the shared vocabulary), for v in ``shared_ids`` (float32 at least)."""
    import torch

    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.log_softmax(logits.index_select(-1, shared_ids), dim=-1)


def token_logprob(logits, targets):
    """log q(target) per row (float32 at least)."""
    import torch

    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def two_outcomes(logprob):
    """[log q, log(1 − q)] per entry: the distribution of (this span, anything else), q capped below 1."""
    import torch

    capped = logprob.clamp(max=SPAN_CERTAINTY)
    # log(1 − e^x) in two ranges (Mächler 2012): expm1 near 0, log1p far from it; both stay finite here.
    rest = torch.where(capped > -0.6931471805599453, torch.log(-torch.expm1(capped)), torch.log1p(-torch.exp(capped)))
    return torch.stack([capped, rest], dim=-1)
