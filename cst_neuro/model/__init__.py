"""The CST model: coordinate encoding, network (modes "cst", "paper", "transformer"), losses.

Importing this package imports torch; `import cst_neuro` alone does not.
"""

from cst_neuro.model.dummies import DummyTokens, add_dummy_tokens, interpolate_in_time
from cst_neuro.model.encoding import FourierEncoding
from cst_neuro.model.network import CST, MODES, Context, CSTConfig, manual_attention
from cst_neuro.model.sobolev import (
    SobolevConfig,
    SobolevTerms,
    coordinate_derivatives,
    data_loss,
    input_jacobian_loss,
    sample_collocation,
    sobolev_loss,
)

__all__ = [
    "CST",
    "MODES",
    "CSTConfig",
    "Context",
    "DummyTokens",
    "FourierEncoding",
    "SobolevConfig",
    "SobolevTerms",
    "add_dummy_tokens",
    "coordinate_derivatives",
    "data_loss",
    "input_jacobian_loss",
    "interpolate_in_time",
    "manual_attention",
    "sample_collocation",
    "sobolev_loss",
]
