"""Two tokenisations of the same text, aligned (models/alignment.py): known answers, and the invariant that every
group spells the same bytes on both sides, on unicode, emoji, leading spaces, byte-fallback and special tokens."""

import pytest

from minillm_cli.models.alignment import (
    Aligner,
    aligned_groups,
    byte_ends,
    char_ends,
    shared_vocabulary,
    token_spellings,
)
from minillm_cli.testing import make_tiny_byte_fallback_tokenizer, make_tiny_tokenizer

TEXT = " Hi 😀 wörld, the capital  of France <|im_end|> ok"


@pytest.fixture(scope="module")
def byte_level():
    return make_tiny_tokenizer()


@pytest.fixture(scope="module")
def byte_fallback():
    return make_tiny_byte_fallback_tokenizer()


def spelled(tokenizer, ids) -> bytes:
    """What ids write: each token's spelling, a special token its name."""
    spellings = token_spellings(tokenizer)
    names = tokenizer.convert_ids_to_tokens(list(ids))
    return b"".join(spellings[i] if spellings[i] is not None else name.encode() for i, name in zip(ids, names))


def test_spellings_of_byte_level_and_byte_fallback_tokens(byte_level, byte_fallback):
    level = token_spellings(byte_level)
    assert level[byte_level.convert_tokens_to_ids("Ġ")] == b" " and level[byte_level.eos_token_id] is None
    assert level[byte_level.convert_tokens_to_ids("ð")] == b"\xf0"     # one byte of a four-byte emoji
    fallback = token_spellings(byte_fallback)
    assert fallback[byte_fallback.convert_tokens_to_ids("<0xF0>")] == b"\xf0"
    assert fallback[byte_fallback.convert_tokens_to_ids("▁")] == b" "
    assert fallback[byte_fallback.eos_token_id] is None


def test_identical_tokenizers_share_every_id_with_itself(byte_level, byte_fallback):
    for tokenizer in (byte_level, byte_fallback):
        shared = shared_vocabulary(tokenizer, tokenizer)
        assert shared.student_ids == shared.teacher_ids == tuple(range(len(tokenizer)))


def test_different_tokenizers_share_what_they_both_spell(byte_level, byte_fallback):
    shared = shared_vocabulary(byte_fallback, byte_level).teacher_of()
    ids = byte_level.convert_tokens_to_ids
    assert shared[ids("ð")] == byte_fallback.convert_tokens_to_ids("<0xF0>")   # the same byte
    assert shared[byte_level.eos_token_id] == byte_fallback.eos_token_id          # end of sequence with itself
    assert ids("<|im_end|>") not in shared                                        # a special token the other lacks
    assert len(set(shared.values())) == len(shared)                               # one-to-one


def test_byte_ends_place_the_pieces_of_one_character_inside_it():
    # "a😀": 'a' ends at character 1, the emoji's four byte pieces all at character 2 (offsets are in characters).
    spellings = [b"a", b"\xf0", b"\x9f", b"\x98", b"\x80"]
    assert byte_ends("a😀", [1, 2, 2, 2, 2], spellings) == [1, 2, 3, 4, 5]
    assert byte_ends("a😀", [1, 2], [b"a", "😀".encode()]) == [1, 5]


def pairs(groups):
    return [(g.student, g.teacher) for g in groups]


def test_groups_run_between_common_ends():
    assert pairs(aligned_groups([2, 4, 5, 7], [1, 2, 5, 6, 7])) == [((0,), (0, 1)), ((1, 2), (2,)), ((3,), (3, 4))]
    assert pairs(aligned_groups([1, 2, 3], [1, 2, 3])) == [((0,), (0,)), ((1,), (1,)), ((2,), (2,))]
    assert pairs(aligned_groups([1, 3], [1, 2])) == [((0,), (0,))]   # the student's last token: nothing spells it


def test_char_ends_of_a_tokenisation_the_tokenizer_would_not_choose(byte_level):
    text = "the capital"
    canonical = byte_level(text, add_special_tokens=False)["input_ids"]
    pieces = [byte_level.convert_tokens_to_ids(c) for token in byte_level.convert_ids_to_tokens(canonical) for c in token]
    assert pieces != canonical
    ends = char_ends(byte_level, pieces, text)
    assert ends[-1] == len(text) and ends == sorted(ends) and ends[0] == 1
    assert char_ends(byte_level, pieces, text, first=4) == ends[4:]


@pytest.mark.parametrize("direction", ["level->fallback", "fallback->level"])
def test_every_group_spells_the_same_text_on_both_sides(byte_level, byte_fallback, direction):
    student, teacher = (byte_level, byte_fallback) if direction == "level->fallback" else (byte_fallback, byte_level)
    aligner = Aligner(teacher, student, teacher_bos=True)
    prompt = [student.bos_token_id] + student("Q: say hi\n", add_special_tokens=False)["input_ids"]
    response = student(TEXT, add_special_tokens=False)["input_ids"] + [student.eos_token_id]
    example = aligner.align(prompt, response)
    assert example.teacher_prompt[0] == teacher.bos_token_id
    assert example.teacher_response[-1] == teacher.eos_token_id
    groups = example.groups
    assert [i for g in groups for i in g.student] == list(range(len(response)))        # every token, in order
    assert [j for g in groups for j in g.teacher] == list(range(len(example.teacher_response)))
    for group in groups[:-1]:
        student_text = spelled(student, [response[i] for i in group.student])
        teacher_text = spelled(teacher, [example.teacher_response[j] for j in group.teacher])
        assert student_text == teacher_text, (group, student_text, teacher_text)
    assert groups[-1].student == (len(response) - 1,) and groups[-1].teacher == (len(example.teacher_response) - 1,)
    shared = aligner.shared.teacher_of()
    matched = [g for g in groups if len(g.student) == len(g.teacher) == 1
               and shared.get(response[g.student[0]]) == example.teacher_response[g.teacher[0]]]
    assert len(matched) >= 5            # ' ', the emoji's bytes, ... both sides spell alike
    assert len(matched) < len(groups)   # and some spans differ ("<|im_end|>" is one token on one side only)


def test_identical_tokenizers_align_token_for_token(byte_fallback):
    aligner = Aligner(byte_fallback, byte_fallback, teacher_bos=True)
    prompt = [byte_fallback.bos_token_id] + byte_fallback("Q: say hi\n", add_special_tokens=False)["input_ids"]
    response = byte_fallback(TEXT, add_special_tokens=False)["input_ids"] + [byte_fallback.eos_token_id]
    example = aligner.align(prompt, response)
    assert example.teacher_prompt == prompt and example.teacher_response == response
    assert pairs(example.groups) == [((i,), (i,)) for i in range(len(response))]


def test_an_id_past_the_tokenizer_writes_no_text(byte_level, byte_fallback):
    # A student whose logits have padding rows may sample one; it spells nothing and joins its neighbour's group.
    aligner = Aligner(byte_fallback, byte_level, teacher_bos=False)
    prompt = byte_level("Q:", add_special_tokens=False)["input_ids"]
    response = byte_level(" red", add_special_tokens=False)["input_ids"] + [len(byte_level)]
    example = aligner.align(prompt, response)
    assert [i for g in example.groups for i in g.student] == list(range(len(response)))
