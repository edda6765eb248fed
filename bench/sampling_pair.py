"""What the sampling benchmarks share (``rollout_speed.py``, ``rollout_overlap.py``): their command-line options
and the teacher, its student and the prompts they sample from."""

from __future__ import annotations

import types


def add_pair_options(parser, json_default: str) -> None:
    parser.add_argument("--teacher", default="smollm2-135m-instruct")
    parser.add_argument("--student", default=None, help="default: cut --student-layers from the teacher")
    parser.add_argument("--student-layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8, help="prompts, all in one batch")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=json_default)


def load_pair(args, console):
    """The teacher, the student (``--student`` or a cut of the teacher), its tokenizer, its logit width and the
    first ``--batch`` prompts of the embedded data set in the family's prompt format, as a namespace."""
    from minillm_cli.data.instructions import load_instructions
    from minillm_cli.data.tokenization import tokenize_prompts
    from minillm_cli.models.load import load_model, load_tokenizer, logit_width, resolve_model
    from minillm_cli.runs.prepare import ensure_hf_directory, student_from_teacher

    teacher_ref = ensure_hf_directory(resolve_model(args.teacher), console)
    student_ref = resolve_model(args.student) if args.student else student_from_teacher(teacher_ref, args.student_layers)
    tokenizer = load_tokenizer(student_ref)
    teacher, student = load_model(teacher_ref), load_model(student_ref)
    examples = load_instructions("default", limit=args.batch)
    prompts, _, _ = tokenize_prompts(examples, tokenizer, prompt_format=teacher_ref.family.prompt_format,
                                     add_bos=teacher_ref.family.add_bos)
    return types.SimpleNamespace(teacher=teacher, student=student, tokenizer=tokenizer, width=logit_width(student),
                                 prompts=prompts)
