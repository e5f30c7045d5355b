"""The conflict-mitigation ablation on SmolLM2-135M-Instruct: the Pv-Arm of
configs/pvarm_smollm2.py trained with PCGrad and with the plain weighted sum (both reused from
`make pvarm`, which trains them on the same pairs and steps), against six single-attribute
adapters trained here with the same settings (60 steps each, on the pairs labelled for their
attribute).

    make ablation-conflict
    prosocial-jax ablate-conflict --config configs/ablation_conflict_smollm2.py \
        --out out/ablations/conflict

Accuracy on 128 held-out pairs (a seeded sample). Sweep: the 21 preferences of the simplex at
step 0.5 (and its centre) x the first 16 test prompts, 48 new tokens, w = 1 and tau = 2 (the
default margin: at the demo's tau = 0.1 the safe set is usually one token and the preferences
have nothing to choose between, see the README's guided evaluation), judged by the rule judge.
The six single-attribute adapters are kept in the cache (pvarm/arms), where the overhead
ablation's multi-ARM finds them.
"""

import importlib.util
import os


def _pvarm_config():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pvarm_smollm2.py")
    spec = importlib.util.spec_from_file_location("pvarm_smollm2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    config = _pvarm_config()
    cache = os.path.dirname(config.out)  # the Pv-Arm run's folder
    del config["out"], config["checkpoint_dir"]  # the ablation writes a report
    config.arm.eval_limit = 128
    config.prompts_from = os.path.join(cache, "preferences", "test_prompts.jsonl")
    config.ablation = {
        "step": 0.5, "prompts": 16, "max_new_tokens": 48, "guidance": 1.0,
        "safety_margin": 2.0, "no_repeat_ngram": 4,
        "pcgrad_adapter": os.path.join(cache, "adapter-pcgrad"),
        "sum_adapter": os.path.join(cache, "adapter-nopcgrad"),
        # kept for the overhead ablation's multi-ARM (make ablation-overhead passes it as arms)
        "save_separate": os.path.join(cache, "arms")}
    return config
