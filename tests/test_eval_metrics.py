"""The numbers of ``minillm eval``: Rouge-L as rouge_score computes it, seed averaging, buckets, Dist-4, exact
match and the test loss, each against an independent computation."""

import math
import statistics

import pytest

from minillm_cli.evaluation import metrics, protocol
from minillm_cli.evaluation.rouge import rouge_l

CASES = [
    ("The cat sat on the mat.", ["A cat was sitting on the mat"]),
    ("PARIS is the capital!!!", ["Paris is the capital of France."]),
    ("running runs ran", ["run running"]),                                  # stemming
    ("", ["something"]),                                                     # empty output
    ("something", [""]),                                                     # empty reference
    ("café naïve résumé 東京", ["cafe naive resume Tokyo"]),                  # unicode
    ("4 + 4 = 8", ["8", "four plus four is eight", "4+4=8"]),                # several references: the best
    ("first line\nsecond line", ["second line", "first"]),
    ("it's 3.5% (approx.)", ["It is about 3.5 percent"]),
]


def reference_rouge(prediction, references):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return 100 * max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references)


@pytest.mark.parametrize("prediction,references", CASES)
def test_rouge_l_is_rouge_scores_own(prediction, references):
    assert rouge_l(prediction, references) == pytest.approx(reference_rouge(prediction, references), abs=1e-12)


def test_several_references_take_the_maximum():
    assert rouge_l("4 + 4 = 8", ["8", "4+4=8"]) == pytest.approx(100.0)
    assert rouge_l("4 + 4 = 8", ["8"]) < 100.0


def records(seed, predictions, references, tokens=3):
    return [
        {"index": i, "generation": p, "references": r, "num_tokens": tokens, "finished": True, "seed": seed}
        for i, (p, r) in enumerate(zip(predictions, references))
    ]


def test_seed_average_is_mean_and_sample_std_of_per_seed_means():
    refs = [["the cat sat on the mat"], ["red green blue"], ["four"]]
    by_seed = {
        10: records(10, ["the cat sat", "red green blue", "five"], refs),
        20: records(20, ["a dog", "red blue", "four"], refs),
        30: records(30, ["the cat sat on the mat", "green", "Four."], refs),
    }
    scores, details = protocol.score(by_seed)
    per_seed = [statistics.mean(reference_rouge(r["generation"], r["references"]) for r in by_seed[s]) for s in (10, 20, 30)]
    assert scores["rougeL"] == pytest.approx(statistics.mean(per_seed))
    assert scores["rougeL_std"] == pytest.approx(statistics.stdev(per_seed))
    assert [details["per_seed"][str(s)]["rougeL"] for s in (10, 20, 30)] == pytest.approx(per_seed)
    em = [100 * statistics.mean([0, 1, 0]), 100 * statistics.mean([0, 0, 1]), 100 * statistics.mean([1, 0, 1])]
    assert scores["exact_match"] == pytest.approx(statistics.mean(em))
    assert scores["exact_match_std"] == pytest.approx(statistics.stdev(em))
    assert details["seeds"] == [10, 20, 30] and details["examples"] == 3
    # One seed: no spread.
    single, _ = protocol.score({10: by_seed[10]})
    assert single["rougeL"] == pytest.approx(per_seed[0]) and single["rougeL_std"] == 0.0


def test_mean_std():
    assert metrics.mean_std([1.0, 2.0, 6.0]) == pytest.approx((3.0, statistics.stdev([1, 2, 6])))
    assert metrics.mean_std([5.0]) == (5.0, 0.0)


def test_exact_match_ignores_case_punctuation_and_spacing_only():
    assert metrics.exact_match("Paris.", ["paris"]) == 100.0
    assert metrics.exact_match("  Paris  ", ["Rome", "PARIS!"]) == 100.0
    assert metrics.exact_match("Paris, France", ["Paris"]) == 0.0
    assert metrics.exact_match("", ["Paris"]) == 0.0


def test_length_buckets_count_rouge_score_words():
    # 5 words, 6 words (punctuation splits: "it's" is two), 11 words.
    assert metrics.words("It's 3.5%") == ["it", "s", "3", "5"]
    assert metrics.length_bucket("one two three four five") == "0-5"
    assert metrics.length_bucket("") == "0-5"
    assert metrics.length_bucket("one two three four it's") == "6-10"
    assert metrics.length_bucket("a b c d e f g h i j") == "6-10"
    assert metrics.length_bucket("a b c d e f g h i j k") == "11+"
    buckets = metrics.bucket_means([10.0, 20.0, 30.0, 50.0], [["a"], ["a b"], ["a b c d e f"], ["x"] * 1])
    assert buckets["0-5"] == {"mean": pytest.approx(80 / 3), "count": 3}
    assert buckets["6-10"] == {"mean": 30.0, "count": 1}
    assert buckets["11+"] == {"mean": None, "count": 0}


def test_buckets_in_protocol_scores():
    refs = [["short"], ["one two three four five six seven"], ["w " * 12]]
    by_seed = {1: records(1, ["short", "one two", "w w"], refs), 2: records(2, ["nope", "one two three", "w"], refs)}
    scores, details = protocol.score(by_seed)
    first = [reference_rouge("short", refs[0]), reference_rouge("nope", refs[0])]
    assert scores["rougeL_len0-5"] == pytest.approx(statistics.mean(first))
    assert scores["rougeL_len0-5_std"] == pytest.approx(statistics.stdev(first))
    assert details["length_buckets"]["11+"]["count"] == 1


def test_distinct_4():
    # 2 texts: "a b c d e" has 2 four-grams, "a b c d" has 1 (a repeat): 2 distinct of 3.
    assert metrics.distinct_n(["a b c d e", "A, b c d"], 4) == pytest.approx(100 * 2 / 3)
    assert metrics.distinct_n(["a b c", ""], 4) == 0.0
    assert metrics.distinct_n(["x y z w x y z w"], 4) == pytest.approx(100 * 4 / 5)


def test_test_loss_is_brute_force_cross_entropy(refs, tokenizer):
    import torch

    from minillm_cli.data.instructions import InstructionExample
    from minillm_cli.data.prompts import format_prompt
    from minillm_cli.models.load import load_model

    model = load_model(refs[0])
    examples = [
        InstructionExample("Name the capital of France.", "", ["Paris.", "It is Paris, of course."]),
        InstructionExample("Add the numbers.", "two plus two", ["four"]),
    ]
    total, count = 0.0, 0
    with torch.no_grad():
        for example in examples:
            prompt = format_prompt(example, "alpaca")
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            for reference in example.references:
                full = tokenizer(prompt + reference, add_special_tokens=False)["input_ids"]
                assert full[:len(prompt_ids)] == prompt_ids
                ids = full + [tokenizer.eos_token_id]
                log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
                for t in range(len(prompt_ids), len(ids)):
                    total -= float(log_probs[t - 1, ids[t]])
                    count += 1
    result = metrics.test_loss(model, tokenizer, examples, prompt_format="alpaca", batch_size=2)
    assert result["sequences"] == 3 and result["tokens"] == count
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)
    assert math.isfinite(result["loss"])
