"""Fine-tuning: adapter methods (QLoRA, LoRA, DoRA) and full fine-tunes (FSDP2, DeepSpeed ZeRO-3)."""
