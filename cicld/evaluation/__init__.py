"""Evaluation: Cityscapes-exact metrics."""
