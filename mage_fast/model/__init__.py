"""Kernel-free model code: vision tower, aligners, LLM, the merge and the CE + MSE loss."""
