"""The adapter loop beside the server: train a PEFT LoRA on (query, positive) pairs through the serving
path's tokenisation and pooling, and evaluate retrieval through a running server with the SIE SDK."""
