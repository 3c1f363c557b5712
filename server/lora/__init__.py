"""LoRA adapters: PEFT folder loading/validation and the mixed-adapter linear layer."""
