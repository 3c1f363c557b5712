"""What the model lists say. SIE's ModelInfo for each model and for each `<model>:<profile>` and
`<model>:<adapter>` id (so any SDK's `listModels` shows them), with `capabilities.lora_adapters` and
`profile_lora_adapters` as SIE's newer SDKs read them; OpenAI's list of the same ids. No server path shows."""

from __future__ import annotations

from server.api.model_ids import ModelId
from server.options import Selection
from server.public_paths import PublicPaths
from server.served_model import ModelState, ServedModel

STATES = {ModelState.READY: "loaded", ModelState.LOADING: "loading", ModelState.FAILED: "failed"}
# An adapter's registry state -> the state its `<model>:<adapter>` id is listed with.
ADAPTER_STATES = {"ready": "loaded", "loading": "loading", "failed": "failed", "unloading": "unloading",
                  "unloaded": "available", "on_demand": "available"}


def model_info(model: ServedModel, paths: PublicPaths) -> dict:
    config, status = model.config, model.status()
    loras = paths.hide_in(model.adapters.describe())
    usable = [entry["name"] for entry in loras if entry["state"] != "failed"]
    return {
        "name": config.name,
        "state": STATES[status.state],
        "loaded": status.state is ModelState.READY,
        "last_error": {"message": paths.hide(status.failure)} if status.failure else None,
        "inputs": ["text"],
        "outputs": list(status.output_dims()) or ["dense"],
        "dims": status.output_dims(),
        "max_sequence_length": config.max_seq_len,
        "digest": status.base_digest,
        "profiles": {name: {"instruction": p.instruction, "lora_id": p.lora_id, "is_default": False}
                     for name, p in config.profiles.items()},
        "capabilities": {"lora_adapters": usable,
                         "profile_lora_adapters": {name: [p.lora_id] if p.lora_id else []
                                                   for name, p in config.profiles.items()}},
        "loras": loras,
        **({"startup": startup_info(status.stats)} if status.stats is not None else {}),
    }


def startup_info(stats) -> dict:
    """Where the start-up time went and what the engine compiled and captured."""
    engine = stats.engine
    return {"ready_s": None if stats.ready_seconds is None else round(stats.ready_seconds, 3),
            "phases_s": {phase: round(seconds, 3) for phase, seconds in stats.startup_seconds},
            "compiles": engine.compiles,
            "cuda_graphs": {"captured": engine.graphs_captured, "planned": engine.graphs_planned}}


def selected_info(target: ModelId, paths: PublicPaths) -> dict:
    """The entry of a model id: the model's own, or its `<model>:<suffix>` variant."""
    info = model_info(target.model, paths)
    if target.selection.profile is None and target.selection.lora_id is None:
        return info
    return _variant(info, target.model, target.selection)


def _variant(info: dict, model: ServedModel, selection: Selection) -> dict:
    """The model's entry narrowed to one profile or adapter, as SIE lists `<model>:<profile>`: that profile
    becomes the default and only its adapter is advertised; the state is the adapter's once the model is up."""
    config = model.config
    suffix = selection.profile if selection.profile is not None else selection.lora_id
    adapter = selection.adapter(config)
    entry = next((e for e in info["loras"] if e["name"] == adapter), None)
    state = info["state"]
    if state == "loaded" and adapter is not None:
        state = ADAPTER_STATES.get(entry["state"], "available") if entry else "available"
    profile = config.profiles.get(selection.profile) if selection.profile is not None else None
    adapters = [adapter] if adapter else []
    return {**info, "name": f"{config.name}:{suffix}", "parent": config.name, "state": state,
            "loaded": state == "loaded",
            "profiles": {"default": {"instruction": profile.instruction if profile else None, "lora_id": adapter,
                                     "is_default": True}},
            "capabilities": {"lora_adapters": adapters, "profile_lora_adapters": {"default": adapters}},
            "loras": [entry] if entry else []}


def model_entries(model: ServedModel, paths: PublicPaths) -> list[dict]:
    """The model's entry, then one per profile, then one per adapter no profile shadows."""
    info = model_info(model, paths)
    profiles = sorted(model.config.profiles)
    adapters = sorted({e["name"] for e in info["loras"]} - set(profiles))
    return [info, *(_variant(info, model, Selection(profile=p)) for p in profiles),
            *(_variant(info, model, Selection(lora_id=a)) for a in adapters)]


def openai_entries(name: str, model: ServedModel) -> list[dict]:
    """OpenAI's model objects: the model, then `<model>:<adapter|profile>` for each resident adapter and
    each profile."""
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "multilora-embed"}]
    for suffix in sorted(set(model.adapters.names()) | set(model.config.profiles)):
        data.append({"id": f"{name}:{suffix}", "object": "model", "created": 0, "owned_by": "multilora-embed",
                     "parent": name})
    return data
