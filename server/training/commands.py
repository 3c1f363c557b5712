"""`launch.py train` and `launch.py eval`: argument parsing and progress lines around train_adapter and
evaluate."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from server.config import ConfigError, load_model_config
from server.help_format import HelpFormatter
from server.training.pairs import read_corpus, read_pairs

log = logging.getLogger("launch")


def program() -> str:
    """How this command was started: `launch.py`, or the installed `multilora-embed`."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "launch.py"
    return name if name in ("launch.py", "multilora-embed") else "launch.py"


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{program()} train", formatter_class=HelpFormatter,
                                     description="Train a PEFT LoRA adapter for an embedder "
                                     "from JSONL pairs {query, positive[, negative]} (in-batch negatives)")
    parser.add_argument("--config", required=True, help="the model YAML the adapter is for")
    parser.add_argument("--pairs", required=True, help="JSONL training pairs")
    parser.add_argument("--out", required=True, help="adapter folder to write (under an adapter root to hot-load)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank r")
    parser.add_argument("--alpha", type=float, default=32.0, help="LoRA alpha (the update is scaled by alpha/r)")
    parser.add_argument("--targets", help="comma-separated linear names (default: the config's "
                                          "lora_target_modules, else every linear)")
    parser.add_argument("--temperature", type=float, default=0.05, help="InfoNCE softmax temperature")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the pairs")
    parser.add_argument("--steps", type=int, help="optimiser steps (overrides --epochs)")
    parser.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float, default=2e-4,
                        help="AdamW learning rate")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per step (the in-batch negatives)")
    parser.add_argument("--warmup", type=float, default=0.1, help="share of the steps with a linear warm-up")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the batch order")
    parser.add_argument("--max-seq-len", type=int, help="token limit while training (default: the model's)")
    parser.add_argument("--instruction", help="query instruction (default: the model's default_instruction)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    held = parser.add_mutually_exclusive_group()
    held.add_argument("--validation", help="JSONL pairs whose loss is reported while training (not trained on)")
    held.add_argument("--validation-split", type=float, default=0.0,
                      help="share of --pairs held out (seeded) and reported as validation loss")
    return parser


def eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{program()} eval", formatter_class=HelpFormatter,
                                     description="Retrieval metrics (recall@1/5/10, "
                                     "MRR@10, NDCG@10) of the base model and adapters, through a running server")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the running server")
    parser.add_argument("--model", required=True, help="served model name")
    parser.add_argument("--pairs", required=True, help="JSONL test pairs: each query's positive is its answer")
    parser.add_argument("--corpus", help="JSONL {text} documents ranked besides the positives")
    parser.add_argument("--adapter", action="append", default=[], help="lora_id to compare (repeatable)")
    parser.add_argument("--instruction", help="query instruction (default: the model's)")
    parser.add_argument("--out", default="benchmarks/out/eval", help="folder for <name>.json and <name>.png")
    parser.add_argument("--name", default="eval", help="file name of the report")
    parser.add_argument("--api-key", default=os.environ.get("SIE_API_KEY"),
                        help="sent as Authorization: Bearer (default: $SIE_API_KEY)")
    return parser


def run_train(argv: list[str]) -> int:
    import torch

    from server.training.train import TrainSettings, log_progress, train_adapter
    from server.training.validation import split

    args = train_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_model_config(args.config)
    settings = TrainSettings(
        rank=args.rank, alpha=args.alpha, temperature=args.temperature, epochs=args.epochs, steps=args.steps,
        targets=tuple(t.strip() for t in args.targets.split(",")) if args.targets else None,
        learning_rate=args.learning_rate, batch_size=args.batch_size, warmup=args.warmup, seed=args.seed,
        max_seq_len=args.max_seq_len, instruction=args.instruction)
    if not 0 <= args.validation_split < 0.9:
        raise ConfigError(f"--validation-split {args.validation_split} must be in [0, 0.9)")
    pairs, held_out = split(read_pairs(args.pairs), args.validation_split, args.seed)
    if args.validation:
        held_out = read_pairs(args.validation)
    log.info("training %s adapter on %d pairs from %s", config.name, len(pairs), args.pairs)
    losses = train_adapter(config, pairs, settings, out, on_step=log_progress, validation=held_out)
    log.info("wrote %s (loss %.4f -> %.4f)", out, losses[0], losses[-1])
    print(out, flush=True)
    return 0


def run_eval(argv: list[str]) -> int:
    from server.training.evaluate import EvalRefused, EvalTask, corpus_of, evaluate, markdown_table, write_report

    args = eval_parser().parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per encode call otherwise
    pairs = read_pairs(args.pairs)
    corpus = corpus_of(pairs, read_corpus(args.corpus) if args.corpus else ())
    task = EvalTask(url=args.url, model=args.model, pairs=pairs, corpus=corpus, adapters=args.adapter,
                    instruction=args.instruction, api_key=args.api_key)
    try:
        report = evaluate(task)
    except EvalRefused as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    json_path, png_path = write_report(report, Path(args.out), args.name)
    print(markdown_table(report), flush=True)
    log.info("wrote %s and %s", json_path, png_path)
    return 0
