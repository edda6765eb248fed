"""Model conversions: GGUF to Hugging Face, dtype and shards, layer cuts, ZeRO checkpoints, merged LoRA adapters."""
