"""Evaluations that compare methods on one model and split, with confidence intervals and plots."""
