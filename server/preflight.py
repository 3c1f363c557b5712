"""Start-up check: resolve the model, read its shapes from config.json, load and validate every adapter."""

from __future__ import annotations

from server.backends.hf_model import meta_linear_shapes
from server.config import ConfigError, EngineConfig, ModelConfig
from server.lora.peft_format import load_peft_adapter
from server.sources import resolve_source
from server.tokenization import TextTokenizer


def check_model(config: ModelConfig, engine: EngineConfig) -> list[str]:
    """Lines describing what will be served; raises ConfigError / AdapterError / SourceError on a problem."""
    from transformers import AutoTokenizer

    where = config.source_file
    model_dir = resolve_source(config.model_path, kind="model")
    shapes, hidden = meta_linear_shapes(model_dir, config.adapters.lora_target_modules)
    if config.dims is not None and config.dims > hidden:
        raise ConfigError(f"{where}: dims {config.dims} is larger than the model's hidden size {hidden}")
    try:
        tokenizer = TextTokenizer(AutoTokenizer.from_pretrained(model_dir), max_seq_len=config.max_seq_len,
                                  query_template=config.query_template,
                                  default_instruction=config.default_instruction, eos_token=config.eos_token)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    paths = config.adapters.lora_paths
    if config.adapters.preload and len(paths) > engine.max_loras_per_model:
        raise ConfigError(f"{where}: {len(paths)} preloaded adapters exceed max_loras_per_model "
                          f"({engine.max_loras_per_model})")
    lines = [f"model {config.name}: {model_dir} (hidden {hidden}, {len(shapes)} LoRA-capable linears, "
             f"pooling on token id {tokenizer.eos_id})"]
    for name, source in paths.items():
        adapter = load_peft_adapter(name, resolve_source(source, kind="adapter"), base_shapes=shapes,
                                    max_rank=config.adapters.max_lora_rank)
        lines.append(f"  adapter {name}{'' if config.adapters.preload else ' (on demand)'}: rank {adapter.rank}, targets {','.join(adapter.target_modules)}, "
                     f"{adapter.nbytes / 1024:.0f} KiB from {adapter.source}")
    for profile in config.profiles.values():
        lines.append(f"  profile {profile.name}: lora_id={profile.lora_id} instruction={profile.instruction!r}")
    return lines
