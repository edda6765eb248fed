"""Token batches: prompt + response sequences with the mask of tokens a loss counts.

Convention, used by every objective: position t's logits predict token t+1, so ``labels[:, t]`` is
``input_ids[:, t + 1]`` and ``loss_mask[:, t]`` is true exactly when token t+1 is a response token.
Position ids come from the attention mask, so left and right padding give the same logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only where tensors are made, to keep start-up fast
    import torch

from dataclasses import dataclass, field, replace
from typing import Sequence


@dataclass
class Batch:
    input_ids: "torch.Tensor"        # [B, L] long
    attention_mask: "torch.Tensor"   # [B, L] long, 1 on real tokens
    position_ids: "torch.Tensor"     # [B, L] long
    labels: "torch.Tensor"           # [B, L] long, the next token (pad id where there is none)
    loss_mask: "torch.Tensor"        # [B, L] bool, true where the next token is a response token
    prompts: list[list[int]]         # unpadded prompt ids, for sampling new responses
    responses: list[list[int]]       # unpadded response ids
    source: str = "gold"             # gold | student | teacher: who wrote the responses
    extras: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        """Response tokens counted by a per-token loss."""
        return int(self.loss_mask.sum())

    def to(self, device) -> "Batch":
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            position_ids=self.position_ids.to(device),
            labels=self.labels.to(device),
            loss_mask=self.loss_mask.to(device),
            extras={k: v.to(device) if hasattr(v, "to") else v for k, v in self.extras.items()},
        )

    def model_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


def make_batch(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    padding_side: str = "right",
    source: str = "gold",
) -> Batch:
    """Pad prompt+response sequences into a Batch (right padding for training by default)."""
    import torch

    if len(prompts) != len(responses) or not prompts:
        raise ValueError("a batch needs as many responses as prompts, and at least one")
    sequences = [list(p) + list(r) for p, r in zip(prompts, responses)]
    length = max(len(s) for s in sequences)
    size = len(sequences)
    input_ids = torch.full((size, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((size, length), dtype=torch.long)
    is_response = torch.zeros((size, length), dtype=torch.bool)
    for row, (prompt, sequence) in enumerate(zip(prompts, sequences)):
        start = 0 if padding_side == "right" else length - len(sequence)
        input_ids[row, start:start + len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, start:start + len(sequence)] = 1
        is_response[row, start + len(prompt):start + len(sequence)] = True
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    labels = torch.full_like(input_ids, pad_id)
    labels[:, :-1] = input_ids[:, 1:]
    loss_mask = torch.zeros_like(is_response)
    loss_mask[:, :-1] = is_response[:, 1:]
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        labels=labels,
        loss_mask=loss_mask,
        prompts=[list(p) for p in prompts],
        responses=[list(r) for r in responses],
        source=source,
        extras={"pad_id": pad_id},
    )
