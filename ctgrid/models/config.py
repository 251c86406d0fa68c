"""Architecture of the classifier: :class:`ModelConfig` and the one rule that needs the
data (torch-free, so grid files validate without importing torch)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .._validate import check, param
from ..errors import ConfigError

#: activation names (:data:`ctgrid.models.networks.ACTIVATIONS` maps them to modules)
ACTIVATION_NAMES = ("relu", "swish", "tanh", "sigmoid")
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the classifier.

    An MLP has ``nlayers`` hidden layers of ``nhidden`` units, or — when ``hidden`` lists
    widths — one hidden layer per entry (e.g. ``[128, 64, 16]``, Black et al.'s German
    credit network); ``hidden`` then replaces ``nhidden`` and ``nlayers``.

    ``kind: module`` is any torch classifier of the user's: ``factory`` names an importable
    function ``package.module:function`` called as ``function(n_features, n_classes)`` that
    returns an ``nn.Module`` mapping float batches ``(n, d)`` to logits ``(n, k)``
    (:mod:`ctgrid.models.custom`). The factory's name, not its code, is part of the job id: a
    changed architecture wants a new name. Such a model trains alone, never in a pack.
    """

    kind: str = param("mlp", choices=("mlp", "linear", "cnn", "module"))
    nhidden: int = param(32, ge=1, le=65_536)
    nlayers: int = param(1, ge=1, le=100)
    activation: str = param("relu", choices=ACTIVATION_NAMES)
    factory: str | None = param(None, since="0.3", doc="kind module: 'package.module:function' building "
                                                       "the model")
    hidden: tuple[int, ...] = param((), ge=1, le=65_536, since="0.3", doc="MLP hidden widths, one per layer "
                                                             "(empty: nlayers x nhidden)")

    @property
    def widths(self) -> tuple[int, ...]:
        """The MLP's hidden widths."""
        return self.hidden or (self.nhidden,) * self.nlayers

    def __post_init__(self) -> None:
        check(self, "model")
        if self.kind == "module" and (self.factory is None or not _FACTORY.match(self.factory)):
            raise ConfigError(f"model.factory: got {self.factory!r}; allowed with model.kind: module: "
                              f"an importable 'package.module:function' (n_features, n_classes) -> nn.Module")
        if self.kind != "module" and self.factory is not None:
            raise ConfigError(f"model.factory: got {self.factory!r}; allowed only with model.kind: module")
        if len(self.hidden) > 100:
            raise ConfigError(f"model.hidden: got {len(self.hidden)} layers; allowed: at most 100")


def check_fits_data(config: ModelConfig, image_data: bool, data_name: str = "") -> None:
    """The one data-dependent rule of a model config: a CNN needs image data (exit 2 otherwise)."""
    if config.kind == "cnn" and not image_data:
        where = f", not {data_name!r}" if data_name else ""
        raise ConfigError(f"model.kind: got 'cnn'; allowed only for image data (mnist){where}")
