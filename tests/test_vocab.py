import pytest

from minillm_cli import MinillmError
from minillm_cli.testing import make_tiny_tokenizer
from minillm_cli.models.vocab import check_vocab


class FakeTokenizer:
    """Just enough of a tokenizer for the vocabulary check: ``size`` tokens, optionally renamed ones."""

    def __init__(self, size, renamed=()):
        self.vocab = {f"tok{i}": i for i in range(size)}
        for i in renamed:
            self.vocab[f"other{i}"] = self.vocab.pop(f"tok{i}")

    def get_vocab(self):
        return dict(self.vocab)

    def __len__(self):
        return len(self.vocab)


def test_identical_vocabularies_pass():
    tok = make_tiny_tokenizer()
    check = check_vocab(tok, tok, 384, 384)
    assert (check.width, check.trimmed) == (384, False)


def test_padded_vocabulary_case_is_explained_and_trimmable():
    # Qwen2.5: 151665 tokens; the 7B pads its embedding to 152064 rows, the 0.5B to 151936.
    teacher, student = FakeTokenizer(151665), FakeTokenizer(151665)
    with pytest.raises(MinillmError) as info:
        check_vocab(teacher, student, 152064, 151936)
    message = str(info.value)
    assert "same 151665 tokens" in message and "152064" in message and "151936" in message
    assert "padding" in message and "--trim-vocab" in message
    check = check_vocab(teacher, student, 152064, 151936, trim=True)
    assert (check.width, check.trimmed) == (151665, True)


def test_added_tokens_agree_on_the_shared_prefix():
    base = make_tiny_tokenizer()
    extended = make_tiny_tokenizer(vocab_size=386, extra_tokens=("<tool>", "<think>"))
    assert len(extended) == len(base) + 2
    with pytest.raises(MinillmError, match="agree on the first 384 tokens.*--trim-vocab"):
        check_vocab(base, extended, 384, 386)
    assert check_vocab(base, extended, 384, 386, trim=True).width == 384


def test_different_tokenizers_are_refused_even_with_trim():
    with pytest.raises(MinillmError, match=r"tokenizers differ .*id 5 is 'tok5' in the teacher but 'other5'.*same model family"):
        check_vocab(FakeTokenizer(100), FakeTokenizer(100, renamed=(5,)), 100, 100, trim=True)
    with pytest.raises(MinillmError, match="tokenizers differ"):
        other = make_tiny_tokenizer(384, corpus=["zebra quokka xylophone " * 20, "jumping wizards vex quickly"])
        check_vocab(make_tiny_tokenizer(384), other, 384, 384, trim=True)


def test_cross_tokenizer_accepts_different_tokenizers_and_the_refusal_names_the_flag():
    teacher, student = FakeTokenizer(100), FakeTokenizer(90, renamed=(5,))
    with pytest.raises(MinillmError, match=r"tokenizers differ .*--cross-tokenizer \(recipe: cross_tokenizer: true\)"):
        check_vocab(teacher, student, 100, 90)
    check = check_vocab(teacher, student, 100, 90, cross_tokenizer=True)
    assert (check.width, check.cross_tokenizer, check.shared_tokens) == (90, True, 5)
    assert check_vocab(teacher, teacher, 100, 100, cross_tokenizer=True).cross_tokenizer


def test_tokenizer_larger_than_model_is_refused():
    with pytest.raises(MinillmError, match="do not belong together"):
        check_vocab(FakeTokenizer(120), FakeTokenizer(120), 100, 128, trim=True)
