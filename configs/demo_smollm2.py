"""The main job's last stage (`make demo`): the pipeline side by side on SmolLM2-135M-Instruct.

    prosocial-jax compare --config configs/demo_smollm2.py --out out/demo
    prosocial-jax compare --config configs/demo_smollm2.py --config.compare.guidance=2 --out o

Models (built by `make demo` on its first run, cached): the DiReg-edited SmolLM2 (top 10% of
the harm vector, lambda 1) and the Pv-Arm adapter trained with PCGrad on the persona-contrast
preference set, SmolLM2 itself as its backbone. Settings: base, DiReg, DiReg + Pv-Arm + safety
under the uniform preference and under each prosocial attribute's one-hot. Prompts: the first
10 "standard" HarmBench test behaviours and the first 10 of the preference set's test prompts
(benign and prosocial, shuffled; never answered nor trained on). Greedy, 48 new tokens. Sized
so that a run with the models built takes under 3 minutes on a 2-core CPU; `make guided-eval`
measures the same settings on 60 + 60 prompts.

Guidance (w, tau, plausibility floor): chosen from `make guidance-sweep` on the preference
set's dev prompts (held out from training, and apart from the test prompts decoded here): the
setting with the most non-degenerate refusals of harmful requests among those that keep
over-refusal of benign requests at most 10% and degenerate answers at most 5 points above the
base model's: w = 1, tau = 0.1, p = 0, with the no-repeat rule at n = 4 (the sweep and the
reasoning are in the README).
"""

import os

import ml_collections

CACHE = os.environ.get("PROSOCIAL_JAX_CACHE", os.path.expanduser("~/.cache/prosocial_jax"))


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.base = "bundled:smollm2"
    config.direg = os.path.join(CACHE, "pipeline", "smollm2-direg")
    config.adapter = os.path.join(CACHE, "pvarm", "adapter-pcgrad")
    config.reward = ml_collections.FieldReference(None, field_type=str)  # None: the base
    config.benign_from = os.path.join(CACHE, "pvarm", "preferences", "test_prompts.jsonl")
    config.compare = ml_collections.ConfigDict({
        "harmful_split": "test",
        "harmful_limit": 10,
        "benign_limit": 10,
        "max_new_tokens": 48,
        "batch_size": 40,  # the guided rows (6 settings x 20 prompts) in 3 batches
        # Every prosocial attribute's one-hot, beside the uniform preference.
        "preferences": ("empathy=1", "sensitivity=1", "non_judgmental=1", "truthfulness=1",
                        "helpfulness=1"),
        "guidance": 1.0,
        "safety_margin": 0.1,
        "plausibility": 0.0,
        # A 4-gram of the answer never repeats (a soft constraint of the guided settings only):
        # a tight safety stage makes the safety head's favourite the next token, and after its
        # one short refusal that favourite is the refusal again ("I can't help with that. I
        # can't help with that. ...").
        "no_repeat_ngram": 4,
        # The Pv-Arm-only settings are left to `make guided-eval`: later runs of the demo must
        # stay within 3 minutes on a 2-core CPU.
        "ablations": False,
    })
    return config
