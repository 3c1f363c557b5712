"""What `launch.py train` says about its own run: a warning for a run too short to learn from or one that
leaves pairs out, an optional held-out split whose loss is reported while training, and the identity of
the base model for `training.json` (as the config names it: no path of this machine)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from pathlib import Path

import torch

from server.config import ModelConfig, ServerSettings
from server.public_paths import public_paths
from server.training.pairs import Pair

MIN_STEPS = 50


def plan_warnings(pair_count: int, batch_size: int, steps: int, *, fixed_steps: bool) -> list[str]:
    size = min(batch_size, pair_count)
    notes = []
    if steps < MIN_STEPS:
        how = "set --steps" if fixed_steps else "raise --epochs or set --steps"
        notes.append(f"only {steps} optimiser steps ({pair_count} pairs, batch size {size}): too few to learn "
                     f"much from; add pairs, {how} ({MIN_STEPS} or more)")
    if pair_count % size:
        notes.append(f"each epoch leaves out {pair_count % size} of {pair_count} pairs (its last partial batch, "
                     f"a different one each epoch by the seed); a batch size dividing {pair_count} uses all")
    return notes


def split(pairs: Sequence[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(training, validation): a seeded `fraction` of the pairs held out (at least 2 when any)."""
    if fraction <= 0:
        return list(pairs), []
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    held = set(order[:max(2, round(len(pairs) * fraction))])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


@torch.no_grad()
def validation_loss(embed, pairs: Sequence[Pair], batch_size: int, temperature: float, loss_fn) -> float:
    """Mean InfoNCE over the held-out pairs in batches (in-batch negatives), without gradients."""
    losses = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        if len(batch) < 2:
            continue
        queries = embed([p.query for p in batch], is_query=True)
        positives = embed([p.positive for p in batch], is_query=False)
        losses.append(loss_fn(queries, positives, None, temperature).item())
    return sum(losses) / len(losses) if losses else float("nan")


def base_model_identity(config: ModelConfig, folder: Path) -> dict:
    """The served name, the source as the config wrote it, and a digest of its config.json."""
    shown = public_paths([config], ServerSettings()).hide(config.written_paths.get(config.model_path,
                                                                                     config.model_path))
    config_json = folder / "config.json"
    digest = hashlib.sha256(config_json.read_bytes()).hexdigest() if config_json.is_file() else None
    return {"name": config.name, "source": shown, "config_json_sha256": digest}
