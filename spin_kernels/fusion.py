"""Weight fusion: build a shared model from an unshared (e.g. pretrained) one (SPIN, DESIGN.md §1).

For every group of layers that a sharing plan maps to one unique index, the shared tensor is a combination of
the group's per-layer tensors:

* ``mean``                   W = (1/n) Σ_l W_l
* ``choose_first``           W = W_first (the group's first layer)
* ``scalar_weighted_mean``   W = (1/n) Σ_l α_l W_l          with a learnable α_l per layer, initialised to 1
* ``channel_weighted_mean``  W[c] = (1/n) Σ_l α_l[c] W_l[c]  with a learnable α_l per output channel, init 1

The weighted means are divided by n (not by Σα) so that they equal ``mean`` at initialisation and stay linear in
α. In this *fusion-training form* all per-layer tensors stay trainable and the shared tensor is recomputed on
every access, implemented with ``torch.nn.utils.parametrize``: the sources are
``<module>.parametrizations.<tensor>.original{i}`` (i in group order) and α lives in
``<module>.parametrizations.<tensor>.0.alpha``. Each tensor (weight, bias) has its own α. ``model.collapse()``
freezes every fused tensor at its current value and returns the plain shared model.

A group may be any set of layers the plan defines (not only consecutive ones). Normalisation layers are fused only
when the model shares them (``share_norms=True``); their running statistics are averaged.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

FUSION_METHODS = ("mean", "choose_first", "scalar_weighted_mean", "channel_weighted_mean")


def check_method(method: str) -> str:
    """Validate a fusion method name."""
    if method not in FUSION_METHODS:
        raise ValueError(f"method: unknown fusion method {method!r}; valid methods are {', '.join(FUSION_METHODS)}")
    return method


class FuseGroup(nn.Module):
    """A parametrization computing one shared tensor from the ``n`` per-layer tensors of its group."""

    def __init__(self, sources: list[torch.Tensor], method: str):
        super().__init__()
        self.method = check_method(method)
        self.n = len(sources)
        shape = sources[0].shape
        if method == "scalar_weighted_mean":
            self.alpha = nn.Parameter(torch.ones(self.n, dtype=sources[0].dtype, device=sources[0].device))
        elif method == "channel_weighted_mean":
            self.alpha = nn.Parameter(torch.ones(self.n, shape[0], dtype=sources[0].dtype, device=sources[0].device))
        # Held only until register_parametrization calls right_inverse, which turns them into original{i}.
        self._pending = [s.detach().clone() for s in sources]

    def forward(self, *sources: torch.Tensor) -> torch.Tensor:
        if self.method == "choose_first":
            return sources[0]
        stacked = torch.stack(sources)
        if self.method == "mean":
            return stacked.mean(0)
        if self.method == "scalar_weighted_mean":
            alpha = self.alpha.view(self.n, *([1] * (stacked.ndim - 1)))
        else:
            alpha = self.alpha.view(self.n, -1, *([1] * (stacked.ndim - 2)))
        return (alpha * stacked).sum(0) / self.n

    def right_inverse(self, value: torch.Tensor):
        if self._pending is None:
            raise RuntimeError("a fused tensor cannot be assigned; assign its sources (original{i}) instead")
        pending, self._pending = self._pending, None
        return tuple(pending)

    def extra_repr(self) -> str:
        return f"method={self.method}, n={self.n}"


def _owner(module: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *path, leaf = dotted.split(".")
    for name in path:
        module = getattr(module, name)
    return module, leaf


@torch.no_grad()
def fuse_into(shared: nn.Module, unshared: nn.Module, method: str | None) -> nn.Module:
    """Fill ``shared`` (built with the target plan) from ``unshared`` (same architecture, one weight per layer).

    Groups of one layer are copied; larger groups are fused with ``method`` (fusion-training form), or must not
    exist when ``method`` is None. Everything outside the shared families (stem, head, embeddings, final norm) is
    copied. Returns ``shared``.
    """
    if method is not None:
        check_method(method)
    families = {name: (mods, plan) for name, mods, plan in shared.unique_modules()}
    src_families = {name: (mods, plan) for name, mods, plan in unshared.unique_modules()}
    for name, (src_mods, src_plan) in src_families.items():
        if src_plan.is_shared:
            raise ValueError(f"unshared: its {name} weights are already shared; fuse from an unshared model")

    # 1. Everything that is not a per-layer family: copy.
    src_state = unshared.state_dict()
    plain = {k: v for k, v in shared.state_dict().items() if k.split(".")[0] not in families}
    for key, value in plain.items():
        value.copy_(src_state[key])

    # 2. Per-layer families: copy or fuse each unique module from its group.
    for name, (mods, plan) in families.items():
        src_mods = src_families[name][0]
        for u, group in enumerate(plan.groups):
            target, sources = mods[u], [src_mods[layer] for layer in group]
            for pname, _ in list(target.named_parameters()):
                tensors = [s.get_parameter(pname) for s in sources]
                owner, leaf = _owner(target, pname)
                if len(group) == 1:
                    getattr(owner, leaf).copy_(tensors[0])
                elif method is None:
                    raise ValueError(f"method: layers {group} share {name} weights; pass a fusion method "
                                     f"({', '.join(FUSION_METHODS)})")
                else:
                    with torch.enable_grad():
                        parametrize.register_parametrization(owner, leaf, FuseGroup(tensors, method), unsafe=True)
            for bname, buf in target.named_buffers():
                bufs = [s.get_buffer(bname) for s in sources]
                buf.copy_(torch.stack([b.float() for b in bufs]).mean(0).to(buf.dtype)
                          if buf.is_floating_point() else bufs[0])
    return shared
