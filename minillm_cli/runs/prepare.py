"""From a validated config to a finished run: models, vocabulary check, data, objective, engine."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import MinillmError


@dataclass
class Prepared:
    engine: object
    teacher_ref: object
    student_ref: object
    counts: dict


def _digest(*parts) -> str:
    return hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()[:12]


def ensure_hf_directory(ref, console=None):
    """GGUF weights are dequantised on every load (tens of seconds): convert once into MINILLM_HOME."""
    if not ref.gguf_file:
        return ref
    from ..convert.gguf import convert_gguf
    from ..models.load import resolve_model
    from ..paths import models_home

    source = Path(ref.source) / ref.gguf_file
    name = ref.spec.lower() if ref.spec.lower() in ref.family.aliases else f"{source.stem}-{_digest(source.resolve(), source.stat().st_size)}"
    target = models_home() / name
    from ..atomic import file_lock, lock_path

    with file_lock(lock_path(target)):   # the processes of a run convert it once
        if not (target / "config.json").is_file():
            if console:
                console.print(f"converting {source.name} to a Hugging Face directory in {target} (once)")
            convert_gguf(str(source), target, overwrite=True)
    return resolve_model(str(target), family=ref.family.name)


def student_from_teacher(teacher_ref, num_layers: int, console=None):
    """The default student: ``num_layers`` of the teacher's blocks, evenly spread, cached in MINILLM_HOME."""
    from ..convert.layers import cut_layers
    from ..models.load import resolve_model
    from ..paths import models_home

    source = Path(teacher_ref.source).resolve() if teacher_ref.local else teacher_ref.source
    target = models_home() / "students" / f"{Path(str(source)).name}-{num_layers}L-{_digest(source, num_layers)}"
    from ..atomic import file_lock, lock_path

    with file_lock(lock_path(target)):   # the processes of a run cut it once
        if not (target / "config.json").is_file():
            if console:
                console.print(f"cutting a {num_layers}-layer student from {teacher_ref.spec} into {target} (once)")
            cut_layers(teacher_ref.display, target, num_layers=num_layers, overwrite=True,
                       num_layers_option="student_layers")
    return resolve_model(str(target), family=teacher_ref.family.name)


SAMPLED = {"student_samples", "teacher_samples", "mixed_samples"}


def _check_context(models, examples, needs, config) -> None:
    """Before the first step: the longest gold, sampled and validation sequence must fit every model's positions."""
    from ..models.context import check_fits

    if not examples:
        return
    longest_prompt = max(len(e.prompt_ids) for e in examples)
    lengths = {"gold": max(len(e.prompt_ids) + len(e.response_ids) for e in examples)}
    if config.eval.rouge_examples:   # greedy validation responses
        lengths["validation"] = longest_prompt + config.eval.max_new_tokens
    if needs & SAMPLED:
        lengths["sampled"] = longest_prompt + config.generation.max_new_tokens
    kind, tokens = max(lengths.items(), key=lambda item: item[1])
    fix = ("lower generation.max_new_tokens, eval.max_new_tokens, data.max_prompt_tokens or "
           "data.max_response_tokens")
    for model in models:
        if model is not None:
            check_fits(model, tokens, f"{kind} sequences (prompts of up to {longest_prompt} tokens)", fix)


def prepare(config, objective_options, *, console=None, progress: bool = True, config_yaml: str = "") -> Prepared:
    from ..data.instructions import RUN_FIELDS_HINT, load_instructions
    from ..data.prompts import resolve_prompt_format
    from ..data.splits import train_valid_split
    from ..data.texts import load_texts, pack_texts
    from ..data.tokenization import tokenize_examples
    import time

    from ..training.engine import Engine, EngineData
    from ..models.device import pick_device
    from ..models.generation import SamplingConfig
    from ..models.load import load_model, load_tokenizer, logit_width, resolve_model
    from ..objective import DataContext
    from ..paths import minillm_home
    from ..plugins import get_objective
    from ..serving.client import is_served
    from ..models.vocab import check_vocab

    started_at = time.monotonic()   # train.max_minutes counts model loading and data preparation too
    objective = get_objective(config.objective["name"])(objective_options)
    needs = set(objective.needs)
    teacher_cache = None
    served_url = config.teacher if is_served(config.teacher) else None
    if config.cross_tokenizer:   # refused before any model is loaded (docs/cross-tokenizer.md)
        from ..training.cross_teacher import check_objective as check_cross_tokenizer

        if served_url or config.data.teacher_logits:
            raise MinillmError("--cross-tokenizer re-tokenises every batch for a teacher loaded here; drop the served "
                               "teacher or data.teacher_logits, whose log-probabilities are in the student's tokens")
        check_cross_tokenizer(objective)
    if served_url:
        if config.student is None or config.data.teacher_logits:
            raise MinillmError(
                f"teacher {served_url} is served: name the student (--student MODEL; it cannot be cut from a teacher "
                "this machine does not hold) and drop data.teacher_logits (the server stands in for the teacher)")
        needs -= {"teacher", "teacher_samples", "mixed_samples"}   # the server answers for it: never loaded here
    elif config.data.teacher_logits:
        from ..training.teacher_cache import TeacherCache, check_objective

        check_objective(objective)
        teacher_cache = TeacherCache.load(config.data.teacher_logits)
        needs.discard("teacher")   # the cached log-probabilities stand in for it: the teacher is never loaded
    teacher_ref = None if served_url else ensure_hf_directory(resolve_model(config.teacher, config.teacher_family), console)
    if config.student is None:
        student_ref = student_from_teacher(teacher_ref, config.student_layers, console)
    else:
        student_ref = ensure_hf_directory(resolve_model(config.student, config.student_family), console)
    trust = config.trust_remote_code   # off unless the user asked: model code is arbitrary Python
    tokenizer = load_tokenizer(student_ref, trust_remote_code=trust)
    uses_teacher = bool(needs & {"teacher", "teacher_samples", "mixed_samples"})
    teacher = None
    width = None
    student = load_model(student_ref, trainable=True, trust_remote_code=trust)
    if config.train.lora.r > 0:   # only the adapters train (docs/scaling.md)
        from ..training.lora import apply_lora

        student = apply_lora(student, config.train.lora, seed=config.train.seed)
    if uses_teacher:
        # Checked before any forward pass: token-level objectives compare distributions entry by entry.
        teacher_tokenizer = load_tokenizer(teacher_ref, trust_remote_code=trust)
        placement = None
        if config.parallel.teacher_shard == "device_map":   # a teacher larger than one device, spread over several
            from ..training.sharding import teacher_device_map

            placement = teacher_device_map()
        teacher = load_model(teacher_ref, dtype=config.train.teacher_dtype, trust_remote_code=trust, placement=placement)
        check = check_vocab(
            teacher_tokenizer, tokenizer, logit_width(teacher), logit_width(student), trim=config.trim_vocab,
            cross_tokenizer=config.cross_tokenizer,
        )
        width = check.width
        if check.cross_tokenizer:   # the engine reaches this teacher through the aligned teacher only
            from ..models.alignment import Aligner
            from ..training.cross_teacher import CrossTokenizerTeacher

            aligner = Aligner(teacher_tokenizer, tokenizer, teacher_bos=teacher_ref.family.add_bos)
            teacher_cache = CrossTokenizerTeacher(teacher, aligner, width=logit_width(teacher), student_width=width)
            teacher = None
        if check.trimmed and console:
            console.print(f"distilling over the {width} shared vocabulary entries (trim_vocab)")
    else:
        width = logit_width(student)
    served_teacher = None
    if served_url:   # the tokenizer check, against the server's (docs/serving.md)
        from ..serving.teacher import ServedTeacher

        served_teacher = ServedTeacher.connect(served_url, tokenizer, width, config.teacher_topk,
                                               family=student_ref.family, trim=config.trim_vocab)
        width, teacher_ref = served_teacher.width, served_teacher.ref
        teacher_cache = served_teacher     # scored like cached logits: the same k + 1 buckets, from the server

    data_cfg = config.data
    examples = load_instructions(data_cfg.train, fields=data_cfg.fields, split=data_cfg.train_split, limit=data_cfg.limit,
                                 fields_hint=RUN_FIELDS_HINT)
    if not examples:
        raise MinillmError(
            f"no training examples in '{data_cfg.train}' (it is empty, or holds only blank lines or a header); "
            "give data.train a file with instruction and output records"
        )
    train_examples, valid_examples = train_valid_split(examples, data_cfg)
    prompt_format = resolve_prompt_format(data_cfg, student_ref.family)
    g = config.generation
    data_context = DataContext(
        teacher=teacher_ref.display, teacher_family=teacher_ref.family.name, cache_dir=minillm_home() / "seqkd",
        prompt_format=prompt_format, max_prompt_tokens=data_cfg.max_prompt_tokens,
        generation=SamplingConfig(temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
                                  max_new_tokens=g.max_new_tokens, no_repeat_ngram_size=g.no_repeat_ngram_size),
        dtype=config.train.teacher_dtype, device=pick_device(config.device), batch_size=g.batch_size,
        seed=config.train.seed, served_teacher=served_teacher,
    )
    train_examples = objective.prepare_data(train_examples, data_context)
    tokenize = dict(
        prompt_format=prompt_format, add_bos=student_ref.family.add_bos,
        max_prompt_tokens=data_cfg.max_prompt_tokens, max_response_tokens=data_cfg.max_response_tokens,
    )
    train_tok = tokenize_examples(train_examples, tokenizer, **tokenize)
    valid_tok = tokenize_examples(valid_examples, tokenizer, **tokenize)
    if not train_tok.examples:
        raise MinillmError(
            f"no training examples left from '{data_cfg.train}' after dropping {train_tok.dropped_long_prompt} "
            f"prompts over {data_cfg.max_prompt_tokens} tokens; raise data.max_prompt_tokens or check the data"
        )
    _check_context([student, teacher], train_tok.examples + valid_tok.examples, needs, config)
    if config.data.teacher_logits:   # a file holds only the examples it was made from
        teacher_cache.check(train_tok.examples, width)
    lm_chunks = None
    if "lm_chunks" in needs:
        lm_chunks = pack_texts(load_texts(data_cfg.lm_corpus or "default", text_field=data_cfg.lm_text_fields), tokenizer, chunk_tokens=data_cfg.lm_chunk_tokens)
    data = EngineData(
        train=train_tok.examples,
        valid=valid_tok.examples,
        valid_references=[valid_examples[e.index].references for e in valid_tok.examples],
        lm_chunks=lm_chunks,
    )
    suite_validation = None
    if config.eval.suites:   # extra suites at every validation, through the evaluator plugins
        from ..evaluation.validation import SuiteValidation

        suite_validation = SuiteValidation(config, tokenizer=tokenizer, prompt_format=prompt_format,
                                           add_bos=student_ref.family.add_bos, vocab_width=width)
    engine = Engine(
        config=config, objective=objective, student=student, teacher=teacher, tokenizer=tokenizer, data=data,
        vocab_width=width, output_dir=Path(config.output_dir), config_yaml=config_yaml, console=console,
        progress=progress, started_at=started_at, teacher_cache=teacher_cache, suite_validation=suite_validation,
        served_teacher=served_teacher,
    )
    counts = {
        "train": len(train_tok.examples), "valid": len(valid_tok.examples),
        "dropped_long_prompts": train_tok.dropped_long_prompt + valid_tok.dropped_long_prompt,
        "truncated_responses": train_tok.truncated_responses, "steps": engine.total_steps,
    }
    return Prepared(engine, teacher_ref, student_ref, counts)
