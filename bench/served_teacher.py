"""Training tokens per second with a served teacher (`minillm serve` on 127.0.0.1) against the same teacher loaded locally.

    python bench/served_teacher.py                    # tiny random-init llama models (teacher 4 layers, student 2)
    python bench/served_teacher.py --teacher smollm2-135m-instruct --student DIR --steps 3

Each row runs ``--steps`` optimizer steps (after one warm-up step) of one objective through ``runs.prepare`` and the
engine, on the embedded instruction data, batch ``--batch``; tokens/s counts the loss tokens of those steps over
their wall time. The server runs in a thread of the same process, so on one machine it competes with the
trainer for the same cores and adds the HTTP round trips and the JSON of k log-probabilities per token: the point
of a served teacher is the memory of another machine, and this measures what the protocol costs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path


def run_steps(teacher: str, student: str, objective: str, options: dict, args, out: Path, teacher_topk: int = 20):
    from minillm_cli.config.schema import DistillConfig
    from minillm_cli.plugins import get_objective
    from minillm_cli.runs.prepare import prepare

    config = DistillConfig(output_dir=str(out), device="cpu", teacher=teacher, student=student,
                           teacher_topk=teacher_topk, objective={"name": objective, **options})
    config.train.batch_size, config.train.steps = args.batch, args.steps + 1
    config.generation.max_new_tokens = args.max_new_tokens
    config.data.max_response_tokens = args.max_new_tokens
    config.eval.before_after, config.eval.every = False, 0
    engine = prepare(config, get_objective(objective).Options(**options), progress=False).engine
    engine.train_step()   # warm-up
    tokens, started = 0.0, time.perf_counter()
    for _ in range(args.steps):
        tokens += engine.train_step()["tokens"]
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None, help="default: a tiny random-init llama (4 layers, width 128)")
    parser.add_argument("--student", default=None, help="default: a tiny random-init llama (2 layers, width 64)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", default="bench/results/served_teacher.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from rich.console import Console
    from rich.table import Table

    from minillm_cli.runs.serve import make_server
    from minillm_cli.testing import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="served-teacher-bench-"))
    teacher = args.teacher or str(make_tiny_model(work / "tiny-llama-teacher", "llama", layers=4, hidden=128, seed=2))
    student = args.student or str(make_tiny_model(work / "tiny-llama-student", "llama", layers=2, hidden=64, seed=1))
    server = make_server(teacher, port=0, device="cpu")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    width = server.served.width
    rows = []
    try:
        for objective, options in (("kd", {}), ("minillm", {"lm_weight": 0.0})):
            for where, name, k in (("local", teacher, 20), ("served", server.url, 20), ("served", server.url, width)):
                if where == "local" and k != 20:
                    continue
                result = run_steps(name, student, objective, options, args, work / f"{objective}-{where}-{k}", k)
                rows.append({"objective": objective, "teacher": where, "teacher_topk": k if where == "served" else None,
                             **result})
    finally:
        server.shutdown()
        server.server_close()

    table = Table(title=f"served vs local teacher: {args.steps} steps × batch {args.batch}, ≤ {args.max_new_tokens} "
                        "response tokens")
    for column in ("objective", "teacher", "top-k", "loss tokens", "seconds", "tokens/s", "× local"):
        table.add_column(column, justify="right" if column not in ("objective", "teacher") else "left")
    local = {r["objective"]: r["tokens_per_second"] for r in rows if r["teacher"] == "local"}
    for r in rows:
        table.add_row(r["objective"], r["teacher"], str(r["teacher_topk"] or "—"), f"{r['tokens']:.0f}",
                      f"{r['seconds']:.2f}", f"{r['tokens_per_second']:.1f}",
                      f"{r['tokens_per_second'] / local[r['objective']]:.2f}")
    Console(width=120).print(table)
    record = {
        "bench": "served_teacher", "teacher": args.teacher or "tiny llama 4 layers × 128", "vocab": width,
        "student": args.student or "tiny llama 2 layers × 64", "steps": args.steps, "batch": args.batch,
        "max_new_tokens": args.max_new_tokens, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "cpus": os.cpu_count(), "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
