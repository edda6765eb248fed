"""The teacher of a cross-tokenizer run: each student batch written for it as text, run, and aligned token by token.

It stands where the offline cache and the served teacher stand (``Engine.teacher_forward`` returns
``for_batch(batch)``): the student's prompt and response ids are decoded to text, tokenised for the teacher
(``models.alignment.Aligner``), run through the teacher, and returned as a ``losses.aligned.AlignedTeacher`` whose
``distill_loss`` compares matched tokens on the shared vocabulary and the other spans by their probabilities
(docs/cross-tokenizer.md).
"""

from __future__ import annotations

from ..errors import MinillmError

# Objectives whose needs the aligned teacher cannot meet, and why (docs/cross-tokenizer.md).
UNSUPPORTED_NEEDS = {
    "teacher_samples": "the teacher's samples are token ids of its own vocabulary, which the student cannot train "
                       "on; write them as text with `minillm generate --model TEACHER` and train on that file, or "
                       "use seqkd (its responses travel as text)",
    "mixed_samples": "teacher-mixed sampling draws every token from a mixture of the two models' next-token "
                     "distributions, which have no common vocabulary across tokenizers",
}


def check_objective(objective) -> None:
    """A MinillmError naming the objective's first need the aligned teacher cannot meet, with the reason. MiniLLM
    trains across tokenizers on the student's own samples with text-aligned rewards (``training.cross_rollout``):
    α = 0 and no single-step term, whose exact reverse KL at every token needs one vocabulary."""
    if objective.name == "minillm":
        options = objective.options
        if options.alpha > 0:
            raise MinillmError(
                f"minillm across tokenizers samples from the student alone: {UNSUPPORTED_NEEDS['mixed_samples']}; "
                "set objective.alpha=0 (the rewards still come from the teacher's log-probability of the text)")
        if options.single_step:
            raise MinillmError(
                "minillm across tokenizers has no single-step term: it is the exact reverse KL over one vocabulary "
                "at every student token; set objective.single_step=false (the returns then include each token's "
                "own reward, docs/cross-tokenizer.md)")
        return
    for need, why in UNSUPPORTED_NEEDS.items():
        if need in objective.needs:
            hint = " (set objective.seq_kd=false)" if objective.name == "gkd" else ""
            raise MinillmError(
                f"objective '{objective.name}' needs {need}, which --cross-tokenizer cannot give: {why}{hint}; "
                "kd, rkl, tvd, gkd, distillm, seqkd and minillm (alpha 0) train across tokenizers")


class CrossTokenizerTeacher:
    """A loaded teacher with a tokenizer of its own, and the aligner between its tokens and the student's."""

    def __init__(self, model, aligner, *, width: int, student_width: int):
        import torch

        self.model, self.aligner, self.width = model, aligner, width
        pad = aligner.teacher.pad_token_id
        self.pad_id = aligner.teacher.eos_token_id if pad is None else pad
        shared = aligner.shared
        keep = [i for i, (s, t) in enumerate(zip(shared.student_ids, shared.teacher_ids)) if s < student_width and t < width]
        if not keep:
            raise MinillmError("the teacher's and the student's vocabularies share no token; --cross-tokenizer "
                               "compares the tokens both can write")
        self.shared_student = torch.tensor([shared.student_ids[i] for i in keep], dtype=torch.long)
        self.shared_teacher = torch.tensor([shared.teacher_ids[i] for i in keep], dtype=torch.long)
        self.teacher_of = {shared.student_ids[i]: shared.teacher_ids[i] for i in keep}

    def run(self, prompts, responses, device):
        """(the aligned examples, the teacher's batch of them, the teacher's forward pass over it)."""
        import torch

        from ..data.batches import make_batch
        from ..models.forward import forward_hidden

        if next(self.model.parameters()).device != device:
            self.model.to(device)
        examples = [self.aligner.align(p, r) for p, r in zip(prompts, responses)]
        teacher_batch = make_batch([e.teacher_prompt for e in examples], [e.teacher_response for e in examples],
                                   self.pad_id).to(device)
        with torch.inference_mode():
            forward = forward_hidden(self.model, teacher_batch, self.width)
        return examples, teacher_batch, forward

    def matched(self, group, response, teacher_response) -> bool:
        """Whether a group is one token on each side, the same token of the shared vocabulary."""
        return (len(group.student) == len(group.teacher) == 1
                and self.teacher_of.get(response[group.student[0]]) == teacher_response[group.teacher[0]])

    def response_logprobs(self, prompts, responses, *, device, chunk_tokens: int = 1024) -> list:
        """Per student response token, the teacher's log-probabilities given to it by the alignment, so that each
        response's sum is the teacher's log-probability of its text (``training.cross_rollout``)."""
        import torch

        from ..losses.aligned import token_logprob
        from ..losses.chunks import chunk_bounds
        from .cross_rollout import assign_to_student_tokens

        examples, teacher_batch, forward = self.run(prompts, responses, device)
        rows = forward.hidden[teacher_batch.loss_mask]
        targets = teacher_batch.labels[teacher_batch.loss_mask]
        with torch.inference_mode():
            values = torch.cat([token_logprob(forward.head(rows[a:b]), targets[a:b]).float()
                                for a, b in chunk_bounds(rows.shape[0], chunk_tokens)]).cpu().tolist()
        result, start = [], 0
        for example, response, count in zip(examples, responses, teacher_batch.loss_mask.sum(1).tolist()):
            teacher = [0.0] * (len(example.teacher_response) - count) + values[start:start + count]
            start += count
            result.append(assign_to_student_tokens(
                example.groups, len(response), teacher,
                lambda group, r=response, t=example.teacher_response: self.matched(group, r, t)))
        return result

    def for_batch(self, batch):
        """The teacher's side of a student batch, aligned (``losses.aligned.AlignedTeacher``): the matched rows, the
        spans and the teacher's chain-rule log-probability of each span."""
        import torch

        from ..losses.aligned import AlignedTeacher, token_logprob

        device = batch.input_ids.device
        examples, teacher_batch, forward = self.run(batch.prompts, batch.responses, device)
        teacher_rows = forward.hidden[teacher_batch.loss_mask]
        teacher_targets = teacher_batch.labels[teacher_batch.loss_mask]
        plan = _Plan()
        student_rows = batch.loss_mask.sum(1).tolist()
        teacher_counts = teacher_batch.loss_mask.sum(1).tolist()
        student_start = teacher_start = 0
        for index, example in enumerate(examples):
            response = batch.responses[index]
            # Rows of response positions: a response token at position 0 of a sequence has none (no prompt).
            student_row = _rows(student_start, len(response), student_rows[index])
            teacher_row = _rows(teacher_start, len(example.teacher_response), teacher_counts[index])
            for group in example.groups:
                s_rows = [student_row[k] for k in group.student]
                t_rows = [teacher_row[k] for k in group.teacher]
                if None in s_rows or None in t_rows:
                    continue
                if self.matched(group, response, example.teacher_response):
                    plan.matched_student.append(s_rows[0])
                    plan.matched_teacher.append(t_rows[0])
                else:
                    plan.add_span(s_rows, t_rows)
            student_start += student_rows[index]
            teacher_start += teacher_counts[index]
        span_teacher = torch.zeros(len(plan.span_weight), dtype=torch.float32, device=device)
        if plan.span_teacher_rows:
            rows = torch.tensor(plan.span_teacher_rows, dtype=torch.long, device=device)
            with torch.inference_mode():
                logprobs = token_logprob(forward.head(teacher_rows[rows]), teacher_targets[rows]).float()
            span_teacher = span_teacher.index_add(0, torch.tensor(plan.span_of_teacher_row, device=device), logprobs)

        def longs(values):
            return torch.tensor(values, dtype=torch.long, device=device)

        return AlignedTeacher(
            teacher_rows=teacher_rows, teacher_head=forward.head,
            student_targets=batch.labels[batch.loss_mask],
            matched_student=longs(plan.matched_student), matched_teacher=longs(plan.matched_teacher),
            span_student=longs(plan.span_student), span_of_row=longs(plan.span_of_student_row),
            span_teacher_logprob=span_teacher.clone(),
            span_weight=torch.tensor(plan.span_weight, dtype=torch.float32, device=device),
            shared_student=self.shared_student.to(device), shared_teacher=self.shared_teacher.to(device),
        )


def _rows(start: int, length: int, count: int) -> list:
    """The loss row of each response position (None for the positions nothing predicts)."""
    missing = length - count
    return [None if k < missing else start + k - missing for k in range(length)]


class _Plan:
    """The matched rows and spans of a batch, collected example by example."""

    def __init__(self):
        self.matched_student: list = []
        self.matched_teacher: list = []
        self.span_student: list = []
        self.span_of_student_row: list = []
        self.span_teacher_rows: list = []
        self.span_of_teacher_row: list = []
        self.span_weight: list = []

    def add_span(self, student_rows: list, teacher_rows: list) -> None:
        span = len(self.span_weight)
        self.span_student += student_rows
        self.span_of_student_row += [span] * len(student_rows)
        self.span_teacher_rows += teacher_rows
        self.span_of_teacher_row += [span] * len(teacher_rows)
        self.span_weight.append(float(len(student_rows)))
