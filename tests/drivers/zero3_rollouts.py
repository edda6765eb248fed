"""Run by tests/test_distributed.py on 2 processes: teacher-mixed rollouts with a ZeRO-3-partitioned teacher when the
processes decode different numbers of tokens (process 0 stops after 2, process 1 after 7). Every forward pass of a
partitioned teacher is a collective, so without lock-step decoding process 1 would wait forever; with it, each
process gets exactly the rollouts of an unsharded teacher, and likewise the plain samples of ``generate``. Writes what it checked to OUT.rank<r>.json."""

import json
import sys
import types

import torch

from minillm_cli.training import sharding
from minillm_cli.models.generation import SamplingConfig, generate
from minillm_cli.models.load import load_model, load_tokenizer, resolve_model
from minillm_cli.training.rollout import sample_rollouts


def main(student_dir, teacher_dir, out):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    tokenizer = load_tokenizer(resolve_model(student_dir))
    student = load_model(resolve_model(student_dir))
    prompts = [[5, 6, 7], [8, 9]] if rank == 0 else [[10, 11, 12, 13]]
    sampling = SamplingConfig(temperature=0, max_new_tokens=2 if rank == 0 else 7)
    plain = sample_rollouts(student, load_model(resolve_model(teacher_dir)), tokenizer, prompts, sampling,
                            alpha=0.2, batch_size=len(prompts))
    config = types.SimpleNamespace(train=types.SimpleNamespace(batch_size=2),
                                   parallel=types.SimpleNamespace(offload_params="none"))
    teacher = sharding.shard_teacher_zero3(load_model(resolve_model(teacher_dir)), config, accelerator)
    assert sharding.is_partitioned(teacher)
    view = sharding.lockstep(teacher, accelerator)
    sharded = sample_rollouts(student, view, tokenizer, prompts, sampling, alpha=0.2, batch_size=len(prompts))
    sharding.drain([view], accelerator.device)
    # The same for plain sampling (on-policy objectives' samples of a ZeRO-3 student or teacher: generate through a
    # lock-step view, then drain).
    plain_generations = generate(load_model(resolve_model(teacher_dir)), tokenizer, prompts, sampling,
                                 batch_size=len(prompts))
    sharded_generations = generate(view, tokenizer, prompts, sampling, batch_size=len(prompts))
    sharding.drain([view], accelerator.device)
    teacher_diff = max(abs(a - b) for x, y in zip(plain.teacher_logprobs, sharded.teacher_logprobs) for a, b in zip(x, y))
    # The gathered head of a partitioned teacher gives its logits.
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        hidden = teacher.base_model(input_ids=ids).last_hidden_state
        head_diff = (sharding.gathered_head(teacher, None)(hidden)
                     - load_model(resolve_model(teacher_dir))(input_ids=ids).logits).abs().max().item()
    accelerator.wait_for_everyone()
    with open(f"{out}.rank{rank}.json", "w") as handle:
        json.dump({"same_responses": plain.responses == sharded.responses, "lengths": [len(r) for r in sharded.responses],
                   "same_generations": [g.token_ids for g in plain_generations] == [g.token_ids for g in sharded_generations],
                   "generation_lengths": [len(g.token_ids) for g in sharded_generations],
                   "teacher_diff": teacher_diff, "head_diff": head_diff}, handle)


if __name__ == "__main__":
    main(*sys.argv[1:4])
