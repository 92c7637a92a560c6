"""The model modes, in one registry: how each is built, what it trains with, how it predicts.

- ``cst`` (default): `cst.CST`, Sobolev loss on exact coordinate derivatives
  (`sobolev.sobolev_loss`); predictions decode a cached, encoded context;
- ``transformer``: the paper's network (`paper.PaperCST`) trained with plain MSE at real and
  dummy tokens (the paper's "traditional transformer" baseline);
- ``paper``: the same network with the release's input-Jacobian loss, for parity.

Training, reconstruction, evaluation, checkpoints and the CLI look a mode up here
(`get_mode`, `MODES`) and never branch on its name, so adding a mode touches this file only.
Importing this module does not import torch; each method imports what it needs. Token batches are
anything with ``values`` (B, N, V), ``coords`` (B, N, C), ``ids`` (B, N), ``mask`` (B, N),
``value_mask`` (B, N, V), ``channels`` and ``seconds_per_frame``, as `cst_neuro.data.Tokens`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:  # torch is imported by the methods: the CLI lists modes without it
    import torch
    from torch import Tensor, nn

    from cst_neuro.model.cst import CST
    from cst_neuro.model.dummies import DummyTokens
    from cst_neuro.model.layers import NetworkConfig
    from cst_neuro.model.paper import PaperCST
    from cst_neuro.model.sobolev import SobolevConfig


class TokenBatch(Protocol):
    values: Tensor
    coords: Tensor
    ids: Tensor
    mask: Tensor
    value_mask: Tensor
    channels: Tensor | None
    seconds_per_frame: Tensor | None


TIME_BAND = (0.1, 60.0)  # Hz: the CST's time features span 10 s periods to 120 Hz sampling


@dataclass(frozen=True)
class DataShape:
    """What sizing a model needs to know about its data."""

    value_dim: int  # V
    n_channels: int  # ROIs or patches: the identity table's size
    window: int  # frames per window
    train_values: int  # observed numbers available for training


def _size(shape: DataShape) -> dict[str, int]:
    """Small recordings get small models (they overfit in seconds otherwise)."""
    if shape.train_values < 200_000:
        return {"d_model": 32, "n_heads": 4, "n_layers": 2, "d_ff": 64}
    if shape.train_values < 2_000_000:
        return {"d_model": 64, "n_heads": 4, "n_layers": 2, "d_ff": 128}
    return {"d_model": 128, "n_heads": 4, "n_layers": 3, "d_ff": 256}


class Mode:
    """A mode's network, its loss and its predictions; subclasses fill in the three."""

    name: ClassVar[str]
    uses_prior: ClassVar[bool] = False  # fit starts from the shipped prior by default
    # FitConfig settings that let epochs end within a short budget (evaluation)
    budget_settings: ClassVar[dict[str, Any]] = {}

    def defaults(self, shape: DataShape) -> dict[str, Any]:
        """The network settings `fit` uses for data of this shape, before user overrides."""
        return {
            "value_dim": shape.value_dim,
            "coord_dims": 3,
            "n_ids": shape.n_channels,
            "dropout": 0.1,
            "input_noise": 0.05,
            **_size(shape),
        }

    def config_type(self) -> type[NetworkConfig]:
        """The dataclass of the mode's network settings."""
        raise NotImplementedError

    def frames_per_unit(self, window: int) -> float:
        """Frames per unit of the time coordinate the network reads."""
        return float(window)  # the release's: time runs over [0, 1] in a window

    def make_config(self, settings: dict[str, Any]) -> NetworkConfig:
        """The mode's config from a dict (TypeError for unknown fields, ValueError for bad ones)."""
        return self.config_type()(**settings)

    def auto_config(self, shape: DataShape, overrides: dict[str, Any]) -> NetworkConfig:
        """A network sized for the data, with the user's ``[model]`` overrides on top."""
        return self.make_config({**self.defaults(shape), **overrides})

    def build(self, config: NetworkConfig) -> nn.Module:
        """A freshly initialised network (the seed of torch's global generator decides)."""
        raise NotImplementedError

    def loss(
        self,
        model: nn.Module,
        ctx: TokenBatch,
        qry: TokenBatch,
        generator: torch.Generator,
        sobolev: SobolevConfig,
    ) -> Tensor:
        """The training loss of one batch: context tokens, held-out query tokens."""
        raise NotImplementedError

    def context(self, model: nn.Module, ctx: TokenBatch) -> Any:
        """What predictions from a window need, computed once per window."""
        return ctx

    def predict(self, model: nn.Module, context: Any, coords: Tensor, ids: Tensor | None) -> Tensor:
        """Predictions (B, Q, V) at query coordinates (B, Q, C) with identities (B, Q)."""
        out: Tensor = model(
            context.values, context.coords, context.ids, context.mask,
            query_coords=coords, query_ids=ids,
        )  # fmt: skip
        return out


def target_mask(qry: TokenBatch) -> Tensor:
    """(B, Q) queries whose every value entry is observed."""
    return qry.mask & qry.value_mask.all(-1)


class CSTMode(Mode):
    name = "cst"
    uses_prior = True

    def config_type(self) -> type[NetworkConfig]:
        from cst_neuro.model.cst import CSTConfig

        return CSTConfig

    def build(self, config: NetworkConfig) -> nn.Module:
        from cst_neuro.model.cst import CST, CSTConfig

        assert isinstance(config, CSTConfig)
        return CST(config)

    def defaults(self, shape: DataShape) -> dict[str, Any]:
        from cst_neuro.data import CHANNEL_FEATURES

        return {
            **super().defaults(shape),
            "window": shape.window,
            "n_latent_times": max(4, shape.window // 2),
            "latents_per_time": 4,
            "interpolant": "linear",
            "channel_gain": True,  # Allen fit validation 0.831 vs 0.845 (15 epochs)
            "channel_features": len(CHANNEL_FEATURES),
            "time_band": TIME_BAND,
        }

    def frames_per_unit(self, window: int) -> float:
        return 1.0  # time in frames; seconds come with the batch

    def loss(
        self,
        model: nn.Module,
        ctx: TokenBatch,
        qry: TokenBatch,
        generator: torch.Generator,
        sobolev: SobolevConfig,
    ) -> Tensor:
        from cst_neuro.model.sobolev import sample_collocation, sobolev_loss

        network = _cst(model)
        context = self.context(network, ctx)
        points, point_ids = sample_collocation(
            ctx.coords, sobolev.n_collocation, mask=ctx.mask, ids=ctx.ids, generator=generator
        )
        return sobolev_loss(
            network,
            context,
            qry.coords,
            qry.values,
            points,
            query_ids=qry.ids,
            target_mask=target_mask(qry),
            collocation_ids=point_ids,
            config=sobolev,
        ).total

    def context(self, model: nn.Module, ctx: TokenBatch) -> Any:
        return _cst(model).encode(
            ctx.values,
            ctx.coords,
            ctx.ids,
            ctx.mask,
            channels=ctx.channels,
            seconds_per_frame=ctx.seconds_per_frame,
        )

    def predict(self, model: nn.Module, context: Any, coords: Tensor, ids: Tensor | None) -> Tensor:
        return _cst(model).decode(context, coords, ids)


class TransformerMode(Mode):
    name = "transformer"

    def config_type(self) -> type[NetworkConfig]:
        from cst_neuro.model.paper import PaperConfig

        return PaperConfig

    def build(self, config: NetworkConfig) -> nn.Module:
        from cst_neuro.model.paper import PaperConfig, PaperCST

        assert isinstance(config, PaperConfig)
        return PaperCST(config)

    def loss(
        self,
        model: nn.Module,
        ctx: TokenBatch,
        qry: TokenBatch,
        generator: torch.Generator,
        sobolev: SobolevConfig,
    ) -> Tensor:
        from cst_neuro.model.sobolev import data_loss

        tokens = _with_dummies(ctx, qry)
        pred = _paper(model).forward_tokens(tokens.values, tokens.coords, tokens.ids, tokens.mask)
        n = ctx.values.shape[1]
        real = data_loss(pred[:, :n], ctx.values, ctx.mask & ctx.value_mask.all(-1))
        return real + data_loss(pred[:, n:], qry.values, target_mask(qry))


class PaperMode(TransformerMode):
    name = "paper"
    # all tokens attend jointly by hand, with double backward: ~100x a cst step
    budget_settings: ClassVar[dict[str, Any]] = {"steps_per_epoch": 10, "max_tokens": 1024}

    def defaults(self, shape: DataShape) -> dict[str, Any]:
        return {**super().defaults(shape), "input_noise": 0.1}  # the release's

    def loss(
        self,
        model: nn.Module,
        ctx: TokenBatch,
        qry: TokenBatch,
        generator: torch.Generator,
        sobolev: SobolevConfig,
    ) -> Tensor:
        from cst_neuro.model.sobolev import input_jacobian_loss

        tokens = _with_dummies(ctx, qry)
        return input_jacobian_loss(
            _paper(model),
            tokens.values,
            tokens.coords,
            tokens.is_real,
            ids=tokens.ids,
            mask=tokens.mask,
        ).total


def _cst(model: nn.Module) -> CST:
    from cst_neuro.model.cst import CST

    if not isinstance(model, CST):
        raise TypeError(f"mode cst needs a CST, got {type(model).__name__}")
    return model


def _paper(model: nn.Module) -> PaperCST:
    from cst_neuro.model.paper import PaperCST

    if not isinstance(model, PaperCST):
        raise TypeError(f"the paper's modes need a PaperCST, got {type(model).__name__}")
    return model


MODES: dict[str, Mode] = {mode.name: mode for mode in (CSTMode(), TransformerMode(), PaperMode())}


def get_mode(name: str) -> Mode:
    """The registered mode called ``name``; ValueError listing the modes otherwise."""
    try:
        return MODES[name]
    except (KeyError, TypeError):
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {name!r}") from None


def config_fields(name: str) -> set[str]:
    """The network settings a mode accepts (what ``[model]`` may set)."""
    return {f.name for f in dataclasses.fields(get_mode(name).config_type())}


def _with_dummies(ctx: TokenBatch, qry: TokenBatch) -> DummyTokens:
    """The context's tokens followed by a dummy token at each query (the paper's input)."""
    from cst_neuro.model.dummies import add_dummy_tokens

    return add_dummy_tokens(
        ctx.values, ctx.coords, qry.coords, mask=ctx.mask, ids=ctx.ids, dummy_ids=qry.ids
    )
