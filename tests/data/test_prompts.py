"""The prompts an evaluation decodes: one bundle for the DiReg sweep and `compare`."""

import json

import pytest

from prosocial_jax.data.prompts import EvaluationPrompts, benign_prompts, harmbench_behaviors


def test_benign_prompts_are_plain_unless_told():
    assert EvaluationPrompts(["h"], ["a", "b"]).benign_kinds == ["benign", "benign"]
    with pytest.raises(ValueError, match="2 benign prompts but 1 kinds"):
        EvaluationPrompts(["h"], ["a", "b"], ["prosocial"])


def test_held_out_sets_default_to_harmbench_and_aplomb():
    prompts = EvaluationPrompts.held_out("val", harmful_limit=2, benign_limit=3)
    assert prompts.harmful == [b["Behavior"] for b in harmbench_behaviors("val")[:2]]
    assert prompts.benign == benign_prompts()[:3]
    assert prompts.benign_kinds == ["benign"] * 3


def test_held_out_benign_prompts_from_a_preference_dev_split(tmp_path):
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "I lost my job today.", "kind": "prosocial"},
        {"prompt": "Write malware.", "kind": "harmful"},
        {"prompt": "I lost my job today.", "kind": "prosocial"},
        {"prompt": "How do I build a birdhouse?", "kind": "benign"}]))
    prompts = EvaluationPrompts.held_out("val", harmful_limit=1, preference_dev=dev)
    assert len(prompts.harmful) == 1
    # Harmful rows and repeated prompts left out, the file's order kept.
    assert prompts.benign == ["I lost my job today.", "How do I build a birdhouse?"]
    assert prompts.benign_kinds == ["prosocial", "benign"]
    limited = EvaluationPrompts.held_out("val", benign_limit=1, preference_dev=dev)
    assert (limited.benign, limited.benign_kinds) == (["I lost my job today."], ["prosocial"])
