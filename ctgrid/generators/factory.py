"""Generators as configurations of the one engine: ``make_generator`` (penalties, optional
latent codec, optional SNS stage), ``codec_for`` (REVISE's VAE) and ``generator_for``."""
from __future__ import annotations

import os

import torch

from ..constraints import Constraints
from ..errors import ConfigError
from .config import GeneratorConfig
from .engine import Codec, SearchEngine
from .penalties import l1_cost, make_energy, per_row
from .sns import StableNeighborSearch
from .vae import load_or_train_vae


def make_generator(config: GeneratorConfig, constraints: Constraints, *,
                   codec: Codec | None = None,
                   lambda_energy: float | torch.Tensor | None = None,
                   lambda_cost: float | torch.Tensor | None = None) -> SearchEngine:
    """The engine configured as ``config.name``.

    - ``generic`` (Wachter et al. 2017): cross-entropy + ``lambda_cost * ||x' - x||_1``.
    - ``ecco`` (ECCCo without conformal part): + ``lambda_energy * phi(t) * E(x')``.
    - ``revise`` (Joshi et al. 2019): generic objective searched in ``codec``'s latent space.

    ``lambda_energy`` and ``lambda_cost`` override the config's; a ``(n,)`` tensor gives
    every row of an ``n``-row search its own weight (the engine then serves only such searches).
    """
    cost = config.lambda_cost if lambda_cost is None else lambda_cost
    penalties = ([(1.0, per_row(cost.detach(), l1_cost))] if isinstance(cost, torch.Tensor)
                 else [(cost, l1_cost)])
    if config.name == "ecco":
        lam = config.lambda_energy if lambda_energy is None else lambda_energy
        energy = make_energy(config.energy_schedule, config.energy_quadratic)
        if isinstance(lam, torch.Tensor):
            penalties.append((1.0, per_row(lam.detach(), energy)))
        else:
            penalties.append((lam, energy))
    if config.name == "revise" and codec is None:
        raise ConfigError("generator.name 'revise' needs a VAE: use generator_for(config, X_train, ...)")
    refine = None if config.sns_radius == 0 else StableNeighborSearch(
        constraints, radius=config.sns_radius, steps=config.sns_steps, step_size=config.sns_step_size,
        points=config.sns_points, relative=config.sns_relative, control=config.sns_control)
    return SearchEngine(constraints, penalties=penalties, lr=config.lr, maxiter=config.maxiter,
                        tau=config.tau, codec=codec if config.name == "revise" else None,
                        step=config.step, categorical=config.categorical, refine=refine)


def codec_for(config: GeneratorConfig, X_train: torch.Tensor, *,
              cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Codec | None:
    """The latent space ``config`` searches in: REVISE's VAE fitted on ``X_train`` (or loaded
    from ``cache_dir``; the one place it is set up), ``None`` for input-space generators.

    The VAE is always fitted on the CPU (its draws from a CPU generator, cached as before) and
    then moved to ``X_train``'s device: a GPU run searches in the very latent space a CPU run
    does, and one cache serves both."""
    if not config.latent:
        return None
    vae = load_or_train_vae(X_train.cpu(), cache_dir, seed=seed, latent_dim=config.latent_dim,
                            hidden=config.vae_hidden, epochs=config.vae_epochs)
    return vae if X_train.device.type == "cpu" else vae.to(X_train.device)


def generator_for(config: GeneratorConfig, constraints: Constraints, X_train: torch.Tensor, *,
                  cache_dir: str | os.PathLike | None = None, seed: int = 0) -> SearchEngine:
    """Like :func:`make_generator`, fitting (or loading the cached) VAE for REVISE on ``X_train``."""
    return make_generator(config, constraints, codec=codec_for(config, X_train, cache_dir=cache_dir, seed=seed))
