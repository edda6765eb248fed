"""Tiny random-init models and tokenizers for tests, for minillm itself and for plugin authors.

Everything here is built offline in a second or two: a byte-level BPE tokenizer trained on a few sentences
and a two-layer model of any builtin family, saved as a normal Hugging Face directory.
"""

from __future__ import annotations

from pathlib import Path

TINY_CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\n### Input:\n### Response:\n",
    "The capital of France is Paris. The capital of Italy is Rome. Two plus two is four.",
    "List three colours: red, green, blue. Rewrite the sentence in plain words.",
    "Is this review positive or negative? The film was wonderful and the music was lovely.",
    "Water boils at one hundred degrees Celsius at sea level. Cats and dogs are animals.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 + - * / = ? ! , . : ; ' \" ( ) [ ] { }",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_tiny_tokenizer(vocab_size: int = 384, extra_tokens: tuple[str, ...] = (), corpus=None):
    """A byte-level BPE tokenizer (every string is encodable) with ``vocab_size`` entries."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(extra_tokens),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus or TINY_CORPUS) * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    if extra_tokens:
        fast.add_tokens(list(extra_tokens))
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_byte_fallback_tokenizer(vocab_size: int = 420, corpus=None):
    """A SentencePiece-style BPE tokenizer (``▁`` marks spaces, ``<0xNN>`` byte-fallback tokens for any character it
    lacks, as Llama's and Mistral's) with ``vocab_size`` entries: the other kind of tokenizer for cross-tokenizer
    tests. Its special tokens are ``<unk>``, ``<s>`` (BOS) and ``</s>`` (EOS); no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence([
        decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{byte:02X}>" for byte in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, limit_alphabet=40, show_progress=False)
    tokenizer.train_from_iterator(list(corpus or TINY_CORPUS) * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def tiny_config(family: str, vocab_size: int, layers: int = 2, hidden: int = 32, **overrides):
    """A tiny config of a builtin family's architecture."""
    import transformers as tf

    heads = 2
    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "gpt2":
        config = tf.GPT2Config(n_layer=layers, n_embd=hidden, n_head=heads, n_positions=512, **common)
    elif family == "opt":
        config = tf.OPTConfig(
            num_hidden_layers=layers, hidden_size=hidden, ffn_dim=2 * hidden, num_attention_heads=heads,
            max_position_embeddings=512, word_embed_proj_dim=hidden, **common,
        )
    elif family in ("llama", "smollm2", "mistral", "qwen2", "gemma"):
        cls = {
            "llama": tf.LlamaConfig, "smollm2": tf.LlamaConfig, "mistral": tf.MistralConfig,
            "qwen2": tf.Qwen2Config, "gemma": tf.GemmaConfig,
        }[family]
        extra = {"head_dim": hidden // heads} if family == "gemma" else {}
        config = cls(
            hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=1, max_position_embeddings=512,
            tie_word_embeddings=family in ("smollm2", "gemma"), **extra, **common,
        )
    else:
        raise ValueError(f"no tiny config for family '{family}'")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def make_tiny_model(
    path: str | Path,
    family: str = "llama",
    vocab_size: int = 384,
    layers: int = 2,
    hidden: int = 32,
    seed: int = 0,
    tokenizer=None,
    **config_overrides,
) -> Path:
    """Save a random-init model and tokenizer of ``family`` to ``path``; returns the path.

    The model's embedding has ``vocab_size`` rows; pass a larger value than the tokenizer's length to mimic
    padded vocabularies.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else make_tiny_tokenizer()
    config = tiny_config(family, vocab_size, layers=layers, hidden=hidden, **config_overrides)
    eos = tokenizer.eos_token_id
    config.bos_token_id = config.eos_token_id = config.pad_token_id = eos
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # Random init with std 0.02 gives nearly uniform outputs; larger weights make distributions peaked and
    # asymmetric, so that divergence tests have something to measure.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
