"""Tests of the evaluation harness (cst_neuro.evaluate)."""
