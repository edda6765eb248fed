"""The training loop shared by every objective, on accelerate.

Per optimizer step: draw ``grad_accum`` micro-batches, let the objective prepare them (on-policy objectives
sample here), count their loss tokens across micro-batches and processes, then run the objective's loss on
each and step. Validation, checkpoints, metrics and the progress display hang off the step counter.

The engine receives everything it works with at construction (models, data, the objective, the cached teacher
logits of ``data.teacher_logits``, the extra validation suites of ``eval.suites``); the services it offers
objectives (forward passes, sampling, plain-text batches) are bound into each step's ``StepContext``.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..data.batches import Batch, make_batch
from .checkpoint import TrainerState, export_model, load_checkpoint, save_checkpoint
from .teacher_tokens import TeacherTokenCounter
from ..models.forward import Forward, forward_hidden, output_head
from ..models.generation import SamplingConfig, generate
from ..objective import Objective, StepContext
from .display import RunDisplay
from .numerics import refuse_untrained
from .run_log import RunLog
from .streams import ExampleStream, StopFlag
from .sampling_services import SamplingServices


@dataclass
class EngineData:
    train: list                      # TokenizedExample (prompt_ids, response_ids)
    valid: list                      # TokenizedExample
    valid_references: list           # list[list[str]] for Rouge-L, aligned with valid
    lm_chunks: Optional[list] = None  # packed plain-text chunks (lists of ids)


@dataclass
class RunResult:
    steps: int
    interrupted: bool
    final_dir: Optional[Path]
    best_dir: Optional[Path]
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    seconds_per_step: float = 0.0
    tokens_per_second: float = 0.0
    out_of_time: bool = False          # stopped by train.max_minutes before the last step
    plateaued: bool = False            # stopped by eval.patience: validation stopped improving


class Engine(SamplingServices):
    def __init__(
        self, *, config, objective: Objective, student, teacher, tokenizer, data: EngineData, vocab_width: int,
        output_dir: Path, config_yaml: str, accelerator=None, console=None, progress: bool = True,
        started_at: Optional[float] = None, teacher_cache=None, suite_validation=None, served_teacher=None,
    ):
        """``teacher_cache``: a ``training.teacher_cache.TeacherCache`` (``data.teacher_logits``) or the
        ``served_teacher`` (``--teacher http://…/v1``, which samples too) standing in for an unloaded teacher;
        ``suite_validation``: ``evaluation.validation.SuiteValidation`` for ``eval.suites``, at every validation."""
        import torch

        from . import distributed, sharding

        self.config, self.objective, self.tokenizer, self.data = config, objective, tokenizer, data
        self.vocab_width, self.output_dir, self.config_yaml = vocab_width, Path(output_dir), config_yaml
        train = config.train
        if accelerator is None:
            # DDP or DeepSpeed ZeRO (parallel.engine); accelerate's global state is reset first (distributed.py).
            accelerator = distributed.make_accelerator(config)
        self.accelerator = accelerator
        self.device = self.accelerator.device
        self.console = console
        self.display = RunDisplay(console, progress and self.accelerator.is_main_process)
        self.rng = random.Random(train.seed)   # the same on every process: objectives' choices must agree
        torch.manual_seed(distributed.process_seed(train.seed, self.accelerator.process_index))
        self.stream = ExampleStream(
            data.train, train.batch_size, train.seed, self.accelerator.process_index, self.accelerator.num_processes
        )
        self.total_steps = train.steps or max(1, math.ceil(train.epochs * self.stream.batches_per_epoch() / train.grad_accum))
        self.teacher = sharding.place_teacher(teacher, config, self.accelerator)
        self.teacher_partitioned = sharding.is_partitioned(self.teacher)
        self.teacher_counter = TeacherTokenCounter(self.teacher)   # a budget's second unit, beside wall time
        self.teacher_cache, self.served_teacher = teacher_cache, served_teacher
        self.suite_validation = suite_validation
        # The fused AdamW kernel makes one pass over the parameters instead of about ten (on a CPU ~6× faster for
        # SmolLM2's student, ~1 s a step); DeepSpeed manages the optimizer's tensors itself, so not under it.
        fused = self.device.type in ("cpu", "cuda") and getattr(self.accelerator.state, "deepspeed_plugin", None) is None
        optimizer = torch.optim.AdamW(
            [p for p in student.parameters() if p.requires_grad], lr=train.lr, betas=tuple(train.betas),
            eps=train.eps, weight_decay=train.weight_decay, fused=fused or None,
        )
        from .schedules import make_scheduler

        scheduler = make_scheduler(optimizer, train.schedule, self.total_steps, train.warmup_steps, train.lr, train.min_lr)
        # The student's body (hidden states) runs inside the DDP/ZeRO wrapper; self.model is the model itself
        # (a PEFT model with LoRA adapters when train.lora.r > 0), for exports.
        self.model = student
        self.zero_stage = distributed.zero_stage(self.accelerator)
        self.student, self.optimizer, self.scheduler = self.accelerator.prepare(
            distributed.student_body(distributed.inner_model(student)), optimizer, scheduler
        )
        self.state = TrainerState()
        g = config.generation
        self.sampling = SamplingConfig(
            temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, max_new_tokens=g.max_new_tokens,
            no_repeat_ngram_size=g.no_repeat_ngram_size,
        )
        self.run_log = RunLog(self.output_dir, enabled=self.accelerator.is_main_process)
        # train.max_minutes counts from when this process began preparing the run (time.monotonic())
        self._clock = time.monotonic() if started_at is None else started_at

    # --- services offered to objectives -------------------------------------------------------------------

    def unwrapped(self):
        """The student's transformers model (with its LoRA adapters injected, if any), outside any wrapper."""
        return self.accelerator.unwrap_model(self.student).lm

    def student_forward(self, batch: Batch):
        head = output_head(self.unwrapped(), self.vocab_width)
        if self.zero_stage == 3:
            head.parameters = None   # partitioned weights: the fused head path needs whole ones (checkpointed path)
        return Forward(self.student(**batch.model_inputs()), head)

    def teacher_forward(self, batch: Batch):
        import torch

        if self.teacher is None and self.teacher_cache is not None:  # cached or served top-k: no teacher loaded
            return self.teacher_cache.for_batch(batch)
        if self.teacher is None:
            raise RuntimeError(f"objective '{self.objective.name}' uses the teacher but does not declare it in needs")
        if "teacher_hidden" in batch.extras:
            # A rollout batch whose sampling already ran the teacher over every response token
            # (``Rollouts.teacher_hidden``): its final hidden states are what this pass would compute again.
            return Forward(batch.extras["teacher_hidden"], output_head(self.teacher, self.vocab_width))
        with torch.inference_mode():
            forward = forward_hidden(self.teacher, batch, self.vocab_width)
        if self.teacher_partitioned:   # ZeRO-3 teacher: one gather of its head, not one collective per chunk
            from .sharding import gathered_head

            forward.head = gathered_head(self.teacher, self.vocab_width)
        return forward

    def lm_batch(self) -> Batch:
        """The next ``batch_size`` packed plain-text chunks, as a batch whose every token counts."""

        chunks = self.data.lm_chunks
        if not chunks:
            raise RuntimeError(f"objective '{self.objective.name}' needs lm_chunks but no data.lm_corpus is set")
        size = self.config.train.batch_size
        # Each process takes its own slice of a global batch of size × processes chunks, as ExampleStream does.
        start = self.state.lm_position + self.accelerator.process_index * size
        rows = [chunks[(start + i) % len(chunks)] for i in range(size)]
        self.state.lm_position = (self.state.lm_position + size * self.accelerator.num_processes) % len(chunks)
        batch = make_batch([[r[0]] for r in rows], [r[1:] for r in rows], self.tokenizer.pad_token_id, source="text")
        return batch.to(self.device)

    def _reduce_sum(self, tensor):
        return self.accelerator.reduce(tensor, "sum") if self.accelerator.num_processes > 1 else tensor

    def _context(self, num_tokens: float) -> StepContext:
        return StepContext(
            step=self.state.step, num_tokens=num_tokens, student=self.student, teacher=self.teacher,
            vocab_width=self.vocab_width,
            # ZeRO-3: the student's head is gathered at each call, a collective; one chunk per loss keeps the
            # number of calls the same on every process.
            chunk_tokens=None if self.zero_stage == 3 else self.config.train.chunk_tokens,
            student_forward=self.student_forward, teacher_forward=self.teacher_forward,
            sample_student=self.sample_student, sample_teacher=self.sample_teacher, sample_mixed=self.sample_mixed,
            lm_batch=self.lm_batch, reduce_sum=self._reduce_sum,
            rng=self.rng, training_progress=self.state.step / self.total_steps,
        )

    # --- one optimizer step ------------------------------------------------------------------------------

    def train_step(self) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches; returns the step's global loss and metrics."""
        self.teacher_counter.take()   # what validation computed between steps is not training
        micro = [self._next_batch() for _ in range(self.config.train.grad_accum)]
        ctx = self._context(num_tokens=1.0)
        micro = self.objective.prepare_step(micro, ctx)           # on-policy objectives sample here
        loss_tokens, sequence_tokens = self._count_tokens(micro)
        # DDP averages gradients over processes; scaling by the process count turns that average into the sum,
        # so the loss is Σ tokens / global tokens: a per-token mean taken exactly once over the whole step.
        ctx.num_tokens = max(loss_tokens, 1.0) / self.accelerator.num_processes
        totals = self._accumulate_gradients(micro, ctx)
        max_norm = self.config.train.max_grad_norm
        if max_norm and max_norm > 0:
            totals["grad_norm"] = float(self.accelerator.clip_grad_norm_(self.student.parameters(), max_norm))
        totals["lr"] = self.scheduler.get_last_lr()[0]           # the rate this step used
        self._update_or_skip(totals)                              # a NaN/Inf term or gradient skips the update
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens_seen += int(loss_tokens)
        totals["tokens"], totals["sequence_tokens"] = loss_tokens, sequence_tokens
        self.state.teacher_tokens += self.teacher_counter.take()
        totals["teacher_tokens"] = self.state.teacher_tokens   # so far, in this process
        return totals

    def _next_batch(self) -> Batch:
        examples = self.stream.next(self.state)
        return make_batch(
            [e.prompt_ids for e in examples], [e.response_ids for e in examples], self.tokenizer.pad_token_id
        ).to(self.device)

    def _count_tokens(self, micro: list) -> tuple[float, float]:
        """(loss tokens, all sequence tokens) of the step's micro-batches, summed over processes."""
        import torch

        local = torch.tensor(
            [float(sum(b.num_tokens for b in micro)), float(sum(int(b.attention_mask.sum()) for b in micro))],
            device=self.device,
        )
        loss_tokens, sequence_tokens = self.accelerator.reduce(local, "sum").tolist()
        return loss_tokens, sequence_tokens

    def _accumulate_gradients(self, micro: list, ctx: StepContext) -> dict:
        """Loss and backward pass of each micro-batch, gradients synchronised at the last one only."""
        from . import distributed

        totals: dict[str, float] = {"loss": 0.0}
        deepspeed = distributed.uses_deepspeed(self.accelerator)
        for index, batch in enumerate(micro):
            sync = index == len(micro) - 1
            context = self.accelerator.no_sync(self.student) if not sync else contextlib.nullcontext()
            with context, self.accelerator.autocast():
                output = self.objective.loss(batch, ctx)
            if deepspeed:
                # DeepSpeed reduces and steps inside backward at the last micro-batch; the loss is already a
                # share of the step's per-token mean, so DeepSpeed must not divide it by the accumulation again.
                self.accelerator.gradient_state._set_sync_gradients(sync)
                self.accelerator.backward(output.loss, scale_wrt_gas=False)
            else:
                self.accelerator.backward(output.loss)
            totals["loss"] += float(output.loss.detach())
            for key, value in output.metrics.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        return distributed.mean_over_processes(self.accelerator, totals)   # the step's global loss and metrics

    def _update_or_skip(self, totals: dict) -> None:
        """Step the optimizer and schedule, unless a loss term or gradient is NaN/Inf on any process.

        fp16's GradScaler already skips overflowing gradients (and lowers its scale), so under fp16 only the loss
        counts; the flag is summed so every rank agrees. Skipped steps are counted (``train.max_bad_steps``)."""
        import torch

        from .numerics import grads_finite, nonfinite_term

        scaled = self.config.train.precision == "fp16"
        bad = nonfinite_term({k: v for k, v in totals.items() if not scaled or k != "grad_norm"})
        if bad is None and not scaled and "grad_norm" not in totals and not grads_finite(self.student.parameters()):
            bad = "gradient"
        flag = self.accelerator.reduce(torch.tensor([float(bad is not None)], device=self.device), "sum")
        if float(flag.sum()) > 0:
            self.state.skipped_steps += 1
            self.state.bad_steps_in_row += 1
            self.state.last_bad_term = bad or "loss (on another process)"
            totals["skipped_steps"] = self.state.skipped_steps
            if scaled:  # the scaler sees the non-finite gradients and skips (the scheduler follows); it must still update
                self.optimizer.step()
                self.scheduler.step()
            # Otherwise the schedule waits too, as DeepSpeed's does on an overflow: skipped steps use no learning rate.
            return
        self.state.bad_steps_in_row = 0
        if self.state.skipped_steps:
            totals["skipped_steps"] = self.state.skipped_steps
        self.optimizer.step()
        self.scheduler.step()

    # --- validation ----------------------------------------------------------------------------------------

    def validate(self) -> dict:
        cfg = self.config.eval
        examples = len(self.data.valid[: cfg.max_examples]) + len(self.data.valid[: cfg.rouge_examples])
        with self.display.phase(f"validating at step {self.state.step}", examples):
            return self._validate()

    def _validate(self) -> dict:
        import torch

        from ..losses.head import distill_loss, lm_loss
        from ..evaluation.on_policy import reverse_kl_on_own_samples
        from ..evaluation.rouge import corpus_rouge_l

        cfg = self.config.eval
        model = self.unwrapped()
        was_training = model.training
        model.eval()
        results: dict[str, float] = {}
        examples = self.data.valid[: cfg.max_examples]
        try:
            if examples:
                ce = fkl = tokens = 0.0
                with torch.no_grad():
                    for start in range(0, len(examples), self.config.train.batch_size):
                        chunk = examples[start:start + self.config.train.batch_size]
                        batch = make_batch(
                            [e.prompt_ids for e in chunk], [e.response_ids for e in chunk], self.tokenizer.pad_token_id
                        ).to(self.device)
                        student = forward_hidden(model, batch, self.vocab_width)
                        chunk_tokens = self.config.train.chunk_tokens
                        ce += float(lm_loss(student, batch.labels, batch.loss_mask, num_tokens=1, chunk_tokens=chunk_tokens))
                        if self.teacher is not None:
                            teacher = self.teacher_forward(batch)
                            fkl += float(distill_loss("fkl", student, teacher, batch.loss_mask, num_tokens=1, chunk_tokens=chunk_tokens))
                        tokens += batch.num_tokens
                        self.display.advance(len(chunk))
                results["valid_loss"] = ce / max(tokens, 1)
                if self.teacher is not None:
                    results["valid_fkl"] = fkl / max(tokens, 1)
            rouge_examples = self.data.valid[: cfg.rouge_examples]
            if rouge_examples:
                greedy = SamplingConfig(temperature=0, max_new_tokens=cfg.max_new_tokens)
                generations = generate(
                    model, self.tokenizer, [e.prompt_ids for e in rouge_examples], greedy,
                    batch_size=self.config.train.batch_size, on_batch=lambda done, _: self.display.advance(done),
                )
                texts = [self.tokenizer.decode(g.token_ids, skip_special_tokens=True).strip() for g in generations]
                refs = self.data.valid_references[: len(rouge_examples)]
                results["valid_rougeL"] = corpus_rouge_l(texts, refs)
                if cfg.own_samples_kl and self.teacher is not None and self.zero_stage != 3 and not self.teacher_partitioned:
                    results["valid_rkl_own_samples"] = reverse_kl_on_own_samples(
                        model, self.teacher, self.tokenizer, [e.prompt_ids for e in rouge_examples],
                        max_new_tokens=cfg.max_new_tokens, vocab_width=self.vocab_width,
                        batch_size=self.config.train.batch_size, chunk_tokens=self.config.train.chunk_tokens)
            if self.suite_validation is not None:  # eval.suites, through the evaluator plugins as `minillm eval`
                results.update(self.suite_validation(model, device=self.device, teacher=self.teacher))
        finally:
            model.train(was_training)
        return results

    def _is_better(self, results: dict) -> bool:
        key = "valid_rougeL" if self.config.eval.select_by == "rougeL" else "valid_loss"
        if key not in results:
            key = "valid_loss"
        if key not in results:
            return False
        value = results[key]
        if not math.isfinite(value):   # a NaN loss is never the best model
            return False
        best = self.state.best_metric
        better = best is None or (value > best if key == "valid_rougeL" else value < best)
        if better:
            self.state.best_metric, self.state.best_step = value, self.state.step
        return better

    # --- records ----------------------------------------------------------------------------------------------

    def _log(self, record: dict) -> None:
        self.run_log.write(record)

    def save(self) -> Path:
        """One checkpoint, written by the main process (with DeepSpeed, every process adds its ZeRO shards);
        every process's random state goes with it (see ``parallel_checkpoint``)."""
        from .parallel_checkpoint import save_parallel

        with self.display.phase(f"saving the checkpoint of step {self.state.step}"):
            return save_parallel(self, save_checkpoint)

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint, on any number of processes (see ``parallel_checkpoint``)."""
        from .parallel_checkpoint import resume_parallel

        self.state = resume_parallel(self, Path(path), load_checkpoint)

    def _export(self, name: str) -> Optional[Path]:
        """A Hugging Face directory of the student (merged, with its adapter, under LoRA); every process takes part
        (ZeRO-3 gathers the weights), the main one writes."""
        from .parallel_checkpoint import export_parallel

        meta = {"step": self.state.step, "objective": self.objective.name, "best_metric": self.state.best_metric}
        with self.display.phase(f"exporting {name}/"):
            return export_parallel(self, self.output_dir / name, meta, export_model)

    # --- the loop -----------------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        result = RunResult(steps=0, interrupted=False, final_dir=None, best_dir=None)
        cfg = self.config
        if cfg.eval.before_after and self.state.step == 0:
            result.before = self.validate()
            # The reference takes its comparison loss from a step-0 evaluation (DistiLLM's schedule needs it).
            self.objective.on_validation(result.before)
            self._log({"step": 0, **result.before})
        step_times, token_counts = [], []  # token counts: every sequence token (prompt and response)
        with StopFlag() as stop, self.display.phase("step", self.total_steps, keep=True):
            self.display.update(completed=self.state.step)
            while self.state.step < self.total_steps:
                started = time.perf_counter()
                record = self.train_step()
                elapsed = time.perf_counter() - started
                step_times.append(elapsed)
                token_counts.append(record["sequence_tokens"])
                record["tokens_per_second"] = record["sequence_tokens"] / elapsed if elapsed > 0 else 0.0
                record["seconds"] = elapsed
                self._log({"step": self.state.step, **record})
                limit = cfg.train.max_bad_steps
                if limit and self.state.bad_steps_in_row >= limit:
                    from .numerics import too_many_bad_steps

                    self.run_log.close()
                    raise too_many_bad_steps(
                        self.state.step, self.state.bad_steps_in_row, self.state.last_bad_term, self.output_dir
                    )
                if self.display.enabled:   # the speed so far, the same figure as the summary's at the end
                    terms = " ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in ("lr", "tokens", "sequence_tokens", "teacher_tokens", "seconds", "tokens_per_second", "grad_norm"))
                    self.display.update(completed=self.state.step, info=f"{terms} | {sum(token_counts) / max(sum(step_times), 1e-9):.0f} sequence tokens/s")
                result.out_of_time = self._out_of_time() and self.state.step < self.total_steps
                at_end = self.state.step == self.total_steps or result.out_of_time
                if cfg.eval.every and (self.state.step % cfg.eval.every == 0) and not at_end:
                    self._validate_and_select()
                    result.plateaued = self._plateaued()
                    at_end = at_end or result.plateaued
                if cfg.checkpoint.every and self.state.step % cfg.checkpoint.every == 0 and not at_end:
                    self.save()
                if stop.requested and not at_end:
                    path = self.save()
                    result.interrupted = True
                    result.final_dir = path
                    break
                reason = self._early_stop(result)
                if reason:
                    if self.console is not None and self.accelerator.is_main_process:
                        self.console.print(reason)
                    break
        if not result.interrupted:
            refuse_untrained(self.state, self.output_dir, self.run_log)   # every step skipped: nothing to export
            # a run stopped by eval.patience has just validated this very step
            final = ({k: v for k, v in self.state.history[-1].items() if k != "step"} if result.plateaued
                     else self._validate_and_select())
            result.after = final
            self.save()
            result.final_dir = self._export("final")
            best = self.output_dir / "best"
            result.best_dir = best if best.exists() else result.final_dir
        self.run_log.close()
        result.steps = self.state.step
        if step_times:
            timed = step_times[1:] or step_times  # the first step pays for warm-up
            result.seconds_per_step = sorted(timed)[len(timed) // 2]
            result.tokens_per_second = sum(token_counts) / sum(step_times)
        return result

    def _out_of_time(self) -> bool:
        """Whether train.max_minutes is spent; every process gets the same answer (the slowest clock decides)."""
        now = time.monotonic()
        self.state.seconds_used += now - self._clock
        self._clock = now
        budget = self.config.train.max_minutes
        if budget is None:
            return False
        spent = float(self.state.seconds_used >= budget * 60)
        if self.accelerator.num_processes > 1:
            import torch

            spent = float(self._reduce_sum(torch.tensor(spent, device=self.device)).item())
        return spent > 0

    def _early_stop(self, result: RunResult) -> Optional[str]:
        """Why the run ends before its last step (eval.patience or train.max_minutes), or None."""
        cfg = self.config
        if result.plateaued:
            return (f"no better validation {cfg.eval.select_by} in the last {cfg.eval.patience} validations "
                    f"(eval.patience) after step {self.state.step}; exporting final")
        if result.out_of_time:
            return (f"time budget of {cfg.train.max_minutes:g} min (train.max_minutes) reached after step "
                    f"{self.state.step} of {self.total_steps}; validating and exporting final")
        return None

    def _plateaued(self) -> bool:
        """Whether the last eval.patience validations all came after the best one (early stopping)."""
        patience = self.config.eval.patience
        if not patience or self.state.best_step is None:
            return False
        return sum(1 for h in self.state.history if h["step"] > self.state.best_step) >= patience

    def _validate_and_select(self) -> dict:
        results = self.validate()
        self.objective.on_validation(results)
        better = self._is_better(results)
        self.state.history.append({"step": self.state.step, **results})
        self._log({"step": self.state.step, **results, "best_step": self.state.best_step})
        if better:
            self._export("best")
        return results
