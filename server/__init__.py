"""Multi-LoRA embedding server for LLM embedders: SIE- and OpenAI-compatible HTTP over torch or SGLang."""

import os

__version__ = "0.1.0"

# torch's CPU thread pool (libgomp) spins 300,000 rounds at each barrier before it sleeps. On a machine whose
# other processes keep the cores busy, the spinning thread takes the core its partner needs: a lone MiniLM
# request served on 2 cores beside three busy processes took 42-44 ms at p50, 24 ms with 30,000 rounds, which
# keeps the spin that batched work on an idle machine needs (10,000 cost a fifth of the demo's c16x16
# throughput; benchmarks/RESULTS.md). libgomp reads it once, when torch loads it, so it is set here, before
# any import of torch; an operator's own GOMP_SPINCOUNT or OMP_WAIT_POLICY wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "30000")
