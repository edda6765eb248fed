"""Prompt templates: Alpaca (docs/method.md §3) or the tokenizer's chat template, and which one a run uses."""

from __future__ import annotations

from typing import Mapping

from ..errors import MinillmError, unknown_name
from ..models.family import PROMPT_FORMATS

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


def _instruction_and_input(example) -> tuple:
    if isinstance(example, Mapping):
        return example.get("instruction", ""), example.get("input") or ""
    return example.instruction, example.input or ""


def format_prompt(example, prompt_format: str = "alpaca", tokenizer=None) -> str:
    """The prompt text of ``example``: the Alpaca template of docs/method.md §3, or the tokenizer's chat template."""
    instruction, input_text = _instruction_and_input(example)
    if prompt_format == "alpaca":
        # The reference code tests for an empty input (len == 0), not a blank one; so do we.
        if input_text:
            return ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
        return ALPACA_PROMPT.format(instruction=instruction)
    if prompt_format == "chat":
        if tokenizer is None:
            raise MinillmError("prompt_format 'chat' needs the model's tokenizer")
        if not getattr(tokenizer, "chat_template", None):
            raise MinillmError(
                f"the tokenizer {getattr(tokenizer, 'name_or_path', '') or ''} has no chat template; "
                "use prompt_format alpaca"
            )
        content = instruction + ("\n\n" + input_text if input_text else "")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    raise unknown_name("prompt format", str(prompt_format), PROMPT_FORMATS)


def resolve_prompt_format(data_config, family) -> str:
    """The prompt format of a run: ``data.prompt_format`` when set, else the student family's (alpaca or chat)."""
    return data_config.prompt_format or family.prompt_format
