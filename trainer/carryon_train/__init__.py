"""Trainer for GPT Carry-On modules (arXiv 2504.07513) served by the Carry-On Gateway.

See trainer/README.md. Modules: model (the PyTorch carry-on, mirroring src/carryon/graph.ts),
data (harvest shards), loss (chunked head cross-entropy), train, evaluate, export (build + parity
through the gateway's CLI), gateway (admin API client), pipeline, cli, distributed (data-parallel
training under torchrun), torchrun (torchrun fixed for torch 1.13 on Python ≥ 3.11), atomic.
"""
__version__ = "0.1.0"
