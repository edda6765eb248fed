"""Forward passes that stop before the vocabulary projection.

Objectives receive final hidden states and the projection as a function, so losses can be computed in
chunks of tokens without ever materialising full [batch, length, vocab] logits (see ``losses``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only where tensors are made, to keep start-up fast
    import torch

import contextlib
from dataclasses import dataclass
from typing import Callable


@dataclass
class Forward:
    hidden: "torch.Tensor"                              # [B, L, H] final hidden states
    head: Callable[["torch.Tensor"], "torch.Tensor"]    # hidden [..., H] -> logits [..., width]

    def logits(self):
        """Full logits; fine for small vocabularies and tests, avoided by the chunked losses."""
        return self.head(self.hidden)


def output_head(model, width: int | None = None) -> Callable:
    """The model's hidden -> logits map, trimmed to ``width`` entries (the shared vocabulary)."""
    import torch

    projection = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)

    def head(hidden):
        logits = projection(hidden)
        if cap:  # Gemma 2 soft-caps its logits after the projection
            logits = torch.tanh(logits / cap) * cap
        return logits[..., :width] if width is not None and width < logits.shape[-1] else logits

    head.parameters = tuple(projection.parameters())  # what the fused chunked losses differentiate (losses.fused)
    return head


def forward_hidden(model, batch, width: int | None = None) -> Forward:
    """Run the model's body on a batch; padding-invariant because the batch carries position ids."""
    output = model.base_model(**batch.model_inputs(), use_cache=False)
    return Forward(output.last_hidden_state, output_head(model, width))


@contextlib.contextmanager
def inference(*models):
    """Eval mode and ``torch.inference_mode`` for these models; each one's training flag is restored after."""
    import torch

    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)
