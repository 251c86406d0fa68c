"""Counterfactual generators: ``generic``, ``ecco`` and ``revise`` are configurations
of one batched :class:`SearchEngine` (penalty list + optional latent decoder)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .config import GENERATORS, GeneratorConfig
    from .engine import Codec, CounterfactualBatch, SearchEngine, frozen
    from .routed import RoutedModels
    from .sns import StableNeighborSearch
    from .vae import VAE, load_or_train_vae, train_vae
    from .factory import codec_for, generator_for, make_generator
    from .penalties import l1_cost, make_energy, per_row

_EXPORTS = {
    "GENERATORS": ".config",
    "GeneratorConfig": ".config",
    "SearchEngine": ".engine",
    "CounterfactualBatch": ".engine",
    "RoutedModels": ".routed",
    "Codec": ".engine",
    "frozen": ".engine",
    "StableNeighborSearch": ".sns",
    "VAE": ".vae",
    "load_or_train_vae": ".vae",
    "train_vae": ".vae",
    "make_generator": ".factory",
    "generator_for": ".factory",
    "codec_for": ".factory",
    "l1_cost": ".penalties",
    "make_energy": ".penalties",
    "per_row": ".penalties",
}
__all__ = ["Codec", "CounterfactualBatch", "GENERATORS", "GeneratorConfig", "RoutedModels", "SearchEngine",
           "StableNeighborSearch", "VAE", "codec_for", "frozen", "generator_for", "l1_cost",
           "load_or_train_vae", "make_energy", "make_generator", "per_row", "train_vae"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
