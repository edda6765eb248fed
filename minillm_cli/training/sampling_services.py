"""The engine's sampling services to objectives: the student's, the teacher's (local or served) and teacher-mixed
rollouts, each as a training batch (``Engine`` inherits them; ``objective.StepContext`` hands them out)."""

from __future__ import annotations

from ..data.batches import Batch, make_batch
from ..models.generation import generate


class SamplingServices:
    """Needs, on the engine: ``unwrapped()``, ``teacher``, ``served_teacher``, ``tokenizer``, ``sampling``,
    ``device``, ``vocab_width``, ``zero_stage``, ``teacher_partitioned``, ``accelerator`` and ``objective``."""

    def _sample(self, model, batch: Batch, source: str, partitioned: bool = False) -> Batch:
        if model is self.served_teacher:   # the server samples, with a seed from the process's torch stream
            import torch

            results = model.generate(batch.prompts, self.sampling, seed=int(torch.randint(0, 2**62, (1,))),
                                     batch_size=len(batch.prompts))
        elif partitioned:   # ZeRO-3: every forward pass is a collective, so processes decode in lock step
            from . import sharding

            view = sharding.lockstep(model, self.accelerator)
            results = generate(view, self.tokenizer, batch.prompts, self.sampling, batch_size=len(batch.prompts))
            sharding.drain([view], self.device)
        else:
            results = generate(model, self.tokenizer, batch.prompts, self.sampling, batch_size=len(batch.prompts))
        eos = self.tokenizer.eos_token_id
        responses = [r.token_ids + ([eos] if r.finished else []) for r in results]
        return make_batch(batch.prompts, responses, self.tokenizer.pad_token_id, source=source).to(self.device)

    def sample_student(self, batch: Batch) -> Batch:
        return self._sample(self.unwrapped(), batch, "student", partitioned=self.zero_stage == 3)

    def sample_teacher(self, batch: Batch) -> Batch:
        if self.served_teacher is not None:
            return self._sample(self.served_teacher, batch, "teacher")
        if self.teacher is None:
            raise RuntimeError(f"objective '{self.objective.name}' samples the teacher but does not declare it")
        return self._sample(self.teacher, batch, "teacher", partitioned=bool(self.teacher_partitioned))

    def sample_mixed(self, batch: Batch, alpha: float, coins: str = "step") -> Batch:
        """Teacher-mixed rollouts (docs/method.md §1) for the batch's prompts, with per-token log-probs in extras;
        ``coins`` as in ``rollout.sample_rollouts``."""
        from .rollout import sample_rollouts
        from .served_rollout import sample_served_rollouts

        if getattr(self.teacher_cache, "response_logprobs", None) is not None:   # --cross-tokenizer: α = 0
            import torch

            from .cross_rollout import sample_cross_tokenizer_rollouts

            rollouts = sample_cross_tokenizer_rollouts(
                self.unwrapped(), self.teacher_cache, self.tokenizer, batch.prompts, self.sampling,
                seed=int(torch.randint(0, 2**62, (1,)).item()), batch_size=len(batch.prompts),
                vocab_width=self.vocab_width)
            return rollouts.to_batch(self.tokenizer.pad_token_id).to(self.device)
        if self.teacher is None and self.served_teacher is None:
            raise RuntimeError(f"objective '{self.objective.name}' samples from the teacher mixture but does not declare it")
        from . import sharding

        # Under ZeRO-3 every forward pass is a collective: partitioned models decode in lock step across processes.
        student, teacher = self.unwrapped(), self.teacher
        views = []
        if self.zero_stage == 3:
            student = sharding.lockstep(student, self.accelerator)
            views.append(student)
        if self.teacher_partitioned:
            teacher = sharding.lockstep(teacher, self.accelerator)
            views.append(teacher)
            # Lock-step decoding pairs the models' passes step by step across processes; a lazy teacher's passes
            # follow each process's own coins and finished rows, so a partitioned teacher runs at every step.
            coins = "none"
        import torch

        # The rollout's own generators are seeded from the process's torch stream (seeded by train.seed, saved in
        # every checkpoint), so a run and its resume sample the same rollouts.
        seed = int(torch.randint(0, 2**62, (1,)).item())
        sampler = sample_rollouts
        if self.served_teacher is not None:   # coins over the completions API (training/served_rollout.py)
            sampler, teacher = sample_served_rollouts, self.served_teacher
        rollouts = sampler(
            student, teacher, self.tokenizer, batch.prompts, self.sampling, alpha=alpha, seed=seed,
            batch_size=len(batch.prompts), vocab_width=self.vocab_width, coins=coins,
        )
        sharding.drain(views, self.device)
        return rollouts.to_batch(self.tokenizer.pad_token_id).to(self.device)
