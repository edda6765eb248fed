"""`minillm convert tokenizer` (convert/tokenizer.py): a model given a new tokenizer, each new embedding row from
the old rows of its text; known answers on tiny models."""

import pytest
import torch

from minillm_cli import MinillmError
from minillm_cli.convert.tokenizer import give_tokenizer
from minillm_cli.testing import make_tiny_byte_fallback_tokenizer, make_tiny_model


def load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny untied llama with a byte-fallback tokenizer (420 tokens)."""
    tokenizer = make_tiny_byte_fallback_tokenizer()
    return make_tiny_model(tmp_path_factory.mktemp("src") / "model", "llama", vocab_size=len(tokenizer), seed=4,
                           tokenizer=tokenizer)


def test_the_same_tokenizer_keeps_every_row(source, tmp_path):
    give_tokenizer(str(source), tmp_path / "out", tokenizer=str(source))
    (old, _), (new, tokenizer) = load(source), load(tmp_path / "out")
    assert len(tokenizer) == old.config.vocab_size
    torch.testing.assert_close(new.get_input_embeddings().weight, old.get_input_embeddings().weight, rtol=0, atol=0)
    torch.testing.assert_close(new.get_output_embeddings().weight, old.get_output_embeddings().weight, rtol=0, atol=0)


def test_a_trained_byte_level_tokenizer_gets_rows_from_the_text_of_its_tokens(source, tmp_path):
    from minillm_cli.models.alignment import token_spellings

    report = give_tokenizer(str(source), tmp_path / "out", train_on="default", vocab_size=320)
    assert report.passed and "320 tokens (was 420" in report.summary()
    (old, old_tok), (new, new_tok) = load(source), load(tmp_path / "out")
    assert len(new_tok) == 320 and new.config.vocab_size == 320 and new.config.eos_token_id == new_tok.eos_token_id
    assert new_tok.eos_token == old_tok.eos_token and new_tok.bos_token == old_tok.bos_token
    old_in, new_in = old.get_input_embeddings().weight, new.get_input_embeddings().weight
    old_out, new_out = old.get_output_embeddings().weight, new.get_output_embeddings().weight
    spellings = token_spellings(new_tok)
    # The end-of-sequence row is the old one.
    torch.testing.assert_close(new_in[new_tok.eos_token_id], old_in[old_tok.eos_token_id], rtol=0, atol=0)
    # A byte the old tokenizer has as a byte-fallback token: that row, in and out.
    byte = new_tok.convert_tokens_to_ids("Ā")   # byte 0x00 in the byte-level alphabet
    assert spellings[byte] == b"\x00"
    torch.testing.assert_close(new_in[byte], old_in[old_tok.convert_tokens_to_ids("<0x00>")], rtol=0, atol=0)
    torch.testing.assert_close(new_out[byte], old_out[old_tok.convert_tokens_to_ids("<0x00>")], rtol=0, atol=0)
    # A merged token the old vocabulary lacks: the mean of the old rows of its text.
    old_strings = {s for s in token_spellings(old_tok) if s}
    merged = next(i for i, s in enumerate(spellings) if s and len(s) > 3 and s not in old_strings and s.isascii())
    old_ids = old_tok(spellings[merged].decode(), add_special_tokens=False)["input_ids"]
    assert len(old_ids) > 1
    torch.testing.assert_close(new_in[merged], old_in[old_ids].mean(0), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(new_out[merged], old_out[old_ids].mean(0), rtol=1e-6, atol=1e-7)


def test_the_new_tokenizer_is_given_exactly_once_and_big_enough(source, tmp_path):
    with pytest.raises(MinillmError, match="exactly one of --tokenizer"):
        give_tokenizer(str(source), tmp_path / "a")
    with pytest.raises(MinillmError, match="exactly one of --tokenizer"):
        give_tokenizer(str(source), tmp_path / "b", tokenizer=str(source), train_on="default")
    with pytest.raises(MinillmError, match="--vocab-size 100 is too small"):
        give_tokenizer(str(source), tmp_path / "c", train_on="default", vocab_size=100)


def test_the_command(source, tmp_path, capsys):
    from conftest import run_cli

    code, out, err = run_cli(capsys, "convert", "tokenizer", str(source), str(tmp_path / "out"), "--train-on", "default",
                             "--vocab-size", "300")
    assert code == 0, err
    assert "300 tokens (was 420" in out.replace("\n", " ")
    text = tmp_path / "little.txt"
    text.write_text("red green blue\nred and green\n")
    code, out, err = run_cli(capsys, "convert", "tokenizer", str(source), str(tmp_path / "big"), "--train-on", str(text),
                             "--vocab-size", "1000")
    assert code == 0, err
    assert "gave only" in out.replace("\n", " ") and "train on more text" in out.replace("\n", " ")
