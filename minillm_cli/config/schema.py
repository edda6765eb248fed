"""The configuration of a distillation run: the schema, each field with its default, help, choices and range.

A recipe (YAML) and the command line fill it; ``recipes.py`` loads and merges them, and the typed validator
(``validate.py``) checks every value against its field: the annotation, then the ``choices`` and the ``rule``
given to ``option`` (every error at once). The defaults are the embedded default job: SmolLM2-135M-Instruct
teaching a 6-layer student cut from it, on the embedded instruction data, for a few minutes on a laptop CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .validate import NOT_EMPTY, Rule, at_least, greater_than
from ..models.family import PROMPT_FORMATS
from ..objective import option

PRECISIONS = ("fp32", "bf16", "fp16")
OFFLOAD_TARGETS = ("none", "cpu", "nvme")


@dataclass
class DataConfig:
    train: str = option("default", "Training data: 'default' (embedded), a JSONL/JSON/CSV/Parquet file, a directory or a dataset name.")
    train_split: Optional[str] = option(None, "Split to read from a directory or dataset.")
    valid: Optional[str] = option(None, "Validation data; null splits it off the training data (valid_size).")
    valid_size: float = option(0.1, "Fraction (< 1) or number of training examples held out for validation.", rule=at_least(0))
    limit: Optional[int] = option(None, "Use only the first N training examples.", rule=greater_than(0))
    fields: Optional[str] = option(None, "Field mapping, e.g. 'instruction=question,output=answer'.")
    prompt_format: Optional[str] = option(None, "alpaca or chat; null uses the model family's.", choices=PROMPT_FORMATS)
    max_prompt_tokens: int = option(256, "Prompts longer than this are dropped (docs/method.md §3).", rule=greater_than(0))
    max_response_tokens: int = option(256, "Gold responses are truncated to this many tokens.", rule=greater_than(0))
    lm_corpus: Optional[str] = option(None, "Plain-text corpus for objectives with a language-modelling term.")
    lm_chunk_tokens: int = option(512, "Length of the packed plain-text chunks.", rule=greater_than(0))
    lm_text_fields: list = field(default_factory=lambda: ["text"], metadata={"help": "Fields whose text makes a document of a JSONL/JSON/CSV/Parquet lm_corpus, joined by a blank line (empty ones skipped), e.g. [instruction, input, output] to read instruction data as plain text."})
    teacher_logits: Optional[str] = option(None, "Cached top-k teacher log-probabilities (`minillm generate --save-logits K` writes X.logits.safetensors): kd, rkl, gkd (lmbda 0) and distillm (off-policy) train from them without loading the teacher.")
    seed: int = option(0, "Seed of the train/validation split.")


@dataclass
class LoraConfig:
    r: int = option(0, "LoRA rank of the student's adapters (peft); 0 = full fine-tuning, no adapters.", rule=at_least(0))
    alpha: float = option(16.0, "LoRA scaling α: the adapter's update is scaled by α / r.", rule=greater_than(0))
    dropout: float = option(0.0, "Dropout on the adapter's input.", rule=Rule(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    target_modules: Optional[list] = option(None, "Module names to adapt, e.g. [q_proj, v_proj]; null = every linear layer of the blocks (peft's 'all-linear').")
    merge_on_export: bool = option(True, "Exports (final, best) hold the merged full model with the adapter in adapter/; false: the adapter only (merge it later with `minillm convert merge-lora`).")


@dataclass
class TrainConfig:
    steps: Optional[int] = option(None, "Optimizer steps; null derives them from epochs.", rule=greater_than(0))
    epochs: float = option(2.0, "Passes over the training data (when steps is null).", rule=greater_than(0))
    max_minutes: Optional[float] = option(None, "Wall-time budget: stop at the first optimizer step that ends after this many minutes since the run began (model loading, data preparation such as SeqKD's teacher generation, and validation count, and so does the time before a resume), then validate, save and export final as at the last step; steps (or epochs) still set the learning-rate schedule. null = no budget.", rule=greater_than(0))
    batch_size: int = option(8, "Sequences per micro-batch.", rule=greater_than(0))
    grad_accum: int = option(1, "Micro-batches per optimizer step.", rule=greater_than(0))
    lr: float = option(5e-4, "Peak learning rate.", rule=greater_than(0))
    schedule: str = option("cosine", "constant, constant_with_warmup, linear or cosine.", choices=("constant", "constant_with_warmup", "linear", "cosine"))
    warmup_steps: int = option(5, "Linear warm-up steps.", rule=at_least(0))
    min_lr: float = option(1e-7, "Final learning rate of the cosine schedule (docs/method.md §2).", rule=at_least(0))
    weight_decay: float = option(1e-6, "AdamW weight decay (docs/method.md §2).", rule=at_least(0))
    betas: list = option((0.9, 0.95), "AdamW betas (docs/method.md §2).", rule=Rule(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "must be two numbers in [0, 1), e.g. [0.9, 0.95]"))
    eps: float = option(1e-8, "AdamW epsilon.", rule=greater_than(0))
    max_grad_norm: float = option(1.0, "Gradient clipping norm; 0 disables clipping.", rule=at_least(0))
    precision: str = option("fp32", "Student training precision: fp32, bf16 or fp16 (mixed precision).", choices=PRECISIONS)
    teacher_dtype: str = option("fp32", "Teacher weights dtype: fp32, bf16 or fp16.", choices=PRECISIONS)
    chunk_tokens: Optional[int] = option(1024, "Tokens per chunk when computing losses over the vocabulary; null = all at once.", rule=greater_than(0))
    seed: int = option(0, "Seed of initialisation order, sampling and data order.")
    max_bad_steps: int = option(5, "Stop after this many steps in a row with a NaN/Inf loss or gradient (each is skipped: no update); 0 = never stop.", rule=at_least(0))
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": "LoRA adapters on the student (train.lora.r > 0); needs peft (the scale extra)."})


@dataclass
class GenerationConfig:
    temperature: float = option(1.0, "Sampling temperature for on-policy samples (docs/method.md §2).", rule=at_least(0))
    top_k: int = option(0, "Top-k filtering; 0 = off.", rule=at_least(0))
    top_p: float = option(1.0, "Nucleus threshold; 1 = off.", rule=Rule(lambda v: 0 < v <= 1, "must be in (0, 1]"))
    max_new_tokens: int = option(256, "Maximum new tokens per sampled response.", rule=greater_than(0))
    no_repeat_ngram_size: int = option(0, "Forbid repeated n-grams of this size; 0 = off.", rule=at_least(0))
    batch_size: int = option(8, "Prompts per generation batch (SeqKD's teacher generation).", rule=greater_than(0))


@dataclass
class EvalConfig:
    every: int = option(40, "Validate every N optimizer steps; 0 = only at the end.", rule=at_least(0))
    max_examples: int = option(64, "Validation examples used for the loss.", rule=at_least(0))
    rouge_examples: int = option(32, "Validation prompts decoded for Rouge-L; 0 = skip Rouge-L.", rule=at_least(0))
    max_new_tokens: int = option(64, "New tokens per validation response (greedy decoding).", rule=greater_than(0))
    select_by: str = option("rougeL", "Best checkpoint by 'rougeL' (higher is better) or 'loss' (lower).", choices=("rougeL", "loss"))
    patience: int = option(0, "Stop training after this many validations in a row (eval.every) without a better select_by metric, and export final as at the last step; 0 = never stop early.", rule=at_least(0))
    before_after: bool = option(True, "Evaluate the student before training and at the end, side by side.")
    own_samples_kl: bool = option(False, "Also measure KL(student ‖ teacher) per token on responses the student samples itself (temperature 1) for the Rouge-L prompts: the quantity MiniLLM minimises (valid_rkl_own_samples).")
    suites: list = field(default_factory=list, metadata={"help": "Extra evaluation suites (evaluator plugins, as in `minillm eval --suite`) run at each validation, e.g. [selfinst]; logged as valid_<suite>_<metric>."})
    suite_examples: int = option(16, "Examples per extra suite at each validation.")
    suite_seeds: list = field(default_factory=lambda: [10], metadata={"help": "Generation seeds of the extra suites (sampling as the paper, max_new_tokens above)."})
    data_dir: Optional[str] = option(None, "Where the extra suites find their data, like `minillm eval --data-dir`.")


@dataclass
class CheckpointConfig:
    every: int = option(40, "Save a resumable checkpoint every N steps; 0 = only at the end and on Ctrl-C.", rule=at_least(0))
    keep: int = option(2, "Resumable checkpoints kept (the oldest are deleted).", rule=greater_than(0))


@dataclass
class ParallelConfig:
    engine: str = option("accelerate", "accelerate (data parallel: every process holds the whole student) or deepspeed (ZeRO: optimizer state, gradients and, at stage 3, parameters partitioned across processes).", choices=("accelerate", "deepspeed"))
    zero_stage: int = option(2, "ZeRO stage with engine deepspeed: 0 (plain data parallel), 1 (optimizer state), 2 (+ gradients) or 3 (+ parameters).", rule=Rule(lambda v: v in (0, 1, 2, 3), "must be 0, 1, 2 or 3"))
    offload_optimizer: str = option("none", "engine deepspeed: keep the optimizer state in 'cpu' memory or on 'nvme' (nvme_path); 'none' keeps it on the device.", choices=OFFLOAD_TARGETS)
    offload_params: str = option("none", "engine deepspeed, ZeRO-3: keep the parameters in 'cpu' memory or on 'nvme'; 'none' keeps them on the device.", choices=OFFLOAD_TARGETS)
    nvme_path: Optional[str] = option(None, "Directory for nvme offloading.")
    deepspeed_config: Optional[str] = option(None, "A DeepSpeed JSON config of your own (engine deepspeed); minillm fills its batch sizes, accumulation, clipping and precision from train ('auto' or absent), and refuses optimizer/scheduler sections (train.* defines them).")
    teacher_shard: str = option("none", "none (each process holds the whole teacher), device_map (each process spreads the teacher over its visible GPUs) or zero3 (the teacher partitioned across processes, DeepSpeed ZeRO-3 inference).", choices=("none", "device_map", "zero3"))


@dataclass
class WarmStartConfig:
    steps: int = option(0, "Optimizer steps of a warm start before the run: the student is first trained with warm_start.objective (cross-entropy on the gold responses by default) as a run of its own in OUTPUT/warm_start, whose best export becomes this run's student; the paper starts MiniLLM from an SFT-initialised student (docs/method.md §2). 0 = none: the student as given.", rule=at_least(0))
    objective: str = option("sft", "Objective of the warm start (its default options).", rule=NOT_EMPTY)
    lr: float = option(5e-4, "Peak learning rate of the warm start (its schedule, batch size and validation are the run's).", rule=greater_than(0))


@dataclass
class DistillConfig:
    teacher: str = option("smollm2-135m-instruct", "Teacher: alias, hub id, model directory or .gguf file; or a server's API root, http(s)://HOST:PORT/v1 (`minillm serve` or vLLM, docs/serving.md).", rule=NOT_EMPTY)
    teacher_topk: int = option(20, "A served teacher's top-k log-probabilities per token (k + 1 buckets, as data.teacher_logits); vLLM allows at most its --max-logprobs (default 20).", rule=greater_than(0))
    student: Optional[str] = option(None, "Student; null cuts one from the teacher (student_layers).")
    student_layers: int = option(6, "Layers kept, evenly spread, when the student is cut from the teacher.", rule=greater_than(0))
    teacher_family: Optional[str] = option(None, "Teacher's model family when it cannot be detected.")
    student_family: Optional[str] = option(None, "Student's model family when it cannot be detected.")
    trim_vocab: bool = option(False, "Distil over the shared vocabulary when the logit widths differ.")
    cross_tokenizer: bool = option(False, "Teacher and student may have different tokenizers: the same text is tokenised for each and the two are aligned by character offsets (docs/cross-tokenizer.md); kd, rkl, tvd, gkd, distillm, seqkd, and minillm with alpha 0.")
    trust_remote_code: bool = option(False, "Run Python code shipped with the teacher/student (auto_map); only for models you trust.")
    objective: dict = option(None, "Objective name and options: {name: kd, ratio: 0.5}.")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Training and validation data."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Optimisation."})
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig, metadata={"help": "A warm start of the student (SFT) before the run, in OUTPUT/warm_start."})
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={"help": "Sampling."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Validation."})
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig, metadata={"help": "Checkpoints."})
    parallel: ParallelConfig = field(default_factory=ParallelConfig, metadata={"help": "Training across processes and machines: engine, ZeRO, offloading, teacher sharding (docs/scaling.md)."})
    output_dir: str = option("runs/default", "Where checkpoints, the exported students and metrics go.", rule=NOT_EMPTY)
    device: Optional[str] = option(None, "cpu, cuda, cuda:1, …; null picks cuda when available.")

    def __post_init__(self):
        if self.objective is None:
            self.objective = {"name": "kd"}


# Set by the loader: the objective's typed options (an instance of the objective's Options dataclass).
ObjectiveOptions = Any
