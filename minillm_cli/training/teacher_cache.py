"""Offline teacher logits: the teacher's top-k log-probabilities per response token, saved once, trained from.

``minillm generate --model TEACHER --out data.jsonl --save-logits 64`` runs the teacher over each
(prompt, response) pair, teacher-forced, and writes ``data.logits.safetensors`` beside the JSONL; a run with
``data.teacher_logits: data.logits.safetensors`` then trains kd, rkl, gkd (λ = 0) or distillm (off-policy) from
it without loading the teacher at all.

The approximation. For a response token with teacher distribution p and student distribution q over the
vocabulary V, let T = {v_1 … v_k} be the teacher's k most likely tokens and R = V \\ T the rest. Both
distributions are aggregated onto the same k + 1 buckets:

    P = (p(v_1), …, p(v_k), p(R)),   p(R) = 1 − Σ_i p(v_i)  (stored as log p(R) = logsumexp over R of log p)
    Q = (q(v_1), …, q(v_k), q(R)),   q(R) = Σ_{v ∈ R} q(v)    (computed exactly, as a logsumexp over R)

and the loss is the same divergence between P and Q (``divergences.DIVERGENCES``, any of them). For forward KL
the gap is exactly the divergence inside the rest bucket, weighted by its mass:

    KL(p ‖ q) − KL(P ‖ Q) = p(R) · KL(p(· | R) ‖ q(· | R))  ≥ 0,

so the cached loss never exceeds the full one and the two agree when the teacher's top k hold nearly all its
mass (the usual case for a trained teacher and k = 64). For reverse KL the gap is, symmetrically,
q(R) · KL(q(· | R) ‖ p(· | R)): the student's own mass outside the teacher's top k. It is large for a student far
from the teacher (a random initialisation spreads most of its mass there) and shrinks as the student learns, so
forward KL (kd) is the safest use and reverse-KL-like losses (rkl, srkl, jsd) are best started from an SFT'd
student (tests/test_teacher_cache.py measures both regimes). The gradient with respect to the student's logits is
Q − P on the top-k entries and q(v) · (1 − p(R)/q(R)) on each rest entry: the student's rest mass moves as a
whole, in proportion to its own distribution there. Values are stored in float16 (about three significant
digits of each log-probability); on loading, the k + 1 teacher buckets are renormalised to sum to one.

The file (safetensors; one row per response token, examples one after another):

- ``topk_ids`` int32 [R, k], ``topk_logprobs`` float16 [R, k] (descending), ``rest_logprob`` float16 [R];
- ``prompt_ids`` / ``response_ids`` int32: every example's token ids, concatenated; ``prompt_offsets`` /
  ``response_offsets`` int64 [E + 1] delimit example e (its rows are ``response_offsets[e] …
  response_offsets[e + 1]``, one per response token);
- metadata: format version, k, the teacher, its logit width, the prompt format.

Training finds each example's rows by its token ids (prompt and response, as ``data.tokenize_examples`` makes
them), so the order of the data, the train/validation split and ``data.limit`` do not matter, and a response cut
shorter by ``data.max_response_tokens`` uses the first rows of its entry. An example the file does not hold is an
error before the first step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from ..errors import MinillmError
from ..losses.cached import CachedTeacher

FORMAT_VERSION = "1"
SAMPLE_NEEDS = ("student_samples", "teacher_samples", "mixed_samples")


def logits_path(out: Path) -> Path:
    """Where ``minillm generate --save-logits`` puts the file for the JSONL ``out``: ``x.jsonl`` -> ``x.logits.safetensors``."""
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(stem + ".logits.safetensors")


# ---------------------------------------------------------------------------------------------------------------
# Making the file.


def compute_topk(
    model,
    examples: Sequence,
    k: int,
    *,
    pad_id: int,
    batch_size: int = 8,
    width: Optional[int] = None,
    chunk_tokens: int = 1024,
    on_batch: Optional[Callable[[int], None]] = None,
) -> dict:
    """Teacher-forced top-k log-probabilities for every response token of ``examples`` (``TokenizedExample``s).

    Returns the tensors of the file (see the module docstring), on the CPU.
    """
    import torch

    from ..data.batches import make_batch
    from ..models.forward import forward_hidden

    device = next(model.parameters()).device
    logit_width = width or model.get_output_embeddings().weight.shape[0]
    if not 0 < k < logit_width:
        raise MinillmError(f"--save-logits needs 0 < k < the model's {logit_width} logits, got {k}")
    ids, values, rests = [], [], []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            batch = make_batch([e.prompt_ids for e in chunk], [e.response_ids for e in chunk], pad_id).to(device)
            with torch.inference_mode():
                forward = forward_hidden(model, batch, logit_width)
                rows = forward.hidden[batch.loss_mask]            # row-major: example by example, token by token
                for a in range(0, rows.shape[0], chunk_tokens):
                    logprobs = torch.log_softmax(forward.head(rows[a:a + chunk_tokens]).float(), dim=-1)
                    top = logprobs.topk(k, dim=-1)
                    rest = torch.logsumexp(logprobs.scatter(-1, top.indices, float("-inf")), dim=-1)
                    ids.append(top.indices.to(torch.int32).cpu())
                    values.append(top.values.to(torch.float16).cpu())
                    rests.append(rest.to(torch.float16).cpu())
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        model.train(was_training)
    return file_tensors(examples, k, ids, values, rests)


def file_tensors(examples: Sequence, k: int, ids: list, values: list, rests: list) -> dict:
    """The file's tensors from the rows computed batch by batch (lists of [n, k] ids and log-probs, [n] rests, in
    example order) and the examples' token ids."""
    import torch

    def flat(lists):
        return torch.tensor([t for ids_ in lists for t in ids_], dtype=torch.int32)

    def offsets(lists):
        return torch.tensor([0] + [len(x) for x in lists], dtype=torch.int64).cumsum(0)

    prompts = [list(e.prompt_ids) for e in examples]
    responses = [list(e.response_ids) for e in examples]
    empty_ids, empty_values = torch.zeros((0, k), dtype=torch.int32), torch.zeros((0, k), dtype=torch.float16)
    return {
        "topk_ids": torch.cat(ids).to(torch.int32) if ids else empty_ids,
        "topk_logprobs": torch.cat(values).to(torch.float16) if values else empty_values,
        "rest_logprob": torch.cat(rests).to(torch.float16) if rests else torch.zeros((0,), dtype=torch.float16),
        "prompt_ids": flat(prompts),
        "prompt_offsets": offsets(prompts),
        "response_ids": flat(responses),
        "response_offsets": offsets(responses),
    }


def save(path: Path, tensors: dict, metadata: dict) -> Path:
    """Write the file atomically (beside, then rename)."""
    import os

    from safetensors.torch import save_file

    from ..atomic import follow_umask, fsync_directory

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    meta = {"format": "minillm-topk-logits", "version": FORMAT_VERSION, **{k: str(v) for k, v in metadata.items()}}
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(partial), metadata=meta)
    follow_umask(partial)   # the writer creates it private
    os.replace(partial, path)
    fsync_directory(path.parent)
    return path


class TeacherCache:
    """A loaded ``--save-logits`` file: finds each example's rows by its token ids."""

    def __init__(self, path: Path, tensors: dict, metadata: dict):
        self.path, self.metadata = Path(path), metadata
        self.topk_ids = tensors["topk_ids"]
        self.topk_logprobs = tensors["topk_logprobs"]
        self.rest_logprob = tensors["rest_logprob"]
        prompt_ids, prompt_offsets = tensors["prompt_ids"].tolist(), tensors["prompt_offsets"].tolist()
        response_ids, response_offsets = tensors["response_ids"].tolist(), tensors["response_offsets"].tolist()
        self.k = int(self.topk_ids.shape[1]) if self.topk_ids.dim() == 2 else 0
        self._responses: list[list[int]] = []
        self._starts: list[int] = []
        self._by_prompt: dict[tuple, list[int]] = {}
        for e in range(len(prompt_offsets) - 1):
            prompt = tuple(prompt_ids[prompt_offsets[e]:prompt_offsets[e + 1]])
            self._responses.append(response_ids[response_offsets[e]:response_offsets[e + 1]])
            self._starts.append(response_offsets[e])
            self._by_prompt.setdefault(prompt, []).append(e)

    @classmethod
    def load(cls, path) -> "TeacherCache":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise MinillmError(
                f"data.teacher_logits: no file '{path}'; make one with `minillm generate --model TEACHER --prompts "
                "DATA --out data.jsonl --save-logits 64` (it writes data.logits.safetensors)"
            )
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception as exc:  # safetensors raises its own error types
            raise MinillmError(f"data.teacher_logits: '{path}' is not a safetensors file ({exc})") from None
        needed = {"topk_ids", "topk_logprobs", "rest_logprob", "prompt_ids", "prompt_offsets", "response_ids",
                  "response_offsets"}
        if metadata.get("format") != "minillm-topk-logits" or not needed <= set(tensors):
            raise MinillmError(f"data.teacher_logits: '{path}' was not written by `minillm generate --save-logits`")
        if metadata.get("version") != FORMAT_VERSION:
            raise MinillmError(f"data.teacher_logits: '{path}' has format version {metadata.get('version')}; this "
                               f"minillm reads version {FORMAT_VERSION}: write it again with this minillm")
        return cls(path, tensors, metadata)

    def __len__(self) -> int:
        return len(self._responses)

    def find(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> Optional[int]:
        """The first row of the entry whose prompt is ``prompt_ids`` and whose response starts with ``response_ids``."""
        response = list(response_ids)
        for e in self._by_prompt.get(tuple(prompt_ids), ()):
            if self._responses[e][: len(response)] == response:
                return self._starts[e]
        return None

    def check(self, examples: Sequence, width: int) -> None:
        """Every example has an entry and every cached id fits the student's ``width`` logits, or a MinillmError."""
        missing = [e for e in examples if self.find(e.prompt_ids, e.response_ids) is None]
        if missing:
            raise MinillmError(
                f"data.teacher_logits: {len(missing)} of {len(examples)} training examples are not in '{self.path}' "
                "(matched by their prompt and response token ids); make the file from the same data, tokenizer, "
                "prompt format and max_prompt_tokens/max_response_tokens as this run"
            )
        top = int(self.topk_ids.max()) if self.topk_ids.numel() else -1
        if top >= width:
            raise MinillmError(
                f"data.teacher_logits: cached teacher token ids reach {top}, but the student has {width} logits; "
                "teacher and student must share the vocabulary"
            )

    def for_batch(self, batch) -> CachedTeacher:
        """The cached rows of a batch's loss tokens, in ``hidden[loss_mask]`` order (example by example)."""
        import torch

        rows = []
        for prompt, response in zip(batch.prompts, batch.responses):
            start = self.find(prompt, response)
            if start is None:
                raise MinillmError(
                    f"data.teacher_logits: a batch holds a response that is not in '{self.path}' (only gold "
                    "responses of the data the file was made from are cached)"
                )
            rows.append(torch.arange(start, start + len(response)))
        index = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
        device = batch.input_ids.device
        return CachedTeacher(
            topk_ids=self.topk_ids[index].long().to(device),
            topk_logprobs=self.topk_logprobs[index].float().to(device),
            rest_logprob=self.rest_logprob[index].float().to(device),
        )


def check_objective(objective) -> None:
    """Cached logits serve objectives that train on gold responses only; anything that samples needs the model."""
    sampled = sorted(set(objective.needs) & set(SAMPLE_NEEDS))
    if sampled:
        hints = {
            "gkd": "set objective.lmbda=0 and objective.seq_kd=false",
            "distillm": "set objective.init_threshold=0 and objective.threshold_step=0 (its adaptive schedule "
                        "would sample student outputs)",
        }
        hint = hints.get(objective.name, "use kd, rkl, gkd (lmbda 0) or distillm (off-policy)")
        raise MinillmError(
            f"data.teacher_logits holds teacher log-probabilities for the gold responses only, but objective "
            f"'{objective.name}' needs {', '.join(sampled)}, whose teacher log-probabilities cannot be cached; "
            f"{hint}, or drop data.teacher_logits"
        )
