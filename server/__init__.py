"""Multi-LoRA embedding server for LLM embedders: SIE- and OpenAI-compatible HTTP over torch or SGLang."""

import os

__version__ = "0.1.0"

# torch's CPU thread pool (libgomp) spins 300,000 rounds at each barrier before it sleeps. On a machine whose
# other processes keep the cores busy, the spinning thread takes the core its partner needs: a one-text MiniLM
# forward on 2 threads took 37.5 ms beside three busy processes, 19.6 ms with 10,000 rounds, and 5.6 ms idle
# either way (benchmarks/RESULTS.md). libgomp reads it once, when torch loads it, so it is set here, before
# any import of torch; an operator's own GOMP_SPINCOUNT or OMP_WAIT_POLICY wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
