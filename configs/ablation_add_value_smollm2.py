"""The add-value ablation on SmolLM2-135M-Instruct: the Pv-Arm of configs/pvarm_smollm2.py
(same backbone, pairs, adapter and training settings), with helpfulness added last.

    make ablation-add-value
    prosocial-jax ablate-add-value --config configs/ablation_add_value_smollm2.py \
        --out out/ablations/add_value

Three trainings of 60 steps each: the five other attributes; those extended by helpfulness
(its zeta row alone, on the pairs labelled for it, at 10x the rate: one row has little to
move); all six from scratch. Each is evaluated on 128 held-out pairs (a seeded sample; the
Pv-Arm run itself uses 32, too few to compare attributes by), about 30 minutes in all on a
2-core CPU.
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
    del config["out"], config["checkpoint_dir"]  # the ablation writes a report, no adapter
    config.arm.eval_limit = 128
    config.ablation = {"new_attribute": "helpfulness",
                       "extend_learning_rate": 10 * config.arm.learning_rate}
    return config
