"""Would a rollout be faster with the teacher on the second core? A measured prototype, kept as evidence.

    python bench/rollout_overlap.py      # SmolLM2-135M-Instruct → its 6-layer student, 8 prompts × 64 tokens

MiniLLM's coin-mixed sampler (``minillm_cli/training/coin_sampling.py``) runs the student and the lazy teacher one
after the other, each with all of the process's threads. The idea measured here: the student decodes on one thread
while a worker thread, with one thread of its own, catches the teacher's KV cache up over the tokens sampled so far;
a step whose coin picks the teacher waits until the worker has fed every earlier token. Every setting decodes the
same 8 prompts of the embedded data for up to 64 tokens at temperature 1; each row is the median tokens/s of
``--repeats`` runs after a warm-up run:

- ``student, 2 threads`` / ``student, 1 thread``: the student alone, minillm's decoder (``models.decoding``);
- ``prototype α=0`` / ``prototype α=0.2``: the student on one thread, the teacher worker on the other (α = 0: no
  coin ever waits, the worker only scores; α = 0.2: one coin per step from a fixed generator);
- ``serial α=0`` / ``serial α=0.2``: minillm's sampler as it ships (``rollout.sample_rollouts``), 2 threads; it
  stops a row at end-of-sequence (tokens/s counts the sampled tokens; the 6-layer student rarely ends).

The prototype is not exact about timing-dependent catch-up boundaries (how many tokens a pass feeds depends on
thread timing), which is one reason it is not in the product; the other is the result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

from sampling_pair import add_pair_options, load_pair


class TeacherWorker:
    """The teacher's KV cache on a thread of its own, fed tokens as the student samples them."""

    def __init__(self, teacher, width, ids, mask):
        from minillm_cli.models.decoding import Decoder

        self.decoder, self.ids, self.mask = Decoder(teacher, width), ids, mask
        self.tokens, self.consumed, self.current, self.closed = [], 0, None, False
        self.condition = threading.Condition()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def push(self, tokens) -> None:
        with self.condition:
            self.tokens.append(tokens)
            self.condition.notify_all()

    def distribution_after(self, count: int):
        """log p of the next token once the first ``count`` sampled tokens have been fed."""
        with self.condition:
            while self.consumed < count or self.current is None:
                self.condition.wait()
            return self.current

    def close(self) -> None:
        with self.condition:
            self.closed = True
            self.condition.notify_all()
        self.thread.join()

    def _run(self) -> None:
        import torch

        mask = self.mask
        with torch.inference_mode():
            current = self.decoder.step(self.ids, mask, (mask.cumsum(-1) - 1).clamp(min=0))
            with self.condition:
                self.current = current
                self.condition.notify_all()
            while True:
                with self.condition:
                    while len(self.tokens) == self.consumed and not self.closed:
                        self.condition.wait()
                    if len(self.tokens) == self.consumed:
                        return
                    new = torch.stack(self.tokens[self.consumed:], dim=1)
                mask = torch.cat([mask, torch.ones((mask.shape[0], new.shape[1]), dtype=mask.dtype)], dim=-1)
                current = self.decoder.step(new, mask, (mask.cumsum(-1) - 1)[:, -new.shape[1]:])
                with self.condition:
                    self.consumed += new.shape[1]
                    self.current = current
                    self.condition.notify_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pair_options(parser, "bench/results/rollout_overlap.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from rich.console import Console
    from rich.table import Table

    from minillm_cli.models.decoding import Decoder, draw
    from minillm_cli.models.generation import SamplingConfig, left_pad
    from minillm_cli.training.rollout import sample_rollouts

    console = Console(width=max(Console().width, 110))
    pair = load_pair(args, console)
    teacher, student, tokenizer, width, prompts = pair.teacher, pair.student, pair.tokenizer, pair.width, pair.prompts
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)

    def decode(alpha=None):
        """The student's loop; with ``alpha``, the teacher worker beside it and coins that wait for it."""
        coins = [False] * args.max_new_tokens
        if alpha:
            coins = (torch.rand(args.max_new_tokens, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
                     < alpha).tolist()
        worker = TeacherWorker(teacher, width, ids, mask) if alpha is not None else None
        generator, decoder, grown = torch.Generator().manual_seed(0), Decoder(student, width), mask
        with torch.inference_mode():
            logq = decoder.step(ids, grown, (grown.cumsum(-1) - 1).clamp(min=0))
            for step in range(args.max_new_tokens):
                logits = worker.distribution_after(step) if coins[step] else logq
                tokens = draw(logits, sampling, generator)
                if worker is not None:
                    worker.push(tokens)
                grown = torch.cat([grown, torch.ones((grown.shape[0], 1), dtype=grown.dtype)], dim=-1)
                logq = decoder.step(tokens.unsqueeze(-1), grown, grown.sum(-1, keepdim=True) - 1)
        if worker is not None:
            worker.distribution_after(args.max_new_tokens)
            worker.close()
        return args.batch * args.max_new_tokens

    def serial(alpha):
        """minillm's sampler; a row that samples end-of-sequence stops counting (the batch decodes on)."""
        rollouts = sample_rollouts(student, teacher, tokenizer, prompts, sampling, alpha=alpha, seed=1,
                                   batch_size=args.batch, vocab_width=width)
        return sum(len(response) for response in rollouts.responses)

    settings = {
        "student, 2 threads": (2, decode),
        "student, 1 thread": (1, decode),
        "prototype α=0 (1 + 1 threads)": (1, lambda: decode(0.0)),
        "prototype α=0.2 (1 + 1 threads)": (1, lambda: decode(0.2)),
        "serial α=0 (minillm, 2 threads)": (2, lambda: serial(0.0)),
        "serial α=0.2 (minillm, 2 threads)": (2, lambda: serial(0.2)),
    }
    threads = torch.get_num_threads()
    rows = []
    for name, (count, run) in settings.items():
        console.print(f"running {name} …")
        torch.set_num_threads(count)
        run()
        rates, counts = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            counts.append(run())
            rates.append(counts[-1] / (time.perf_counter() - started))
        rows.append({"setting": name, "tokens_per_second": statistics.median(rates), "runs": rates, "tokens": counts,
                     "threads": count})
    torch.set_num_threads(threads)
    reference = rows[0]["tokens_per_second"]
    table = Table(title=f"{args.batch} prompts × {args.max_new_tokens} tokens, {args.teacher} → {args.student_layers}-layer student")
    for column in ("setting", "tokens/s (median)", "× student, 2 threads", "runs"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for row in rows:
        row["relative_to_student_two_threads"] = row["tokens_per_second"] / reference
        table.add_row(row["setting"], f"{row['tokens_per_second']:.1f}", f"{row['relative_to_student_two_threads']:.2f}",
                      ", ".join(f"{r:.1f}" for r in row["runs"]))
    console.print(table)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "args": vars(args), "load_average": list(os.getloadavg())}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
