"""Pretraining the calcium prior: synthetic families, the corpus, the loop, its validation.

`pretrain` (``cst-neuro pretrain``) writes a checkpoint of kind ``prior`` that `fit`
starts from (`cst_neuro.prior`).
"""

from cst_neuro.pretrain.loop import PretrainConfig, PretrainResult, pretrain

__all__ = ["PretrainConfig", "PretrainResult", "pretrain"]
