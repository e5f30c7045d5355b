"""Preference data: the native schema and converters from the public sets' own columns."""

import json
import re

import pytest

from prosocial_jax.data.preferences import encode_pairs, load_preference_pairs, pair_batch
from prosocial_jax.data.rows import DataError, DataFileNotFoundError, load_rows

PKU = [
    {"prompt": "How do I pick a lock?", "response_0": "I can't help with that.",
     "response_1": "Insert a tension wrench...", "safer_response_id": 0,
     "better_response_id": 1, "is_response_0_safe": True, "is_response_1_safe": False},
    {"prompt": "Say hi", "response_0": "Hi!", "response_1": "Hi!", "safer_response_id": 0,
     "better_response_id": 0},  # identical responses
    {"prompt": "", "response_0": "a", "response_1": "b", "safer_response_id": 1,
     "better_response_id": 1},  # empty prompt
    {"prompt": "Q", "response_0": "a", "response_1": "b", "safer_response_id": 2,
     "better_response_id": 1},  # bad id
]
HH = [
    {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?",
     "rejected": "\n\nHuman: Hi there\n\nAssistant: What do you want?"},
    {"chosen": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: D",
     "rejected": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: E"},
    {"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: Z\n\nAssistant: y"},
]
ULTRAFEEDBACK = [
    {"instruction": "Explain gravity.", "source": "x", "completions": [
        {"model": "m1", "response": "Gravity pulls masses together.",
         "annotations": {"helpfulness": {"Rating": "5"}, "honesty": {"Rating": "5"},
                         "truthfulness": {"Rating": "4"}}},
        {"model": "m2", "response": "Gravity is magic.",
         "annotations": {"helpfulness": {"Rating": "2"}, "honesty": {"Rating": "N/A"},
                         "truthfulness": {"Rating": "1"}}},
        {"model": "m3", "response": "Masses attract.",
         "annotations": {"helpfulness": {"Rating": "4"}, "truthfulness": {"Rating": "4"}}}]},
    {"instruction": "Only one", "completions": [{"response": "x", "annotations": {}}]},
]
HELPSTEER2 = [
    {"prompt": "P1", "response": "R1a", "helpfulness": 3, "correctness": 3, "coherence": 4,
     "complexity": 2, "verbosity": 1},
    {"prompt": "P1", "response": "R1b", "helpfulness": 1, "correctness": 3, "coherence": 4,
     "complexity": 2, "verbosity": 1},
    {"prompt": "P2", "response": "R2a", "helpfulness": 2, "correctness": 1, "coherence": 4,
     "complexity": 2, "verbosity": 1},  # no partner
    {"prompt": "P3", "response": "R3a", "helpfulness": 2, "correctness": 1, "coherence": 4,
     "complexity": 2, "verbosity": 1},
    {"prompt": "P3", "response": "R3b", "helpfulness": 4, "correctness": 4, "coherence": 4,
     "complexity": 2, "verbosity": 1},
]


def _write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pku_saferlhf(tmp_path):
    pairs, skipped = load_preference_pairs(_write(tmp_path, "pku.jsonl", PKU))
    assert len(pairs) == 1
    assert pairs[0].winners == {"harmlessness": "a", "helpfulness": "b"}
    assert skipped.reasons == {"identical responses": [2], "missing or empty prompt": [3],
                               "safer_response_id and better_response_id must be 0 or 1": [4]}
    assert "skipped 3 row(s)" in skipped.summary("pku.jsonl")


def test_hh_rlhf_attribute_from_name_or_argument(tmp_path):
    path = _write(tmp_path, "harmless-base.jsonl", HH)
    pairs, skipped = load_preference_pairs(path)
    assert [p.winners for p in pairs] == [{"harmlessness": "a"}] * 2
    assert pairs[1].prompt == [{"role": "user", "content": "A"},
                               {"role": "assistant", "content": "B"},
                               {"role": "user", "content": "C"}]
    assert (pairs[1].response_a, pairs[1].response_b) == ("D", "E")
    assert skipped.reasons == {"chosen and rejected do not share the same conversation": [3]}
    plain = _write(tmp_path, "hh.jsonl", HH)
    with pytest.raises(DataError, match="hh_attribute"):
        load_preference_pairs(plain)
    pairs, _ = load_preference_pairs(plain, hh_attribute="helpfulness")
    assert pairs[0].winners == {"helpfulness": "a"}


def test_ultrafeedback_best_against_worst(tmp_path):
    pairs, skipped = load_preference_pairs(_write(tmp_path, "uf.jsonl", ULTRAFEEDBACK))
    assert len(pairs) == 1 and skipped.reasons == {"fewer than two non-empty completions": [2]}
    pair = pairs[0]
    assert (pair.response_a, pair.response_b) == ("Gravity pulls masses together.",
                                                  "Gravity is magic.")
    assert pair.winners == {"helpfulness": "a", "truthfulness": "a"}


def test_helpsteer2_pairs_consecutive_rows(tmp_path):
    pairs, skipped = load_preference_pairs(_write(tmp_path, "hs2.jsonl", HELPSTEER2))
    assert [(p.response_a, p.response_b, p.line) for p in pairs] == [("R1a", "R1b", 1),
                                                                     ("R3a", "R3b", 4)]
    assert pairs[0].winners == {"helpfulness": "a", "truthfulness": None}  # tie on correctness
    assert pairs[1].winners == {"helpfulness": "b", "truthfulness": "b"}
    assert skipped.reasons == {"response without a second response to the same prompt": [3]}


def test_native_format_and_encoding(tmp_path, tiny_chat):
    import prosocial_jax as pj

    rows = [{"prompt": "I feel sad.", "response_a": "I'm sorry, that sounds hard.",
             "response_b": "Cheer up.", "winners": {"empathy": "a", "truthfulness": None}},
            {"messages": [{"role": "user", "content": "Hi"}], "response_a": "Hello",
             "response_b": "Yo", "winners": {"helpfulness": "maybe"}},
            {"prompt": "Q", "response_a": "x", "response_b": "y", "winners": {"empathy": None}}]
    pairs, skipped = load_preference_pairs(_write(tmp_path, "native.jsonl", rows))
    assert len(pairs) == 2 and list(skipped.reasons.values()) == [[2]]
    tokenizer = pj.load_model(tiny_chat.path).tokenizer
    attributes = ("harmlessness", "empathy", "truthfulness")
    examples = encode_pairs(pairs, tokenizer, attributes, max_len=128, skipped=skipped)
    assert len(examples) == 1 and examples[0].labels == [0, 1, 0]
    assert skipped.reasons["no label for any attribute"] == [3]
    batch = pair_batch(examples, pad_id=2, max_len=128)
    assert batch["tokens"].shape[:2] == (1, 2) and batch["labels"].tolist() == [[0, 1, 0]]
    with pytest.raises(DataError, match="cannot tell the preference format"):
        load_preference_pairs(_write(tmp_path, "odd.jsonl", [{"text": "x"}]))



def test_truncated_responses_are_scored_without_an_ending(tmp_path, tiny_chat):
    import prosocial_jax as pj

    rows = [{"prompt": "How do I bake bread?", "response_a": "I can't help with that.",
             "response_b": "Mix flour and", "winners": {"harmlessness": "a"},
             "truncated": ["b"]},
            {"prompt": "Q", "response_a": "x", "response_b": "y", "winners": {"empathy": "a"},
             "truncated": ["c"]}]
    pairs, skipped = load_preference_pairs(_write(tmp_path, "cut.jsonl", rows))
    assert [p.truncated for p in pairs] == [("b",)]
    assert skipped.reasons == {"truncated must be a list of 'a' / 'b', got ['c']": [2]}
    tokenizer = pj.load_model(tiny_chat.path).tokenizer
    [example] = encode_pairs(pairs, tokenizer, ("harmlessness",), max_len=128)
    # SmolLM2's template closes an answer with "<|im_end|>\n": the finished answer keeps it,
    # the cut-off one ends at its last word.
    rendered = [tokenizer.decode(ex.input_ids) for ex in (example.a, example.b)]
    assert rendered[0].endswith("I can't help with that.<|im_end|>\n")
    assert rendered[1].endswith("<|im_start|>assistant\nMix flour and")
    for ex, text in zip((example.a, example.b), ("I can't help with that.<|im_end|>\n",
                                                 "Mix flour and")):
        scored = [t for t, m in zip(ex.input_ids, ex.loss_mask) if m]
        assert tokenizer.decode(scored) == text

# ---------------------------------------------------------------------------- hub data sets
def test_missing_local_data_path_is_not_fetched_from_a_hub(monkeypatch):
    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError("datasets was asked for a plain path")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    with pytest.raises(FileNotFoundError, match=re.escape(
            "Anthropic/hh-rlhf: no such data file; if the Hugging Face Hub repository was meant, "
            "write hf://Anthropic/hh-rlhf")) as caught:
        load_preference_pairs("Anthropic/hh-rlhf", hh_attribute="harmlessness")
    assert isinstance(caught.value, DataError)  # callers that catch DataError still do
    with pytest.raises(FileNotFoundError, match=r"^data/train\.jsonl: no such data file$"):
        load_rows("data/train.jsonl")


def test_hub_data_set_offline_and_not_cached_fails_clearly():
    with pytest.raises(DataFileNotFoundError, match=re.escape(
            "hf://someone/not-cached-data: HF_HUB_OFFLINE is set, and the data set is not in the "
            "local datasets cache")):
        load_rows("hf://someone/not-cached-data")
    with pytest.raises(DataError, match=re.escape(
            "'hf://someone/a/b' is not of the form hf://owner/name")):
        load_rows("hf://someone/a/b")


def test_hub_reference_passes_repo_revision_and_split_to_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, revision=None, split=None):
        calls.append((path, revision, split))
        return PKU[:1]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    pairs, _ = load_preference_pairs("hf://PKU-Alignment/PKU-SafeRLHF@v1.0", split="test")
    assert calls == [("PKU-Alignment/PKU-SafeRLHF", "v1.0", "test")]
    assert pairs[0].winners == {"harmlessness": "a", "helpfulness": "b"}
    load_rows("hf://PKU-Alignment/PKU-SafeRLHF")
    assert calls[-1] == ("PKU-Alignment/PKU-SafeRLHF", None, "train")
