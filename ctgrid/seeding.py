"""Seeds derived from identities, never from ranks, order or process counts.

torch and numpy are imported on first use: job ids and training seeds (``ctgrid expand``,
``ctgrid config``) need only :func:`derive_seed`.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the string forms of ``parts`` (stable across runs and machines)."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def torch_generator(*parts: object) -> "torch.Generator":
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``parts``."""
    import torch
    return torch.Generator().manual_seed(derive_seed(*parts))


def numpy_generator(*parts: object) -> "np.random.Generator":
    import numpy as np
    return np.random.default_rng(derive_seed(*parts))
