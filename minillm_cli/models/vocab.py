"""Teacher and student must score the same tokens: check their vocabularies before any forward pass.

Token-level distillation compares two distributions entry by entry, so entry i must be the same token in
both models. Three cases:
- identical tokenizers and logit widths: fine;
- tokenizers that agree on a shared prefix of ids, but different logit widths or added tokens (Qwen2.5 pads
  its embedding to 152064 rows at 7B and 151936 at 0.5B for the same 151665 tokens): the extra rows are
  padding or tokens one side lacks, and logits can be trimmed to the shared vocabulary on request;
- different tokenizers: comparing logits entry by entry is meaningless and no trimming helps; with
  ``cross_tokenizer`` (``--cross-tokenizer``) the two tokenisations of the same text are aligned by character
  offsets instead (``crosstok``, docs/cross-tokenizer.md), and every width is each model's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MinillmError


@dataclass(frozen=True)
class VocabCheck:
    width: int          # number of logits both sides use (trimmed or not)
    trimmed: bool
    teacher_width: int
    student_width: int
    shared_tokens: int  # ids on which both tokenizers agree
    cross_tokenizer: bool = False   # aligned by text (crosstok), not compared id by id


def _id_to_token(tokenizer) -> dict[int, str]:
    return {index: token for token, index in tokenizer.get_vocab().items()}


def shared_prefix(teacher_tokenizer, student_tokenizer) -> int:
    """The number n such that ids 0..n-1 are the same tokens in both tokenizers."""
    teacher, student = _id_to_token(teacher_tokenizer), _id_to_token(student_tokenizer)
    n = 0
    limit = min(len(teacher_tokenizer), len(student_tokenizer))
    while n < limit and teacher.get(n) == student.get(n):
        n += 1
    return n


def check_vocab(teacher_tokenizer, student_tokenizer, teacher_width: int, student_width: int, trim: bool = False,
                cross_tokenizer: bool = False) -> VocabCheck:
    """The logit width to distil over, or a MinillmError that explains the mismatch and the fix.

    With ``cross_tokenizer`` any two tokenizers pass (even equal ones: the aligned path then reproduces the
    same-tokenizer losses, which tests check); the width is the student's own."""
    teacher_len, student_len = len(teacher_tokenizer), len(student_tokenizer)
    shared = shared_prefix(teacher_tokenizer, student_tokenizer)
    if cross_tokenizer:
        return VocabCheck(student_width, False, teacher_width, student_width, shared, cross_tokenizer=True)
    if shared < min(teacher_len, student_len):
        teacher_tokens, student_tokens = _id_to_token(teacher_tokenizer), _id_to_token(student_tokenizer)
        raise MinillmError(
            f"teacher and student tokenizers differ (teacher {teacher_len} tokens, student {student_len}; "
            f"id {shared} is {teacher_tokens.get(shared)!r} in the teacher but {student_tokens.get(shared)!r} "
            "in the student): token-level distillation compares the two models' distributions over the same "
            "vocabulary; pass --cross-tokenizer (recipe: cross_tokenizer: true) to align them by text instead "
            "(docs/cross-tokenizer.md), or choose a student with the teacher's tokenizer (the same model family)"
        )
    same = teacher_len == student_len and teacher_width == student_width
    if same:
        return VocabCheck(teacher_width, False, teacher_width, student_width, shared)
    if shared > min(teacher_width, student_width):
        raise MinillmError(
            f"a tokenizer has more tokens ({shared}) than a model has logits (teacher {teacher_width}, "
            f"student {student_width}); the model and tokenizer directories do not belong together"
        )
    if not trim:
        if teacher_len == student_len:
            why = (
                f"both tokenizers have the same {teacher_len} tokens, but the teacher has {teacher_width} logits "
                f"and the student {student_width}: the extra rows are vocabulary padding that no token uses"
            )
        else:
            why = (
                f"the tokenizers agree on the first {shared} tokens, but the teacher has {teacher_len} tokens "
                f"({teacher_width} logits) and the student {student_len} ({student_width} logits)"
            )
        raise MinillmError(
            f"teacher and student vocabularies differ in size: {why}; pass --trim-vocab (recipe: "
            f"trim_vocab: true) to distil over the {shared} shared tokens"
        )
    return VocabCheck(shared, True, teacher_width, student_width, shared)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the id → token map and the end-of-sequence id: equal fingerprints tokenise text to equal ids
    (what a served teacher and a local student compare before a run, ``serving.teacher``)."""
    import hashlib
    import json

    vocab = sorted((index, token) for token, index in tokenizer.get_vocab().items())
    material = json.dumps({"vocab": vocab, "eos": tokenizer.eos_token_id}, ensure_ascii=False)
    return hashlib.sha256(material.encode()).hexdigest()
