"""Multi-LoRA embedding server for LLM embedders: SIE- and OpenAI-compatible HTTP over torch or SGLang."""

__version__ = "0.1.0"
