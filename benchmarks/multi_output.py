"""What sparse and multivector outputs cost on the torch backend: one batch run to pooled vectors only
(`embed`) and to every output (`embed_outputs`), in the same process, paired in each round (order rotated),
medians of the rounds. Two random encoders: an
XLM-R with bge-m3's two heads, and a BERT masked-LM served as SPLADE (its head makes vocabulary logits).

    .venv/bin/python benchmarks/multi_output.py [--rows 32 --tokens 128 --vocab 30522] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_folder(folder: Path, kind: str, args) -> None:
    import torch
    from torch import nn
    from transformers import BertConfig, BertForMaskedLM, XLMRobertaConfig, XLMRobertaModel

    from server.demo_m3 import save_xlmr_tokenizer

    shape = dict(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                 intermediate_size=4 * args.hidden, vocab_size=args.vocab, max_position_embeddings=args.tokens + 2)
    torch.manual_seed(0)
    if kind == "m3":
        save_xlmr_tokenizer(folder)  # the special token ids the sparse output drops
        XLMRobertaModel(XLMRobertaConfig(pad_token_id=1, **shape)).save_pretrained(folder)
        for name, outputs in (("colbert_linear", args.hidden), ("sparse_linear", 1)):
            torch.save(nn.Linear(args.hidden, outputs).state_dict(), folder / f"{name}.pt")
    else:
        BertForMaskedLM(BertConfig(pad_token_id=0, **shape)).save_pretrained(folder)


def backend_for(folder: Path, kind: str, args):
    from server.backends.torch_backend import TorchBackend
    from server.config import ModelConfig, ServerSettings

    config = ModelConfig(name=f"bench/{kind}", model_path=str(folder), backend="torch", dtype="float32",
                         max_seq_len=args.tokens, pooling="splade" if kind == "splade" else "auto")
    backend = TorchBackend(config, ServerSettings(), "cpu")
    asyncio.run(backend.start(slots=1))
    return backend


def paired(first, second, rounds: int) -> dict:
    """Both variants in each round (the order rotated), then medians: each one's ms and the per-round ratio."""
    first(), second()  # warm
    times: dict[str, list[float]] = {"first": [], "second": []}
    for round_index in range(rounds):
        order = [("first", first), ("second", second)]
        for name, run in order if round_index % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - started) * 1e3)
    ratios = [b / a for a, b in zip(times["first"], times["second"])]
    return {"pooled_forward_ms": statistics.median(times["first"]),
            "all_outputs_ms": statistics.median(times["second"]), "ratio": statistics.median(ratios)}


def measure(kind: str, args) -> dict:
    import torch

    from server.backends.base import TokenBatch

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_folder(folder, kind, args)
        backend = backend_for(folder, kind, args)
        generator = torch.Generator().manual_seed(1)
        rows = [[0, *torch.randint(5, args.vocab, (args.tokens - 2,), generator=generator).tolist(), 2]
                for _ in range(args.rows)]
        every = frozenset(backend.layout.outputs)
        dense = TokenBatch(rows, [None] * args.rows)
        outputs = TokenBatch(rows, [None] * args.rows, [every] * args.rows)
        cell = {"outputs": sorted(every), **paired(lambda: backend.embed_sync(dense),
                                                   lambda: backend.embed_outputs_sync(outputs), args.rounds)}
        asyncio.run(backend.close())
    return cell


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    import torch

    report = {"config": vars(args), "machine": platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "m3": measure("m3", args), "splade": measure("splade", args)}
    for kind in ("m3", "splade"):
        cell = report[kind]
        print(f"{kind}: pooled forward {cell['pooled_forward_ms']:.1f} ms, {'+'.join(cell['outputs'])} "
              f"{cell['all_outputs_ms']:.1f} ms ({cell['ratio']:.2f}x), {args.rows} rows x {args.tokens} tokens")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
