"""REVISE's variational auto-encoder: trained once per (training data, seed), cached on disk.

Architecture as the reference (docs/deviations.md, R7): encoder ``Dense(d->h, sigmoid)``
with mean and log-sigma heads, decoder ``Dense(L->h, tanh) -> Dense(h->d)``;
``L=2, h=16`` for ``d <= 2`` else ``L=4, h=32``. The search uses the deterministic
encoder mean (the reference re-sampled at every step; docs/deviations.md, D11).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .._atomic import save_torch
from .._torch import tensor_digest


_CACHE_VERSION = 2  # bump when training changes what a (data, settings, seed) key produces


class VAE(nn.Module):
    """A small Gaussian VAE; ``encode`` returns the posterior mean."""

    def __init__(self, n_features: int, latent_dim: int, hidden: int,
                 generator: torch.Generator | None = None):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own init must not touch the global RNG
            self.enc = nn.Linear(n_features, hidden)
            self.mu = nn.Linear(hidden, latent_dim)
            self.log_sigma = nn.Linear(hidden, latent_dim)
            self.dec = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(),
                                     nn.Linear(hidden, n_features))
        self.shape = (n_features, latent_dim, hidden)
        if generator is not None:  # PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), seeded
            with torch.no_grad():
                for m in self.modules():
                    if isinstance(m, nn.Linear):
                        bound = m.in_features ** -0.5
                        m.weight.uniform_(-bound, bound, generator=generator)
                        m.bias.uniform_(-bound, bound, generator=generator)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.sigmoid(self.enc(x))
        return self.mu(h), self.log_sigma(h)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)


def vae_shape(n_features: int, latent_dim: int | None, hidden: int | None) -> tuple[int, int]:
    """Reference sizes unless given: ``(2, 16)`` for ``d <= 2``, else ``(4, 32)``."""
    small = n_features <= 2
    return (latent_dim or (2 if small else 4), hidden or (16 if small else 32))


def train_vae(X: torch.Tensor, *, latent_dim: int | None = None, hidden: int | None = None,
              epochs: int = 100, batch_size: int = 50, lr: float = 1e-3, seed: int = 0,
              weight_decay: float = 0.01) -> VAE:
    """Fit a VAE on ``X``: summed MSE + KL per batch + ``0.01 * ||decoder W||^2`` (reference loss)."""
    L, H = vae_shape(X.shape[1], latent_dim, hidden)
    gen = torch.Generator().manual_seed(seed)
    vae = VAE(X.shape[1], L, H, generator=gen)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    n = X.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            xb = X[perm[start:start + batch_size]]
            mu, log_sigma = vae.posterior(xb)
            z = mu + torch.randn(mu.shape, generator=gen) * log_sigma.exp()
            rec = ((vae.decode(z) - xb) ** 2).sum() / len(xb)
            kl = 0.5 * (torch.exp(2 * log_sigma) + mu ** 2 - 1 - 2 * log_sigma).sum() / len(xb)
            reg = sum((m.weight ** 2).sum() for m in vae.dec if isinstance(m, nn.Linear))
            loss = rec + kl + weight_decay * reg
            opt.zero_grad()
            loss.backward()
            opt.step()
    return _freeze(vae)


def _freeze(vae: VAE) -> VAE:
    vae.eval()
    vae.requires_grad_(False)
    return vae


def load_or_train_vae(X: torch.Tensor, cache_dir: str | os.PathLike | None, *, seed: int = 0,
                      latent_dim: int | None = None, hidden: int | None = None,
                      epochs: int = 100) -> VAE:
    """The VAE for training data ``X``, from ``cache_dir`` if there, else trained and cached.

    The cache key hashes the data itself and every VAE setting, so a stale file is never reused.
    """
    L, H = vae_shape(X.shape[1], latent_dim, hidden)
    if cache_dir is None:
        return train_vae(X, latent_dim=L, hidden=H, epochs=epochs, seed=seed)
    h = tensor_digest(X)
    h.update(f"{_CACHE_VERSION}-{L}-{H}-{epochs}-{seed}".encode())
    path = Path(cache_dir) / f"vae-{h.hexdigest()[:16]}.pt"
    if path.exists():
        vae = VAE(X.shape[1], L, H)
        vae.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return _freeze(vae)
    vae = train_vae(X, latent_dim=L, hidden=H, epochs=epochs, seed=seed)
    save_torch(path, vae.state_dict())
    return vae
