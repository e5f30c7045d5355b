"""Judge scoring throughput of prosocial_jax vs transformers (PyTorch), side by side.

    .venv/bin/python benchmarks/judge_throughput.py --out benchmarks/results/judge_throughput.json

Both judges run SmolLM2-135M-Instruct in float32 over the same 64 (prompt, reply) pairs (16
benign prompts with a written reply of about 100 tokens each, in four variants), batch 16:

- reward judge: a `LlamaForSequenceClassification` with SmolLM2's trunk and a seeded random
  one-output score head, saved once as an HF folder under `files.cache_dir() / "bench"`. Ours is
  `load_judge("reward:FOLDER", batch_size=16).judge(items)`; the reference is transformers'
  `AutoModelForSequenceClassification` on the token ids our judge builds (`judge.encode`),
  right-padded batches of 16 sorted by length, under `torch.no_grad()`.
- rubric judge: `RubricJudge(..., ("helpfulness",), batch_size=16)` on `bundled:smollm2` (one
  forward pass of ~250 tokens per response). The reference is transformers' `LlamaForCausalLM`
  with the same weights (saved by `pj.save_model`): the trunk's hidden states, the two read
  positions picked out, only those run through `lm_head`, and the expected 1-10 score computed
  from their softmax, on our judge's token ids.

Scores are compared (max abs diff; a reward difference over 1e-3 or a rubric expected-score
difference over 1e-2 fails the run). Measured in the same run: this machine's float32 matmul
throughput (best of N 2048^3 products, in each worker), the judges' achieved GFLOP/s (2 x the
decoder's matrix parameters per real token, plus causal attention 4 x layers x width x context
per real token; padding counts as waste, not work) and its fraction of that matmul throughput,
and the copy bandwidth for the record, with the throughput every side would reach if all its
useful flops ran at that matmul throughput (an upper bound for any implementation).

Where our time goes: tokenisation (the judge's own encoding, timed alone), the rest (padded
batches, forward passes, reading scores), and the same forward passes on the reference's
padding (whole rows, batch shapes cut to each batch's longest row). Our judges run each batch's
shared opening (the chat template's system turn, the rubric's instructions) once and every row
from its end, padded to a multiple of 16: the difference is what that saves. "Padded tokens"
counts the token positions each side computes (ours: rows x padded length + the prefix once).
Achieved GFLOP/s counts the work of the whole rows as given (what transformers computes), so
ours can exceed the matmul throughput by the work the shared prefix skips.

Each library runs in its own worker process, one after the other: in one process, PyTorch's
OpenMP threads keep spinning after each call and steal this machine's two cores from XLA.
Timings: a first call (ours compiles in it; compile time = first call minus the median), then
the median of REPEATS calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from decode_speed import copy_bandwidth, write_results

BATCH = 16
REPEATS = 3
MATMUL_SIZE, MATMUL_REPEATS = 2048, 10
CRITERION = "helpfulness"
REWARD_TOLERANCE = 1e-3  # raw score units
RUBRIC_TOLERANCE = 1e-2  # expected score on the 1-10 scale
SPEEDUP_TARGET = 1.5
HEAD_SEED = 0

# 16 benign prompts with a plausible reply each (~80-95 tokens); four variants of each reply
# (an opener and a closer) make the 64 responses, ~90-110 tokens, of varied lengths.
PAIRS = (
    ("Explain how photosynthesis works to a ten year old.",
     "Plants make their own food using sunlight. Their leaves contain a green substance called "
     "chlorophyll, which catches light from the sun. The plant pulls water up from its roots "
     "and takes in a gas called carbon dioxide from the air through tiny holes in its leaves. "
     "Using the energy from the light, it turns the water and carbon dioxide into sugar, which "
     "it uses to grow. As a bonus, it lets out oxygen, which is the air we breathe."),
    ("What are some tips for staying focused while studying?",
     "Start by choosing a quiet place and putting your phone in another room, since "
     "notifications break concentration more than people expect. Work in short blocks, such "
     "as twenty-five minutes followed by a five minute break, and decide before each block "
     "exactly what you want to finish. Keep water and a snack nearby so you do not wander off. "
     "Finally, review what you learned at the end of the session; it helps the material stick."),
    ("Give me a recipe for a simple vegetable soup.",
     "Chop one onion, two carrots, two celery sticks and a couple of potatoes. Warm two "
     "tablespoons of olive oil in a large pot and cook the onion for five minutes until soft. "
     "Add the other vegetables, a crushed garlic clove and a teaspoon of dried thyme, then pour "
     "in a litre of vegetable stock. Simmer for about twenty minutes until the potatoes are "
     "tender. Season with salt and pepper, and stir in a handful of spinach just before serving."),
    ("How do I convert miles to kilometers?",
     "Multiply the number of miles by 1.609 to get kilometers. For example, 5 miles times 1.609 "
     "is about 8.05 kilometers, and a marathon of 26.2 miles is roughly 42.2 kilometers. For a "
     "quick estimate in your head, multiply by 1.6, or take the miles, add half of them, and "
     "then add a little more. To go the other way, from kilometers to miles, multiply by 0.621 "
     "or divide by 1.609."),
    ("Draft a polite email asking my manager for a day off next Friday.",
     "Subject: Request for a day off on Friday. Hi Sarah, I hope your week is going well. I "
     "would like to request a day off next Friday for a personal matter. I will make sure my "
     "current tasks are finished or handed over before then, and I will let the team know so "
     "nothing is left waiting. Please let me know if that day works for you or if another date "
     "would be better. Thank you for considering my request. Best regards, Alex"),
    ("What is the difference between weather and climate?",
     "Weather is what the atmosphere is doing right now or over the next few days: whether it "
     "is sunny, raining, windy, hot or cold in a particular place. Climate is the average "
     "pattern of weather in a region over a long period, usually thirty years or more. A "
     "simple way to remember it is that weather tells you what to wear today, while climate "
     "tells you what kind of clothes to keep in your wardrobe."),
    ("Help me brainstorm gift ideas for my mother's birthday.",
     "Here are a few ideas depending on what she enjoys. If she likes relaxing, a cozy blanket, "
     "a good book or a spa voucher could be lovely. For a keen cook, try a quality olive oil "
     "set or a cooking class you could attend together. A framed family photo or a letter "
     "about what she means to you is personal and memorable. You could also plan an "
     "experience, such as a concert, a garden visit or a day trip to her favourite town."),
    ("Explain how vaccines train the immune system.",
     "A vaccine shows your immune system a harmless version or piece of a germ, such as a "
     "weakened virus or one of its proteins. Your body reacts as if it were a real infection: "
     "it makes antibodies that stick to that piece and memory cells that remember it. Later, "
     "if the real germ arrives, those memory cells recognise it quickly and launch a strong "
     "response before it can make you seriously ill. That is why vaccinated people often "
     "avoid the disease or get only a mild case."),
    ("How do compound interest and simple interest differ?",
     "Simple interest is calculated only on the original amount you deposit or borrow. With "
     "1,000 dollars at five percent a year, you earn 50 dollars every year. Compound interest "
     "is calculated on the original amount plus the interest already earned, so the interest "
     "itself earns interest. After one year you have 1,050 dollars, and the next year you earn "
     "five percent of 1,050. Over long periods compounding grows savings, and debts, much "
     "faster than simple interest."),
    ("Write a short thank-you note after a job interview.",
     "Dear Ms. Patel, thank you for taking the time to meet with me yesterday about the "
     "project coordinator role. I enjoyed learning about your team's plans for the new "
     "community programme, and our conversation made me even more excited about the position. "
     "I believe my experience organising events and managing schedules would help the team "
     "succeed. Please let me know if you need any further information from me. I look forward "
     "to hearing from you. Kind regards, Jordan Lee"),
    ("What are the main causes of the seasons?",
     "The seasons happen because the Earth's axis is tilted by about 23.5 degrees. As the Earth "
     "travels around the sun during the year, first one hemisphere and then the other leans "
     "toward the sun. The hemisphere tilted toward the sun gets more direct sunlight and longer "
     "days, so it has summer, while the other hemisphere gets weaker, slanted light and shorter "
     "days, so it has winter. The distance from the sun changes only slightly and is not the "
     "main cause."),
    ("Explain the rules of chess to a beginner.",
     "Chess is played on an eight by eight board, and each player starts with sixteen pieces. "
     "The goal is to checkmate the other king, which means it is attacked and cannot escape. "
     "Pawns move forward one square and capture diagonally. Knights jump in an L shape, bishops "
     "move diagonally, rooks move in straight lines, and the queen combines both. The king "
     "moves one square in any direction. White moves first, and players take turns making one "
     "move each."),
    ("Suggest a weekly meal plan for a vegetarian.",
     "Monday: lentil soup with crusty bread. Tuesday: vegetable stir fry with tofu and brown "
     "rice. Wednesday: whole wheat pasta with tomato sauce, spinach and white beans. Thursday: "
     "black bean tacos with avocado and salsa. Friday: homemade pizza topped with peppers, "
     "mushrooms and olives. Saturday: chickpea curry with spinach and naan. Sunday: a big "
     "roasted vegetable tray with halloumi and couscous. For breakfasts, rotate oatmeal with "
     "fruit, yogurt with nuts, and eggs on toast."),
    ("How does a bill become law in the United States?",
     "A member of Congress introduces the bill in either the House or the Senate. It goes to a "
     "committee, which studies it, may hold hearings and can change it before voting to send "
     "it to the full chamber. If that chamber passes it, the bill goes to the other chamber, "
     "which follows a similar process. Both chambers must pass the same version. The bill then "
     "goes to the President, who can sign it into law or veto it; Congress can override a veto "
     "with a two thirds vote."),
    ("Recommend three books for someone who loved The Hobbit.",
     "First, The Name of the Wind by Patrick Rothfuss follows a gifted young man through a "
     "richly imagined world, told with the same warm storytelling. Second, A Wizard of "
     "Earthsea by Ursula K. Le Guin is a short, beautifully written adventure about a young "
     "wizard learning the cost of his power. Third, The Chronicles of Narnia by C. S. Lewis, a "
     "friend of Tolkien, offers magical journeys, talking animals and a sense of wonder that "
     "Hobbit fans usually enjoy."),
    ("What's a good stretching routine before a morning run?",
     "Before a run it is best to do dynamic stretches that warm the muscles rather than long "
     "held stretches. Start with two minutes of brisk walking or marching on the spot. Then do "
     "ten leg swings forward and back on each side, ten side to side swings, and ten walking "
     "lunges. Add ten hip circles in each direction and a few high knees and butt kicks. The "
     "whole routine takes about five minutes and gets your heart rate up gently before you "
     "start running."),
)
OPENERS = ("", "Sure! ", "Happy to help with that. ", "Good question. ")
CLOSERS = ("", " I hope this helps.", " Let me know if you would like more detail.",
           " Good luck, and enjoy it!")


def judge_rows() -> list[tuple[str, str, str]]:
    """The 64 (id, prompt, response) rows, in a fixed order."""
    rows = []
    for variant in range(len(OPENERS)):
        for index, (prompt, reply) in enumerate(PAIRS):
            closer = CLOSERS[(variant + index) % len(CLOSERS)]
            rows.append((f"p{index:02d}v{variant}", prompt, OPENERS[variant] + reply + closer))
    return rows


def timed(fn, warm_up: bool = True) -> dict:
    """First call (with any compilation), then the median of REPEATS calls; fn() -> result.
    Without `warm_up` (shapes compiled already) the first call is one of the REPEATS."""
    start = time.perf_counter()
    first_result = fn()
    first = time.perf_counter() - start
    if not warm_up:
        times = [first] + [timed_call(fn) for _ in range(REPEATS - 1)]
        return {"median_s": statistics.median(times), "times_s": times, "result": first_result}
    times = [timed_call(fn) for _ in range(REPEATS)]
    median = statistics.median(times)
    return {"first_s": first, "median_s": median, "compile_s": first - median,
            "times_s": times, "result": first_result}


def timed_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def causal_attention_flops(lengths, layers: int, width: int) -> float:
    """QK^T and attention-weighted V over the causal triangle of real tokens: per layer, a token
    at position p does 2 x 2 x width x (p + 1) flops."""
    return float(sum(4 * layers * width * n * (n + 1) / 2 for n in lengths))


def length_sorted_batches(lengths, batch: int) -> list[list[int]]:
    """Row indices, longest first, in chunks of `batch` (as our judges order them)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch] for start in range(0, len(order), batch)]


def right_padded(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask [len(rows), longest row], padded on the right only as far
    as the batch's longest row (what a library without compiled shapes does)."""
    width = max(len(r) for r in rows)
    tokens = np.full((len(rows), width), pad_id, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for slot, ids in enumerate(rows):
        tokens[slot, :len(ids)] = ids
        mask[slot, :len(ids)] = 1
    return tokens, mask


def exact_batches(ids: list[list[int]], pad_id: int) -> list[tuple[list[int], np.ndarray,
                                                                   np.ndarray]]:
    """(rows, tokens, mask) per batch, sorted and padded as the transformers reference is."""
    return [(rows, *right_padded([ids[i] for i in rows], pad_id))
            for rows in length_sorted_batches([len(r) for r in ids], BATCH)]


def read_positions(rows: list[int], answers: list[int], lengths: list[int]) -> np.ndarray:
    """[rows, 2]: the answer position and the one after it (itself when there is none)."""
    answer = np.array([answers[i] for i in rows])
    return np.stack([answer, np.minimum(answer + 1, [lengths[i] - 1 for i in rows])], axis=1)


# ---------------------------------------------------------------------------- workers
def jax_matmul_gflops() -> float:
    import jax
    import jax.numpy as jnp

    a, b = (jax.random.normal(jax.random.key(seed), (MATMUL_SIZE, MATMUL_SIZE), jnp.float32)
            for seed in (0, 1))
    product = jax.jit(jnp.matmul)
    jax.block_until_ready(product(a, b))
    best = min(timed_call(lambda: jax.block_until_ready(product(a, b)))
               for _ in range(MATMUL_REPEATS))
    return 2 * MATMUL_SIZE**3 / best / 1e9


def jax_worker(classifier: Path) -> dict:
    from prosocial_jax.evaluation.judges import JudgeInput

    items = [JudgeInput(i, p, r, "benign") for i, p, r in judge_rows()]
    out = {"matmul_gflops": jax_matmul_gflops(), **measure_reward(classifier, items)}
    out["rubric"] = measure_rubric(items)
    return out


def our_figures(run: dict, tokenise: dict, exact: dict, batch_shapes, exact_shapes) -> dict:
    """Our judge end to end, split into tokenisation and the rest (padded batches, forward
    passes, reading the scores), next to the same forward passes at the reference's padding."""
    return {"first_s": run["first_s"], "median_s": run["median_s"],
            "compile_s": run["compile_s"], "times_s": run["times_s"],
            "tokenise_s": tokenise["median_s"],
            "forward_and_batching_s": run["median_s"] - tokenise["median_s"],
            "forward_reference_padding_s": exact["median_s"],
            "forward_reference_padding_compile_s": exact["compile_s"],
            "batch_shapes": batch_shapes, "reference_padding_shapes": exact_shapes,
            # [rows, padded length, shared prefix]: the prefix runs once, for one row
            "padded_tokens": int(sum(b * t + p for b, t, p in batch_shapes))}


def measure_reward(classifier: Path, items) -> dict:
    """Our reward judge end to end, its tokenisation, and its forward passes at the reference's
    padding; plus the model's sizes for the flop count."""
    import jax

    from prosocial_jax.evaluation.judges import load_judge
    from prosocial_jax.evaluation.judges.base import padded_batches

    judge = load_judge(f"reward:{classifier}", batch_size=BATCH)
    config = judge.model.trunk.config
    layers = judge.model.trunk.params["layers"]
    run = timed(lambda: judge.judge(items))
    tokenise = timed(lambda: [judge.encode(item) for item in items], warm_up=False)
    ids = tokenise["result"]
    shapes = [[*b.tokens.shape, len(b.prefix)]
              for b in padded_batches(ids, judge.batch_size, judge.model.pad_id)]
    batches = exact_batches(ids, judge.model.pad_id)
    exact = timed(lambda: [judge.model.scores(tokens, mask) for _, tokens, mask in batches])
    return {"matrix_params": int(sum(x.size for x in jax.tree.leaves(layers) if x.ndim == 3)),
            "layers": config.num_layers, "width": config.num_heads * config.head_dim,
            "reward": {**our_figures(run, tokenise, exact, shapes,
                                     [list(t.shape) for _, t, _ in batches]),
                       "ids": ids, "scores": [j.scores["score"] for j in run["result"]]}}


def measure_rubric(items) -> dict:
    """Our rubric judge end to end, its tokenisation, and its forward passes at the
    reference's padding."""
    import jax

    import prosocial_jax as pj
    from prosocial_jax.evaluation.judges import RubricJudge
    from prosocial_jax.evaluation.judges.base import padded_batches, prompt_text
    from prosocial_jax.evaluation.judges.rubric import score_prompt

    model = pj.load_model("bundled:smollm2")
    judge = RubricJudge("rubric", model, (CRITERION,), batch_size=BATCH)
    run = timed(lambda: judge.judge(items))
    tokenise = timed(lambda: [
        judge._encode(score_prompt(CRITERION, prompt_text(item.prompt), item.response))
        for item in items], warm_up=False)
    sequences = tokenise["result"]
    # SmolLM2 writes "10" as "1" "0": the judge appends "1" and reads one position after it.
    tail = [] if judge.ten_id is not None else [judge.digit_ids[0]]
    full = [[*s, *tail] for s in sequences]
    answers, lengths = [len(s) - 1 for s in sequences], [len(f) for f in full]
    shapes = [[*b.tokens.shape, len(b.prefix)]
              for b in padded_batches(full, judge.batch_size, model.pad_id, keep=1 + len(tail))]
    batches = exact_batches(full, model.pad_id)
    exact = timed(lambda: [
        jax.block_until_ready(model.logits_at(tokens, mask,
                                              read_positions(rows, answers, lengths)))
        for rows, tokens, mask in batches])
    return {**our_figures(run, tokenise, exact, shapes, [list(t.shape) for _, t, _ in batches]),
            "ids": full, "answer_positions": answers,
            "scores": [j.scores[CRITERION] for j in run["result"]],
            "mass": [j.extra[f"{CRITERION}_mass"] for j in run["result"]]}


def reference_run(score_all, ids: list[list[int]], pad_id: int) -> dict:
    """The reference's timings and scores, and the token positions its padding computes."""
    run = timed(score_all)
    return {"median_s": run["median_s"], "times_s": run["times_s"],
            "padded_tokens": int(sum(t.size for _, t, _ in exact_batches(ids, pad_id))),
            "scores": run["result"].tolist()}


def torch_matmul_gflops() -> float:
    import torch

    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator) for _ in range(2))
    torch.matmul(a, b)
    best = min(timed_call(lambda: torch.matmul(a, b)) for _ in range(MATMUL_REPEATS))
    return 2 * MATMUL_SIZE**3 / best / 1e9


def expected_score(first: np.ndarray, after_one: np.ndarray, tokenizer) -> float:
    """E[s] over s = 1..10 from the answer position's probabilities (and the next position's,
    when "10" is written "1" "0"), as the rubric judge's documentation defines it."""
    def token(text):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None
    p = np.array([first[token(str(s))] for s in range(1, 10)] + [0.0], np.float64)
    if token("10") is not None:
        p[9] = first[token("10")]
    else:
        p_zero = after_one[token("0")]
        p[0], p[9] = p[0] * (1 - p_zero), p[0] * p_zero
    return float((np.arange(1, 11) * p).sum() / p.sum())


def torch_worker(classifier: Path, causal: Path, inputs: Path) -> dict:
    import torch
    import transformers

    given = json.loads(inputs.read_text())
    out: dict = {"threads": torch.get_num_threads(), "matmul_gflops": torch_matmul_gflops()}

    # ---- reward judge
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        classifier, dtype=torch.float32).eval()
    ids = given["reward_ids"]
    pad_id = model.config.pad_token_id

    def reward_scores():
        scores = np.zeros(len(ids), np.float64)
        with torch.no_grad():
            for rows, tokens, mask in exact_batches(ids, pad_id):
                scores[rows] = model(input_ids=torch.from_numpy(tokens),
                                     attention_mask=torch.from_numpy(mask)).logits[:, 0].numpy()
        return scores
    out["reward"] = reference_run(reward_scores, ids, pad_id)
    del model

    # ---- rubric judge
    model = transformers.AutoModelForCausalLM.from_pretrained(causal, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(causal)
    ids, answers = given["rubric_ids"], given["rubric_answer_positions"]
    lengths = [len(r) for r in ids]
    pad_id = model.config.pad_token_id

    def rubric_scores():
        scores = np.zeros(len(ids), np.float64)
        with torch.no_grad():
            for rows, tokens, mask in exact_batches(ids, pad_id):
                hidden = model.model(input_ids=torch.from_numpy(tokens),
                                     attention_mask=torch.from_numpy(mask)).last_hidden_state
                positions = torch.from_numpy(read_positions(rows, answers, lengths))
                # Only the two read positions go through lm_head ([rows, 2, V], not [rows, T, V]).
                picked = hidden[torch.arange(len(rows))[:, None], positions]
                probs = torch.softmax(model.lm_head(picked).float(), dim=-1).numpy()
                for slot, index in enumerate(rows):
                    scores[index] = expected_score(probs[slot, 0], probs[slot, 1], tokenizer)
        return scores
    out["rubric"] = reference_run(rubric_scores, ids, pad_id)
    return out


def run_worker(kind: str, *arguments: Path) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as handle:
        subprocess.run([sys.executable, __file__, "--worker", kind,
                        *(str(a) for a in arguments), "--out", handle.name], check=True)
        return json.loads(Path(handle.name).read_text())


# ---------------------------------------------------------------------------- checkpoints
def prepare_checkpoints(folder: Path) -> tuple[Path, Path]:
    """SmolLM2 float32 as an HF causal-LM folder, and the reward classifier built on its trunk;
    written once (atomically) and reused by later runs."""
    import prosocial_jax as pj

    causal, classifier = folder / "smollm2-float32", folder / f"smollm2-reward-seed{HEAD_SEED}"
    if not (causal / "config.json").is_file():
        pj.save_model(pj.load_model("bundled:smollm2", dtype="float32"), causal)
    if not (classifier / "config.json").is_file():
        import torch
        import transformers

        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            causal, dtype=torch.float32, num_labels=1)
        width = model.config.hidden_size
        head = np.random.default_rng(HEAD_SEED).normal(0.0, width**-0.5, (1, width))
        with torch.no_grad():
            model.score.weight.copy_(torch.from_numpy(head.astype(np.float32)))
        # Written beside its final name and renamed, so a crash leaves no half-written folder.
        partial = Path(tempfile.mkdtemp(dir=folder, prefix=".partial-"))
        try:
            model.save_pretrained(partial)
            transformers.AutoTokenizer.from_pretrained(causal).save_pretrained(partial)
            os.replace(partial, classifier)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return causal, classifier


# ---------------------------------------------------------------------------- report
def judge_report(ours: dict, theirs: dict, real_tokens: int, flops: float, peak: float) -> dict:
    responses = len(ours["scores"])
    ours_s, theirs_s = ours["median_s"], theirs["median_s"]
    at_peak_s = flops / (peak * 1e9)  # every useful flop at the measured matmul throughput
    return {
        "prosocial_jax_responses_per_s": responses / ours_s,
        "transformers_responses_per_s": responses / theirs_s,
        "speedup": theirs_s / ours_s,
        "meets_target": theirs_s / ours_s >= SPEEDUP_TARGET,
        "real_tokens": real_tokens,
        "prosocial_jax_tokens_per_s": real_tokens / ours_s,
        "transformers_tokens_per_s": real_tokens / theirs_s,
        "gflop_per_run": flops / 1e9,
        "prosocial_jax_gflops": flops / ours_s / 1e9,
        "transformers_gflops": flops / theirs_s / 1e9,
        "prosocial_jax_fraction_of_matmul": at_peak_s / ours_s,
        "transformers_fraction_of_matmul": at_peak_s / theirs_s,
        "responses_per_s_at_matmul_peak": responses / at_peak_s,
        "speedup_at_matmul_peak": theirs_s / at_peak_s,
        "prosocial_jax_compile_s": ours["compile_s"],
        "prosocial_jax_first_call_s": ours["first_s"],
        "max_abs_score_diff": float(np.max(np.abs(np.subtract(ours["scores"],
                                                              theirs["scores"])))),
        "prosocial_jax_profile_s": {
            "total": ours_s, "tokenise": ours["tokenise_s"],
            "forward_and_batching": ours["forward_and_batching_s"],
            "forward_at_reference_padding": ours["forward_reference_padding_s"],
            "padding_beyond_reference": (ours["forward_and_batching_s"]
                                         - ours["forward_reference_padding_s"]),
            "compile_at_reference_padding": ours["forward_reference_padding_compile_s"]},
        "speedup_at_reference_padding": theirs_s / ours["forward_reference_padding_s"],
        "prosocial_jax_padded_tokens": ours["padded_tokens"],
        "transformers_padded_tokens": theirs["padded_tokens"],
        "prosocial_jax_batch_shapes": ours["batch_shapes"],
        "reference_batch_shapes": ours["reference_padding_shapes"],
        "prosocial_jax_times_s": ours["times_s"], "transformers_times_s": theirs["times_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker:
        result = (jax_worker if args.worker == "jax" else torch_worker)(*args.paths)
        args.out.write_text(json.dumps(result))
        return

    from prosocial_jax import files

    bench = files.cache_dir() / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    causal, classifier = prepare_checkpoints(bench)
    bandwidth = copy_bandwidth()
    ours = run_worker("jax", classifier)
    with tempfile.NamedTemporaryFile("w", suffix=".json") as handle:
        json.dump({"reward_ids": ours["reward"]["ids"], "rubric_ids": ours["rubric"]["ids"],
                   "rubric_answer_positions": ours["rubric"]["answer_positions"]}, handle)
        handle.flush()
        theirs = run_worker("torch", classifier, causal, Path(handle.name))

    peak = ours["matmul_gflops"]
    layers, width = ours["layers"], ours["width"]
    judges = {}
    for name in ("reward", "rubric"):
        lengths = [len(ids) for ids in ours[name]["ids"]]
        # The reward head and the rubric's two-position lm_head are < 0.1% of the work: left out.
        flops = (2.0 * ours["matrix_params"] * sum(lengths)
                 + causal_attention_flops(lengths, layers, width))
        judges[name] = judge_report(ours[name], theirs[name], sum(lengths), flops, peak)
    judges["rubric"]["criterion"] = CRITERION
    judges["rubric"]["min_probability_mass"] = float(min(ours["rubric"]["mass"]))

    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch_threads": theirs["threads"]},
        "setting": f"SmolLM2-135M-Instruct (GGUF Q4_1 dequantised), float32; "
                   f"{len(judge_rows())} responses of ~100 tokens, batch {BATCH}; median of "
                   f"{REPEATS} after a first call",
        "flop_count": "2 x decoder matrix parameters x real tokens + causal attention "
                      "(4 x layers x width x (p + 1) per real token at position p); padding "
                      "and the score / lm_head reads not counted",
        "matrix_params": ours["matrix_params"],
        "jax_matmul_gflops": peak, "torch_matmul_gflops": theirs["matmul_gflops"],
        "matmul": f"float32 {MATMUL_SIZE}^3, best of {MATMUL_REPEATS}",
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "judges": judges,
    }
    print(json.dumps(results, indent=2))
    print(f"\nmatmul {MATMUL_SIZE}^3 float32: jax {peak:.0f} GFLOP/s, torch "
          f"{theirs['matmul_gflops']:.0f} GFLOP/s; copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    print(f"{'judge':8} {'ours resp/s':>11} {'torch resp/s':>12} {'ratio':>6} {'ours tok/s':>10} "
          f"{'GFLOP/s':>8} {'of peak':>7} {'compile s':>9} {'max diff':>9}")
    for name, entry in judges.items():
        print(f"{name:8} {entry['prosocial_jax_responses_per_s']:11.2f} "
              f"{entry['transformers_responses_per_s']:12.2f} {entry['speedup']:6.2f} "
              f"{entry['prosocial_jax_tokens_per_s']:10.0f} {entry['prosocial_jax_gflops']:8.1f} "
              f"{entry['prosocial_jax_fraction_of_matmul']:7.2f} "
              f"{entry['prosocial_jax_compile_s']:9.1f} {entry['max_abs_score_diff']:9.1e}")
        profile = entry["prosocial_jax_profile_s"]
        print(f"{'':8} ours {profile['total']:.2f} s: tokenise {profile['tokenise']:.2f} s, "
              f"forward and batching {profile['forward_and_batching']:.2f} s on "
              f"{entry['prosocial_jax_padded_tokens']} padded tokens; the same forward passes "
              f"at the reference's padding ({entry['transformers_padded_tokens']} tokens, "
              f"{entry['real_tokens']} real) {profile['forward_at_reference_padding']:.2f} s "
              f"({entry['speedup_at_reference_padding']:.2f}x transformers); at matmul peak "
              f"{entry['responses_per_s_at_matmul_peak']:.2f} resp/s "
              f"({entry['speedup_at_matmul_peak']:.2f}x transformers)")
    failures = [f"{name}: max abs score difference {judges[name]['max_abs_score_diff']:.2e} "
                f"> {tolerance}" for name, tolerance in (("reward", REWARD_TOLERANCE),
                                                         ("rubric", RUBRIC_TOLERANCE))
                if not judges[name]["max_abs_score_diff"] <= tolerance]
    if failures:
        raise SystemExit("scores disagree with transformers (results not written): "
                         + "; ".join(failures))
    write_results(args.out, results)


if __name__ == "__main__":
    main()
