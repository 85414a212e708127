"""Segmented-gather ops that apply many adapters to one batch: a PyTorch reference and Triton kernels."""
