"""Two tokenisations of the same text, aligned: token spellings, the shared vocabulary, and aligned token groups.

Cross-tokenizer distillation (docs/cross-tokenizer.md) compares a teacher and a student whose tokenizers differ.
Both tokenise the same text; every token ends at a byte offset of that text (its UTF-8 encoding). Where the two
tokenisations end a token at the same offset, both models have read the same text so far, so the text between two
consecutive common ends is one *group*: one or more student tokens against one or more teacher tokens that spell
the same piece of text. A group of one token on each side that the two vocabularies share is a *matched* token:
both models predicted it from the same text, so their next-token distributions can be compared entry by entry on
the shared vocabulary. Every other group is a *span* whose probability each model gives by the chain rule.

Offsets come from the fast tokenizers' ``return_offsets_mapping`` (characters); a token that holds only some of
a character's bytes (byte-level BPE, SentencePiece byte fallback) gets the byte inside the character where it
ends from its spelling, so two tokenizers that split an emoji differently meet only at the character's end.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Optional, Sequence

BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
METASPACE = "\u2581"   # SentencePiece's word-start mark, a space in the text


@functools.lru_cache(maxsize=1)
def byte_level_alphabet() -> dict:
    """GPT-2's byte-level BPE alphabet, character → byte (the inverse of its ``bytes_to_unicode``)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, shifted = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + shifted)
            shifted += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


def uses_byte_level(tokenizer) -> bool:
    """Whether the tokenizer's decoder is byte-level BPE's (token strings are bytes in GPT-2's alphabet)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    return "ByteLevel" in json.dumps(json.loads(backend.to_str()).get("decoder"))


def token_spellings(tokenizer) -> list:
    """For every token id, the bytes it writes into the text, or None for special tokens (which write no text of
    their own) and tokens whose bytes cannot be told."""
    size = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    special = set(tokenizer.all_special_ids)
    added = set(tokenizer.get_added_vocab().values())
    byte_level, alphabet = uses_byte_level(tokenizer), byte_level_alphabet()
    spellings: list = []
    for index, token in enumerate(tokens):
        if token is None or index in special:
            spellings.append(None)
        elif (piece := BYTE_FALLBACK.fullmatch(token)) is not None:
            spellings.append(bytes([int(piece.group(1), 16)]))
        elif index in added:
            spellings.append(token.encode())
        elif byte_level and all(c in alphabet for c in token):
            spellings.append(bytes(alphabet[c] for c in token))
        else:
            spellings.append(token.replace(METASPACE, " ").encode())
    return spellings


@dataclass(frozen=True)
class SharedVocabulary:
    """Pairs of ids (student, teacher) naming the same token: the same spelling (the same token string first, so
    identical tokenizers pair every id with itself), special tokens by name, and end-of-sequence with itself."""

    student_ids: tuple
    teacher_ids: tuple

    def teacher_of(self) -> dict:
        return dict(zip(self.student_ids, self.teacher_ids))


def shared_vocabulary(teacher_tokenizer, student_tokenizer) -> SharedVocabulary:
    """The tokens both vocabularies hold (see ``SharedVocabulary``), one-to-one."""
    pairs: dict = {}
    used: set = set()

    def pair(student_id, teacher_id):
        if student_id not in pairs and teacher_id not in used:
            pairs[student_id] = teacher_id
            used.add(teacher_id)

    if student_tokenizer.eos_token_id is not None and teacher_tokenizer.eos_token_id is not None:
        pair(student_tokenizer.eos_token_id, teacher_tokenizer.eos_token_id)
    teacher_special = {teacher_tokenizer.convert_ids_to_tokens(i): i for i in teacher_tokenizer.all_special_ids}
    for student_id in student_tokenizer.all_special_ids:
        name = student_tokenizer.convert_ids_to_tokens(student_id)
        if name in teacher_special:
            pair(student_id, teacher_special[name])
    teacher_tokens = teacher_tokenizer.convert_ids_to_tokens(list(range(len(teacher_tokenizer))))
    by_spelling: dict = {}
    for teacher_id, spelling in enumerate(token_spellings(teacher_tokenizer)):
        if spelling is not None:
            by_spelling.setdefault(spelling, []).append(teacher_id)
    student_tokens = student_tokenizer.convert_ids_to_tokens(list(range(len(student_tokenizer))))
    for student_id, spelling in enumerate(token_spellings(student_tokenizer)):
        candidates = [t for t in by_spelling.get(spelling, ()) if t not in used] if spelling is not None else []
        if candidates:
            same_name = [t for t in candidates if teacher_tokens[t] == student_tokens[student_id]]
            pair(student_id, (same_name or candidates)[0])
    ordered = sorted(pairs.items())
    return SharedVocabulary(tuple(s for s, _ in ordered), tuple(t for _, t in ordered))


def char_ends(tokenizer, ids: Sequence[int], text: str, first: int = 0) -> list:
    """The character offset in ``text`` at which each token of ``ids[first:]`` ends, ``text`` being what ``ids``
    decode to.

    From the offsets of a fresh tokenisation when it gives back ``ids`` (the usual case); otherwise (a sampled
    tokenisation the tokenizer would not choose) from the lengths of the decoded prefixes."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    if list(encoded["input_ids"]) == list(ids):
        return [end for _, end in encoded["offset_mapping"]][first:]
    ends, last = [], len(decode(tokenizer, ids[:first])) if first else 0
    for count in range(first + 1, len(ids) + 1):
        last = min(max(last, len(decode(tokenizer, ids[:count]))), len(text))
        ends.append(last)
    return ends


def decode(tokenizer, ids: Sequence[int]) -> str:
    """The text of ``ids`` as written, special tokens and spaces included."""
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def byte_ends(text: str, ends: Sequence[int], spellings: Sequence[Optional[bytes]]) -> list:
    """Each token's end as a byte offset of ``text.encode()``, from its character end; of the tokens that end at
    the same character (the pieces of one character's bytes), all but the last end inside it, where their
    spelling says."""
    prefix = [0]
    for character in text:
        prefix.append(prefix[-1] + len(character.encode()))
    result = [prefix[end] for end in ends]
    for i in range(len(result) - 2, -1, -1):
        following = spellings[i + 1]
        if ends[i] == ends[i + 1] and following is not None:
            result[i] = result[i + 1] - len(following)
    for i in range(1, len(result)):   # never before the previous token's end, whatever a spelling claimed
        result[i] = max(result[i], result[i - 1])
    return result


@dataclass(frozen=True)
class Group:
    """Student and teacher token positions (in their responses) that spell the same piece of text."""

    student: tuple
    teacher: tuple


def aligned_groups(student_ends: Sequence[int], teacher_ends: Sequence[int]) -> list:
    """The groups between consecutive common token ends (both lists non-decreasing). Tokens after the last common
    end (a text one side has not finished) form no group: nothing on the other side spells them."""
    common = sorted(set(student_ends) & set(teacher_ends))
    groups, i, j = [], 0, 0
    for end in common:
        s0, t0 = i, j
        while i < len(student_ends) and student_ends[i] <= end:
            i += 1
        while j < len(teacher_ends) and teacher_ends[j] <= end:
            j += 1
        groups.append(Group(tuple(range(s0, i)), tuple(range(t0, j))))
    return groups


def spelled(spellings: list, ids: Sequence[int]) -> list:
    """The spellings of ``ids``; None for an id past the tokenizer (a padding row of the logits, which a sampling
    student may draw: it writes no text)."""
    return [spellings[i] if 0 <= i < len(spellings) else None for i in ids]


@dataclass(frozen=True)
class AlignedExample:
    """A student example written for the teacher: the teacher's prompt and response ids for the same text, and the
    groups of response tokens that spell the same text on both sides."""

    teacher_prompt: list
    teacher_response: list
    groups: list


class Aligner:
    """Writes the student's examples for the teacher and aligns the two responses (see the module docstring).

    The text is what the student's ids decode to (special tokens as written); the teacher tokenises the prompt's
    text, then the whole text, and takes as its response what follows its prompt tokens (as
    ``data.tokenization`` does for the student); a response the student ended with its end-of-sequence token ends
    with the teacher's, and the two are a matched pair."""

    def __init__(self, teacher_tokenizer, student_tokenizer, *, teacher_bos: bool):
        self.teacher, self.student, self.teacher_bos = teacher_tokenizer, student_tokenizer, teacher_bos
        self.shared = shared_vocabulary(teacher_tokenizer, student_tokenizer)
        self.teacher_spellings = token_spellings(teacher_tokenizer)
        self.student_spellings = token_spellings(student_tokenizer)

    def align(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> AlignedExample:
        prompt, response = list(prompt_ids), list(response_ids)
        if prompt[:1] == [self.student.bos_token_id]:
            prompt = prompt[1:]
        ended = bool(response) and response[-1] == self.student.eos_token_id
        if ended:
            response = response[:-1]
        text, prompt_text = decode(self.student, prompt + response), decode(self.student, prompt)
        student_ends = char_ends(self.student, prompt + response, text, first=len(prompt))
        teacher_prompt = self.encode(prompt_text)[0]
        ids, ends = self.encode(text)
        if ids[:len(teacher_prompt)] == teacher_prompt:
            teacher_response, teacher_ends = ids[len(teacher_prompt):], ends[len(teacher_prompt):]
        else:   # the teacher merges across the prompt's end: its response is the rest of the text on its own
            teacher_response, rest_ends = self.encode(text[len(prompt_text):])
            teacher_ends = [end + len(prompt_text) for end in rest_ends]
        student_bytes = byte_ends(text, student_ends, spelled(self.student_spellings, response))
        teacher_bytes = byte_ends(text, teacher_ends, spelled(self.teacher_spellings, teacher_response))
        if ended:   # after the last byte of the text, on both sides
            end = len(text.encode()) + 1
            response.append(self.student.eos_token_id)
            teacher_response.append(self.teacher.eos_token_id)
            student_bytes.append(end)
            teacher_bytes.append(end)
        bos = self.teacher.bos_token_id
        if self.teacher_bos and bos is not None and teacher_prompt[:1] != [bos]:
            teacher_prompt = [bos] + teacher_prompt
        return AlignedExample(teacher_prompt, teacher_response, aligned_groups(student_bytes, teacher_bytes))

    def encode(self, text: str) -> tuple:
        """The teacher's ids of ``text`` and each token's character end."""
        encoded = self.teacher(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return list(encoded["input_ids"]), [end for _, end in encoded["offset_mapping"]]
