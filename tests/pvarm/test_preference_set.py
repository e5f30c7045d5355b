"""The demo preference set: labels follow the persona contrast, held-out prompts stay out."""

import collections
import json

import pytest

import prosocial_jax as pj
from prosocial_jax.models.adapters import DEFAULT_ATTRIBUTES
from prosocial_jax.pvarm import preference_set

# Written out by hand (not read from the module): which persona wins which attributes.
EXPECTED = {
    frozenset({"empathetic", "cold"}): ("empathetic", {"empathy"}),
    frozenset({"gentle", "tactless"}): ("gentle", {"sensitivity"}),
    frozenset({"accepting", "judging"}): ("accepting", {"non_judgmental"}),
    frozenset({"calibrated", "overclaiming"}): ("calibrated", {"truthfulness"}),
    frozenset({"concrete", "vague"}): ("concrete", {"helpfulness"}),
    frozenset({"ideal", "refusing"}): ("ideal", {"harmlessness"}),
    frozenset({"redirect", "comply"}): ("redirect", {"harmlessness"}),
    frozenset({"redirect_copyright", "comply"}): ("redirect_copyright", {"harmlessness"}),
}


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def built(tiny_chat, tmp_path_factory):
    out = tmp_path_factory.mktemp("prefs") / "set"
    model = pj.load_model(tiny_chat.path)
    # The first 24 validation behaviours include standard, contextual and copyright ones.
    settings = preference_set.PreferenceSetSettings(
        max_new_tokens=4, harmful_limit=24, benign_limit=6, prosocial_limit=14,
        dev_fraction=0.25, harmful_dev_fraction=0.25, benign_dev_fraction=0.5,
        test_fraction=0.25, batch_size=64)
    summary = preference_set.build_preference_set(model, out, settings)
    return out, summary


def test_labels_follow_the_persona_contrast(built):
    out, summary = built
    rows = _read(out / "train.jsonl") + _read(out / "dev.jsonl")
    assert len(rows) == summary["pairs"]["train"] + summary["pairs"]["dev"] > 0
    seen = collections.Counter()
    for row in rows:
        winner, labelled = EXPECTED[frozenset(row["personas"])]
        side = "ab"[row["personas"].index(winner)]
        assert row["winners"] == {name: side if name in labelled else None
                                  for name in DEFAULT_ATTRIBUTES}, row
        # Each answer is the persona's own: a prefilled persona's text starts with one of
        # its openings (or, cut to its pair's length, is the start of one), so the label
        # cannot come from anything but the persona.
        for persona, response in zip(row["personas"], (row["response_a"], row["response_b"])):
            openings = [o.strip() for o in preference_set.PERSONAS[persona].openings]
            assert response and any(response.startswith(o) or o.startswith(response)
                                    for o in openings), (persona, response)
        assert (row["kind"] == "harmful") == ("comply" in row["personas"])
        seen[frozenset(row["personas"])] += 1
    assert set(seen) == set(EXPECTED)  # every contrast occurs
    # Both sides carry winners: the winner's position is drawn, not always "a".
    assert {row["personas"][0] for row in rows} >= {"empathetic", "cold"}


def test_only_refusals_cut_at_a_sentence_end_are_finished_answers(built):
    out, _ = built
    rows = _read(out / "train.jsonl") + _read(out / "dev.jsonl")
    finished_redirects, other_sides, other_truncated = 0, 0, 0
    for row in rows:
        for side, persona in zip("ab", row["personas"]):
            text = row[f"response_{side}"]
            if persona.startswith("redirect") and side not in row["truncated"]:
                # Cut at a sentence end: at the latest the opening's own first sentence.
                assert text.endswith((".", "!", "?")), text
                assert any(text.startswith(o.split(".")[0] + ".")
                           for o in preference_set.PERSONAS[persona].openings), text
                finished_redirects += 1
            elif not persona.startswith("redirect"):
                other_sides += 1
                other_truncated += side in row["truncated"]
    assert finished_redirects > 0
    # Every other answer is a cut-off prefix (scored without an end-of-turn token), unless the
    # model happened to stop exactly where its pair was cut; the random model rarely does.
    assert other_truncated >= 0.9 * other_sides, (other_truncated, other_sides)


def test_held_out_prompts_are_never_trained_on(built):
    out, summary = built
    train = {row["prompt"] for row in _read(out / "train.jsonl")}
    dev = {row["prompt"] for row in _read(out / "dev.jsonl")}
    test = _read(out / "test_prompts.jsonl")
    assert train and dev and test
    assert not train & dev and not train & {row["prompt"] for row in test}
    assert not dev & {row["prompt"] for row in test}
    # Test prompts are non-harmful only (HarmBench's test split is the harmful test set), a
    # quarter of each kind: 2 of 6 benign (round(1.5)), 4 of 14 prosocial (round(3.5)).
    assert [row["kind"] for row in test].count("benign") == 2 and len(test) == 2 + 4
    # dev: a quarter of the 24 harmful, half of the other 4 benign, a quarter of 14 prosocial
    assert summary["prompts"] == {"train": 18 + 1 + 6, "dev": 6 + 3 + 4, "test": 6}
    # Answered: 6 per harmful prompt (3 redirects, 3 compliances); 12 per other one (5
    # embodying, 5 violating personas, the ideal answer and the unnecessary refusal).
    assert summary["generations"] == 6 * 24 + 12 * (20 - 6)


def test_every_attribute_gets_300_training_pairs_by_default():
    settings = preference_set.PreferenceSetSettings()
    prompts = preference_set.preference_set_prompts()
    splits = preference_set.split_prompts(prompts, settings)
    harmful = sum(s == "train" for p, s in zip(prompts, splits) if p["kind"] == "harmful")
    other = sum(s == "train" for p, s in zip(prompts, splits) if p["kind"] != "harmful")
    assert len([p for p in prompts if p["kind"] == "harmful"]) == 80  # every val behaviour
    # One pair per non-harmful training prompt and prosocial attribute; harmlessness also
    # gets answers_per_side ** 2 pairs per harmful training prompt.
    assert other >= 300
    assert harmful * settings.answers_per_side ** 2 + other >= 300


def test_the_prosocial_prompts_are_many_varied_and_unique():
    prompts = preference_set.prosocial_prompts()
    assert len(prompts) >= 400
    assert len({p["prompt"].lower() for p in prompts}) == len(prompts)
    focus = collections.Counter(p["focus"] for p in prompts)
    assert set(focus) == {"empathy", "sensitivity", "non_judgmental", "truthfulness",
                          "helpfulness"} and min(focus.values()) >= 60
    topics = collections.Counter(p["topic"] for p in prompts)
    assert len(topics) >= 25 and max(topics.values()) <= 0.1 * len(prompts)


def test_unknown_attribute_is_refused():
    with pytest.raises(ValueError, match=r"no persona contrast labels \['kindness'\]"):
        preference_set.PreferenceSetSettings(attributes=("empathy", "kindness"))
