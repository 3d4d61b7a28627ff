"""Synthetic text: contrastive scores -> the batched engine -> shared batch -> stacked models -> GPU step -> kernels."""
