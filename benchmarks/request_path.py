"""Where one request's time goes, one request at a time: each stage of the served path timed on its own in
process (parse, validate and resolve, tokenise, the batcher's round trip, the hop to the model's worker
thread and back, the forward, post-processing, serialising), the whole path in process (`model.encode`),
the same request served over loopback HTTP (a keep-alive `http.client` connection: the lightest client),
and the model's own forward on the same text (transformers' tokenizer and model, the folder's pooling), our
engine's forward of its ids (`embed_sync`, padding and pooling included) and, where the folder is a
sentence-transformers model, `SentenceTransformer.encode`, each timed on the model's worker
thread (one OpenMP team, as served; two threads' teams on two cores slow each other). The stage table: each
round runs every variant once, the order rotated each round, each call right after an untimed forward of
ours (caches as a forward leaves them, the server's threads asleep); medians of rounds. Served against the
raw forwards: each as a stream of lone calls (blocks of back-to-back calls, the variants' blocks alternating),
as a client sending one request at a time sees it; in the settled rounds the in-process forwards re-read
weights the settling forward just read, the server's do not. `--busy N` keeps N other processes spinning.

    python benchmarks/request_path.py --rounds 100                          # MiniLM (make real), 2 threads
    python benchmarks/request_path.py --config model_configs/demo.yaml --model demo/qwen3-tiny --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = "How do I waterproof a bathroom floor before laying tiles in a new building?"
OWN = "the model's own forward (transformers: tokenizer, model, pooling)"
SERVED = "served over HTTP (client included)"
ST = "sentence-transformers encode"
OURS = "forward (ours, on the worker)"
STREAMED = (OWN, ST, SERVED, OURS)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "model_configs" / "all-minilm-l6-v2.yaml"))
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, here and in the server")
    parser.add_argument("--text", default=TEXT)
    parser.add_argument("--busy", type=int, default=0, help="processes kept spinning on the CPU meanwhile")
    parser.add_argument("--stream", type=int, default=20, help="back-to-back calls per block of the streams")
    parser.add_argument("--json")
    return parser.parse_args(argv)


def own_forward(config, text: str):
    """The model's own forward on the text, as a user would write it with transformers: its tokenizer, the
    model, the pooling its folder names, L2 normalisation."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from server.model_layout import read_layout
    from server.sources import resolve_source

    folder = resolve_source(config.model_path, kind="model")
    pooling = read_layout(folder, config).pooling
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()

    def run() -> None:
        with torch.inference_mode():
            hidden = model(**tokenizer([text], return_tensors="pt")).last_hidden_state
            pooled = hidden.mean(1) if pooling == "mean" else hidden[:, 0] if pooling == "cls" else hidden[:, -1]
            torch.nn.functional.normalize(pooled, dim=-1)

    return run


def sentence_transformer(config):
    """`SentenceTransformer` on the model's folder, or None where it is not a sentence-transformers folder."""
    from server.sources import resolve_source

    folder = resolve_source(config.model_path, kind="model")
    if not (folder / "modules.json").is_file():
        return None
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu")


class Served:
    """The server on loopback (`launch.py`, the same torch threads) and one keep-alive connection to it."""

    def __init__(self, args):
        sys.path.insert(0, str(REPO / "benchmarks"))
        import msgpack
        import serve_load

        env = {"OMP_NUM_THREADS": str(args.threads)}
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            self.process, url, _ = serve_load.start_server(args.config)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.stop = lambda: serve_load.stop_server(self.process)
        self.connection = http.client.HTTPConnection(url.removeprefix("http://"))
        self.path = f"/v1/encode/{args.model}"
        self.body = msgpack.packb({"items": [{"text": args.text}]})
        self.server_ms: list[float] = []

    def __call__(self) -> None:
        self.connection.request("POST", self.path, self.body, {"Content-Type": "application/msgpack"})
        response = self.connection.getresponse()
        response.read()
        assert response.status == 200, response.status
        self.server_ms.append(float(response.getheader("X-Total-Time")))

    def not_found(self) -> None:
        """The same request for a model the server does not serve: the HTTP layer and the route's first step."""
        self.connection.request("POST", self.path + "-unknown", self.body, {"Content-Type": "application/msgpack"})
        response = self.connection.getresponse()
        response.read()
        assert response.status == 404, response.status


async def stages(args, model, app_context) -> dict:
    """Each stage as a coroutine factory, timed one call at a time."""
    import msgpack

    from server.answers import finish_rows
    from server.api.encoding import output_entries
    from server.api.model_ids import parse_model_id
    from server.api.schemas import EncodeRequestIn, validate
    from server.api.wire import decode, pack
    from server.backends.base import RowOutputs, TokenBatch
    from server.batching import Batcher
    from server.options import EncodeOptions, resolve_options

    body = msgpack.packb({"items": [{"text": args.text}]})
    options = EncodeOptions()
    ids = model.tokenizer.tokenize([args.text]).input_ids
    vector = model.backend.embed_sync(TokenBatch(ids, [None]))
    row = RowOutputs(dense=vector[0])
    answers = finish_rows([row], options, dims=model.config.dims, normalize=model.config.normalize)
    loop = asyncio.get_running_loop()
    idle = Batcher(lambda batch: _ready(vector), model.batcher.limits, name="bench")
    idle.start()

    async def parse():
        decoded = await decode(body, "application/msgpack")
        parsed = validate(EncodeRequestIn, decoded, what="request body")
        target = parse_model_id(app_context, args.model)
        resolve_options(model.config, parsed.requested()[1], target.selection)

    async def tokenize():
        clipped, _ = model._prepare([args.text], options)
        model.tokenizer.tokenize(clipped, limit=model.backend.info.max_input_tokens)

    async def batcher():
        await asyncio.gather(*idle.submit(ids, None))

    async def hop():
        await loop.run_in_executor(model.backend._executor, _nothing)

    async def forward():  # on the model's worker thread, as served, timed there (the hop is its own stage)
        return await loop.run_in_executor(model.backend._executor, _timed, model.backend.embed_sync,
                                          TokenBatch(ids, [None]))

    async def post():
        finish_rows([row], options, dims=model.config.dims, normalize=model.config.normalize)

    async def serialise():
        from server.served_model import EncodeResult

        result = EncodeResult(vectors=answers.dense, dims=model.dims, input_tokens=len(ids[0]), tokenization_ms=0,
                              queue_ms=0, inference_ms=0, postprocessing_ms=0)
        pack({"model": args.model, "items": output_entries(result, options), "usage": {"input_tokens": 1}})

    async def encode():
        await model.encode([args.text], options)

    return {"parse, validate, resolve": parse, "tokenise": tokenize, "batcher round trip": batcher,
            "hop to the worker and back": hop, "forward (ours, on the worker)": forward,
            "post-process": post, "serialise": serialise, "in process: model.encode": encode}


async def _ready(vector):
    return vector


def _nothing() -> None:
    return None


def _timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


async def run(args) -> dict:
    sys.path.insert(0, str(REPO))
    importlib.import_module("server")  # before torch: libgomp's spin as the server sets it (server/__init__.py)
    import torch

    from server.api.app import create_app
    from server.build import load_model
    from server.config import ServerSettings, load_model_config

    torch.set_num_threads(args.threads)
    config = load_model_config(args.config)
    model = await load_model(config, ServerSettings())
    model.batcher.start()
    app = create_app({config.name: model}, ServerSettings(), load_in_background=False)
    timed = await stages(args, model, app.state.context)
    own = own_forward(config, args.text)

    async def own_model():  # on the same worker thread as ours, so both use one OpenMP team
        return await asyncio.get_running_loop().run_in_executor(model.backend._executor, _timed, own)

    timed[OWN] = own_model
    st = sentence_transformer(config)
    if st is not None:
        async def st_encode():  # on the same worker thread as ours, so both use one OpenMP team
            return await asyncio.get_running_loop().run_in_executor(model.backend._executor, _timed, st.encode,
                                                                    [args.text])
        timed[ST] = st_encode
    served = Served(args)
    timed[SERVED] = _wrap(served)
    timed["HTTP alone: the same request's 404 for an unknown model"] = _wrap(served.not_found)
    try:
        for fn in timed.values():
            for _ in range(5):
                await fn()
        medians = await settled_rounds(timed, args.rounds)
        medians["served: the route's own X-Total-Time"] = statistics.median(served.server_ms)
        streams = {name: timed[name] for name in STREAMED if name in timed}
        streams["in process: model.encode"] = timed["in process: model.encode"]
        stream_medians = await streamed_blocks(streams, args.rounds, args.stream)
    finally:
        served.stop()
        await model.stop()
    return medians, stream_medians


async def settled_rounds(timed: dict, rounds: int) -> dict:
    """Every variant once per round, order rotated, each right after an untimed forward of ours."""
    times = {name: [] for name in timed}
    order, settle = list(timed), timed["forward (ours, on the worker)"]
    for index in range(rounds):
        shift = index % len(order)
        for name in order[shift:] + order[:shift]:
            await settle()  # as in a stream of lone requests: each stage runs right after a forward
            times[name].append(await _seconds(timed[name]))
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


async def streamed_blocks(streams: dict, rounds: int, length: int) -> dict:
    """Each variant as a stream of lone calls: blocks of `length` back-to-back calls of one variant (the
    first of each block untimed), the variants' blocks alternating, `rounds` / 4 blocks each at least."""
    times = {name: [] for name in streams}
    order = list(streams)
    for index in range(max(2, rounds // 4)):
        shift = index % len(order)
        for name in order[shift:] + order[:shift]:
            await streams[name]()
            for _ in range(length):
                times[name].append(await _seconds(streams[name]))
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


async def _seconds(call) -> float:
    started = time.perf_counter()
    inside = await call()  # a stage timed where it runs returns its own seconds
    return inside if inside is not None else time.perf_counter() - started


def _wrap(served):
    async def call():
        served()
    return call


def report(medians: dict, streams: dict) -> dict:
    """Served against the raw forwards as streams of lone calls (what c1 x 1 is); the settled rounds' figures
    beside them (every call after a forward of ours: the in-process forward then reads weights just read)."""
    summary = {"stream_served_minus_own_forward_ms": round(streams[SERVED] - streams[OWN], 2),
               "stream_served_minus_our_forward_ms": round(streams[SERVED] - streams[OURS], 2),
               "settled_served_minus_own_forward_ms": round(medians[SERVED] - medians[OWN], 2),
               "settled_served_minus_our_forward_ms": round(medians[SERVED] - medians["forward (ours, on the worker)"],
                                                            2),
               "settled_in_process_minus_our_forward_ms": round(
                   medians["in process: model.encode"] - medians["forward (ours, on the worker)"], 2)}
    if ST in streams:
        summary["stream_served_minus_sentence_transformers_ms"] = round(streams[SERVED] - streams[ST], 2)
    return summary


def spinning(count: int) -> list:
    """`count` processes that keep a core busy until killed (at most ten minutes)."""
    import subprocess

    code = "import time\nend = time.time() + 600\nwhile time.time() < end:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def main(argv=None) -> dict:
    args = parse_args(argv)
    busy = spinning(args.busy)
    try:
        medians, streams = asyncio.run(run(args))
    finally:
        for process in busy:
            process.kill()
    summary = report(medians, streams)
    print("| stage (settled rounds) | median ms |\n|---|---:|")
    for name, value in medians.items():
        print(f"| {name} | {value:.3f} |")
    print("| stream of lone calls | median ms |\n|---|---:|")
    for name, value in streams.items():
        print(f"| {name} | {value:.3f} |")
    print(json.dumps(summary, indent=2))
    result = {"medians_ms": medians, "stream_medians_ms": streams, "summary": summary, "rounds": args.rounds,
              "stream": args.stream, "threads": args.threads, "busy": args.busy, "config": args.config}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
