"""How many token positions the teacher computed during training: the second unit of a distillation budget.

Wall time depends on the machine; teacher-forward tokens do not, and they are what an objective's use of the
teacher costs (KD scores every gold token once, GKD also its on-policy samples, MiniLLM every rollout token,
catch-up passes and decoding steps alike). Counted at the teacher's input embedding, which every forward pass
goes through whatever entry point ran it, as the positions of the input (padding included: it was computed).
A served or cached teacher computes nothing here and counts 0.
"""

from __future__ import annotations


class TeacherTokenCounter:
    def __init__(self, teacher):
        self._count = 0
        self._handle = None
        embeddings = getattr(teacher, "get_input_embeddings", lambda: None)() if teacher is not None else None
        if embeddings is not None:
            self._handle = embeddings.register_forward_hook(self._add)

    def _add(self, module, inputs, output) -> None:
        if inputs and hasattr(inputs[0], "numel"):
            self._count += int(inputs[0].numel())

    def take(self) -> int:
        """The positions counted since the last call (and start counting afresh)."""
        count, self._count = self._count, 0
        return count
