"""Train a PEFT LoRA for an embedder from (query, positive[, negative]) pairs with in-batch negatives
(InfoNCE, the multiple-negatives ranking loss). Inputs go through the server's own tokenizer wrapper
(query template and instruction, pooling EOS, truncation) and `pooled_forward` (padding mask, pooling),
then Matryoshka truncation and L2 normalisation as served, so training optimises exactly the vectors the
server returns. The written folder is a plain PEFT adapter that the server hot-loads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from server.backends.hf_model import load_transformer, pad_rows, pooled_forward
from server.cache import follow_umask
from server.config import ConfigError, ModelConfig
from server.model_layout import ModelLayout, read_layout
from server.sources import resolve_source
from server.tokenization import TextTokenizer, load_tokenizer
from server.training.pairs import Pair
from server.training.validation import base_model_identity, plan_warnings, validation_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    rank: int = 16
    alpha: float = 32.0
    targets: tuple[str, ...] | None = None  # None: the model config's lora_target_modules, else every linear
    temperature: float = 0.05
    epochs: int = 1
    steps: int | None = None  # when set, the number of optimiser steps (epochs are then ignored)
    learning_rate: float = 2e-4
    batch_size: int = 32
    warmup: float = 0.1  # fraction of the steps with a linearly rising learning rate
    seed: int = 0
    max_seq_len: int | None = None  # None: the model's; lower trains faster on long documents
    instruction: str | None = None  # None: the model's default_instruction

    def __post_init__(self) -> None:
        checks = [(self.rank >= 1, "rank must be >= 1"), (self.alpha > 0, "alpha must be > 0"),
                  (self.temperature > 0, "temperature must be > 0"), (self.epochs >= 1, "epochs must be >= 1"),
                  (self.steps is None or self.steps >= 1, "steps must be >= 1"),
                  (self.learning_rate > 0, "learning rate must be > 0"),
                  (self.batch_size >= 2, "batch size must be >= 2 (in-batch negatives)"),
                  (0 <= self.warmup < 1, "warmup must be in [0, 1)"),
                  (self.max_seq_len is None or self.max_seq_len >= 4, "max_seq_len must be >= 4")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"training settings: {message}")


@dataclass(frozen=True)
class StepReport:
    step: int
    total: int
    loss: float
    seconds: float


def log_progress(report: StepReport) -> None:
    """A progress line for the first step, every fifth and the last."""
    if report.step == 1 or report.step % 5 == 0 or report.step == report.total:
        log.info("step %d/%d  loss %.4f  %.2f s/step  eta %.0f s", report.step, report.total, report.loss,
                 report.seconds, report.seconds * (report.total - report.step))


class Embedder:
    """The serving path's text -> normalised vector, differentiable, over a PEFT-wrapped model."""

    def __init__(self, model, tokenizer: TextTokenizer, layout: ModelLayout, config: ModelConfig,
                 settings: TrainSettings):
        self.model, self.tokenizer, self.layout = model, tokenizer, layout
        self.dims = config.dims
        self.limit = settings.max_seq_len
        self.instruction = settings.instruction

    def __call__(self, texts: Sequence[str], *, is_query: bool) -> torch.Tensor:
        rendered = [self.tokenizer.render(t, is_query=is_query, instruction=self.instruction) for t in texts]
        rows = self.tokenizer.tokenize(rendered, limit=self.limit).input_ids
        input_ids, lengths = pad_rows(rows, self.layout.pad_token_id, "cpu")
        pooled = pooled_forward(self.model, input_ids, lengths, self.layout)
        return F.normalize(pooled[:, :self.dims] if self.dims else pooled, dim=-1)


def info_nce(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None,
             temperature: float) -> torch.Tensor:
    """Each query against every positive (and hard negative) in the batch; its own positive is the label."""
    documents = positives if negatives is None else torch.cat([positives, negatives])
    scores = queries @ documents.T / temperature
    return F.cross_entropy(scores, torch.arange(len(queries)))


def batches(pairs: Sequence[Pair], settings: TrainSettings) -> list[list[Pair]]:
    """The whole run's batches: each epoch shuffled by the seed alone, its last partial batch dropped."""
    rng = random.Random(settings.seed)
    size = min(settings.batch_size, len(pairs))
    per_epoch = len(pairs) // size
    total = settings.steps or per_epoch * settings.epochs
    plan: list[list[Pair]] = []
    while len(plan) < total:
        epoch = list(pairs)
        rng.shuffle(epoch)
        plan.extend(epoch[i * size:(i + 1) * size] for i in range(per_epoch))
    return plan[:total]


def _schedule(total: int, warmup: float) -> Callable[[int], float]:
    warm = max(1, int(total * warmup))
    return lambda step: (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))


def prepare(config: ModelConfig, settings: TrainSettings) -> Embedder:
    """Base model (float32, CPU) wrapped with a fresh PEFT LoRA, and the serving tokenizer."""
    from peft import LoraConfig, get_peft_model

    folder = resolve_source(config.model_path, kind="model")
    layout = read_layout(folder, config)
    tokenizer = load_tokenizer(config)
    torch.manual_seed(settings.seed)
    base = load_transformer(folder, torch.float32, "cpu")
    targets = settings.targets or config.adapters.lora_target_modules or "all-linear"
    lora = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=0.0,
                      target_modules=list(targets) if isinstance(targets, tuple) else targets)
    try:
        with warnings.catch_warnings():  # PEFT 0.21 reads transformers' deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            model = get_peft_model(base, lora)
    except ValueError as exc:  # PEFT: no module matched the targets
        raise ConfigError(f"training settings: targets {targets}: {exc}") from None
    embed = Embedder(model, tokenizer, layout, config, settings)
    embed.folder = folder
    return embed


def train_adapter(config: ModelConfig, pairs: Sequence[Pair], settings: TrainSettings, out: Path, *,
                  on_step: Callable[[StepReport], None] = lambda report: None,
                  validation: Sequence[Pair] = ()) -> list[float]:
    """Train, then write the PEFT folder `out` atomically; returns the loss of every step. With `validation`
    pairs, their loss is logged five times along the way and at the end, and kept in training.json."""
    started_at = time.perf_counter()
    embed = prepare(config, settings)
    plan = batches(pairs, settings)
    notes = plan_warnings(len(pairs), settings.batch_size, len(plan), fixed_steps=settings.steps is not None)
    for note in notes:
        log.warning("%s", note)
    checked: list[dict] = []
    every = max(1, len(plan) // 5)
    params = [p for p in embed.model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, _schedule(len(plan), settings.warmup))
    losses = []  # the model stays in eval mode: the forward is the serving forward, without dropout
    for step, batch in enumerate(plan, start=1):
        started = time.perf_counter()
        queries = embed([p.query for p in batch], is_query=True)
        positives = embed([p.positive for p in batch], is_query=False)
        hard = [p.negative for p in batch if p.negative]
        negatives = embed(hard, is_query=False) if hard else None
        loss = info_nce(queries, positives, negatives, settings.temperature)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"loss became {loss.item()} at step {step}; lower the learning rate")
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        scheduler.step()
        losses.append(loss.item())
        on_step(StepReport(step, len(plan), loss.item(), time.perf_counter() - started))
        if validation and (step % every == 0 or step == len(plan)):
            checked.append({"step": step, "loss": validation_loss(embed, validation, settings.batch_size,
                                                                  settings.temperature, info_nce)})
            log.info("step %d/%d  validation loss %.4f (%d held-out pairs)", step, len(plan), checked[-1]["loss"],
                     len(validation))
    record = {"base_model": base_model_identity(config, embed.folder), "pairs": len(pairs),
              "validation_pairs": len(validation), "steps": len(plan), "losses": losses, "validation": checked,
              "warnings": notes, "wall_seconds": round(time.perf_counter() - started_at, 1),
              "settings": dataclasses.asdict(settings)}
    save_adapter(embed.model, config, record, out)
    return losses


def save_adapter(model, config: ModelConfig, record: dict, out: Path) -> None:
    """The PEFT folder plus `training.json` (`record`), swapped in whole so that a server loading from the
    same folder never reads half an adapter. No path of this machine is written: the base model is named as
    served, in adapter_config.json and in the model card."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        adapter_config = json.loads((staging / "adapter_config.json").read_text())
        adapter_config["base_model_name_or_path"] = config.name
        (staging / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
        card = staging / "README.md"
        loaded_from = next(iter(model.peft_config.values())).base_model_name_or_path
        if card.is_file() and loaded_from:  # PEFT's model card names the base model by its folder here
            card.write_text(card.read_text().replace(str(loaded_from), config.name))
        (staging / "training.json").write_text(json.dumps({"model": config.name, **record}, indent=2))
        follow_umask(staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
