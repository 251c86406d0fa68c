"""A pack's models as one network: every parameter carries a leading member axis.

Horizontal fusion (HFTA, MLSys'21): the members of a pack share the architecture and
the mini-batch shape, so one batched kernel per layer (``baddbmm``) trains all of
them; losses are summed over members, so each member's gradient is its own. The
optimiser is elementwise, with each member's own learning rate and step count; a
member is stepped only when its loss is finite.

Exactness: each member keeps its own ``nn.Module`` whose parameters *share storage*
with its slice of the stack, so the member modules (used by the CE search, the
accuracy and the saved model) always hold the current weights. The batched forward,
the per-member Adam (``torch._fused_adam_`` over each member's own slices, so every
element takes the same vector/scalar path as alone) and SGD compute for every member
exactly what a single model computes; ``tests/test_pack.py`` checks bit-identity
across pack sizes and against a model trained alone.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from .config import TrainingConfig

#: activations a Sequential may hold for the batched fast path (elementwise, member-agnostic)
_ELEMENTWISE = (nn.ReLU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity)


def _linear_plan(model: nn.Module) -> list[tuple[str, Any]] | None:
    """``[("linear", (weight name, bias name)) | ("act", module)]`` for a Sequential of Linear
    layers and elementwise activations, else ``None`` (the stack then runs member by member)."""
    if not isinstance(model, nn.Sequential):
        return None
    plan: list[tuple[str, Any]] = []
    for name, layer in model.named_children():
        if isinstance(layer, nn.Linear) and layer.bias is not None:
            plan.append(("linear", (f"{name}.weight", f"{name}.bias")))
        elif isinstance(layer, _ELEMENTWISE):
            plan.append(("act", layer))
        else:
            return None
    return plan


class ModelStack:
    """``K`` models of one architecture as stacked leaf parameters ``(K, ...)``.

    The member modules keep their own parameters: :meth:`sync` copies the stack into
    them (before a CE search, the accuracy, a checkpoint, the end) and
    :meth:`load_member` copies a member module (e.g. restored from its checkpoint) into
    the stack. Their state dicts are then exactly a single model's.
    """

    def __init__(self, models: Sequence[nn.Module]):
        if not models:
            raise ValueError("a pack needs at least one model")
        self.models = list(models)
        self.names = [n for n, _ in self.models[0].named_parameters()]
        self.params: dict[str, torch.Tensor] = {
            name: torch.stack([m.get_parameter(name).detach() for m in self.models]).requires_grad_(True)
            for name in self.names}
        self._plan = _linear_plan(self.models[0])

    @torch.no_grad()
    def sync(self) -> None:
        """Copy the stacked weights into the member modules."""
        for name, p in self.params.items():
            for k, m in enumerate(self.models):
                m.get_parameter(name).copy_(p[k])

    @torch.no_grad()
    def load_member(self, k: int) -> None:
        """Copy member module ``k``'s weights into the stack."""
        for name, p in self.params.items():
            p[k].copy_(self.models[k].get_parameter(name))

    def __len__(self) -> int:
        return len(self.models)

    def forward(self, x: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(G, n, C)`` of the members ``select`` (default: all, in order) on their own
        rows ``x`` ``(G, n, d)``."""
        params = self.params if select is None else {
            n: p.index_select(0, select) for n, p in self.params.items()}
        if self._plan is None:
            return self._member_forward(params, x)
        h = x
        for kind, spec in self._plan:
            if kind == "act":
                h = spec(h)
            else:
                w, b = params[spec[0]], params[spec[1]]
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        return h

    def _member_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Other architectures (the CNN): member by member through the first member's module
        with each member's parameter slices (``vmap`` would batch the convolutions, but not
        bit-identically to a model alone)."""
        from torch.func import functional_call
        base = self.models[0]
        return torch.stack([functional_call(base, {n: p[j] for n, p in params.items()}, (x[j],))
                            for j in range(x.shape[0])])

    def zero_grad(self) -> None:
        """Zero the stacked gradients in place (they stay allocated: the optimiser keeps views)."""
        for p in self.params.values():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            else:
                p.grad.zero_()

    def train(self) -> None:
        for m in self.models:
            m.train()


class StackOptimizer:
    """Adam or SGD over a :class:`ModelStack`, elementwise per member, as ``torch.optim`` would.

    :meth:`state_dict` / :meth:`load_state_dict` speak the single-model ``torch.optim``
    format of member ``k``, so a member's checkpoint resumes alone or in any pack.
    """

    def __init__(self, stack: ModelStack, configs: Sequence[TrainingConfig],
                 make: Callable[[nn.Module, TrainingConfig], torch.optim.Optimizer]):
        kinds = {c.optimizer for c in configs}
        if len(kinds) != 1 or len(configs) != len(stack):
            raise ValueError(f"a pack needs one optimiser kind and one config per member, got {kinds}")
        self.stack, self.kind = stack, kinds.pop()
        self.lrs = [float(c.lr) for c in configs]
        self.optimizers = [make(m, c) for m, c in zip(stack.models, configs)]
        self._fused = self.kind == "adam" and hasattr(torch, "_fused_adam_") and all(
            o.defaults.get("fused") for o in self.optimizers)
        names, K = stack.names, len(stack)
        stack.zero_grad()
        moments = [(torch.zeros_like(p.detach()), torch.zeros_like(p.detach()))
                   for p in stack.params.values()]
        self._step_table = torch.zeros(K, len(names), dtype=torch.float32)
        # per member, fixed views into the stacked tensors: params, grads, moments, steps
        self._views = [
            ([stack.params[n].detach()[k] for n in names],
             [stack.params[n].grad[k] for n in names],          # type: ignore[index]
             [m[0][k] for m in moments], [m[1][k] for m in moments],
             [self._step_table[k, i] for i in range(len(names))])
            for k in range(K)]

    def _slot(self, k: int, i: int) -> dict[str, torch.Tensor]:
        _, _, ea, eb, steps = self._views[k]
        return {"step": steps[i], "exp_avg": ea[i], "exp_avg_sq": eb[i]}

    def state_dict(self, k: int) -> dict[str, Any]:
        """Member ``k``'s optimiser state as its own ``torch.optim`` optimiser would save it."""
        opt, model = self.optimizers[k], self.stack.models[k]
        if self.kind == "adam" and bool(self._step_table[k, 0] > 0):
            for i, name in enumerate(self.stack.names):
                opt.state[model.get_parameter(name)] = {
                    key: v.clone() for key, v in self._slot(k, i).items()}
        return opt.state_dict()

    @torch.no_grad()
    def load_state_dict(self, k: int, state: dict[str, Any]) -> None:
        """Load member ``k``'s state from a single-model ``state_dict`` (checkpoint)."""
        self.optimizers[k].load_state_dict(state)
        if self.kind != "adam" or not state.get("state"):
            return
        for i in range(len(self.stack.names)):
            for key, dst in self._slot(k, i).items():
                dst.copy_(state["state"][i][key])

    def step(self, members: Sequence[int]) -> None:
        """One update of ``members`` (those whose loss was finite) from the stacked gradients."""
        by_lr: dict[float, list[int]] = {}
        for k in members:
            by_lr.setdefault(self.lrs[k], []).append(k)
        if self._fused:                 # the fused kernel reads the step; torch counts it first
            if len(members) == len(self.lrs):
                self._step_table.add_(1)
            else:
                self._step_table[torch.tensor(list(members))] += 1
        for lr, ks in by_lr.items():
            params, grads, exp_avgs, exp_avg_sqs, steps = (
                [t for k in ks for t in self._views[k][j]] for j in range(5))
            if self.kind == "sgd":      # torch.optim.SGD on CPU: param.add_(grad, alpha=-lr)
                torch._foreach_add_(params, grads, alpha=-lr)
            elif self._fused:           # what torch.optim.Adam(fused=True) runs
                torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                                   lr=lr, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8,
                                   maximize=False, grad_scale=None, found_inf=None)
            else:                       # torch without the fused CPU kernel: its functional Adam
                from torch.optim.adam import adam   # counts the steps itself
                adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=False, lr=lr,
                     beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, maximize=False,
                     amsgrad=False, capturable=False, differentiable=False, fused=None,
                     grad_scale=None, found_inf=None, has_complex=False)
