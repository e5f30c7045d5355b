"""Decoder models: configs, the Flax decoder, KV cache, and HF/GGUF checkpoint I/O."""
