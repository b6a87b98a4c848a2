"""Runs of other implementations as eiw_jax runs: DenseFlow's PyTorch checkpoints
(`python -m eiw_jax.convert.denseflow`, docs/DENSEFLOW.md). Files are read without
PyTorch and without running code from them (torch_checkpoint.py). This package sits
beside the scripts: it writes workdirs with the training runtime."""
