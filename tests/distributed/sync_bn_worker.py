"""Run under ``torchrun --nproc_per_node 2`` (gloo, CPU): one training step of a small ConvMixer with synchronised
BatchNorm on each rank's half of a batch, against one process on the whole batch in float64.

With --sync-bn the global batch is normalised as one, so the DDP-averaged gradients, the logits and the running
statistics must equal the single-process ones. Without it (``--no-sync``, the negative control) they must not.
Rank 0 writes ``{case: {"grad": err, "logits": err, "running": err}}`` (relative Frobenius errors) as JSON.
"""
from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from spin_kernels import create_model
from spin_kernels.reference.batchnorm import convert_sync_batchnorm

CASES = {  # name -> (backend, create_model overrides)
    "reference-timm": ("reference", dict(spin_residual=False)),
    "triton-timm": ("triton", dict(spin_residual=False)),
    "triton-spin": ("triton", dict(spin_residual=True)),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def one_case(backend: str, overrides: dict, sync: bool) -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    kw = dict(dim=16, depth=4, kernel_size=3, patch_size=2, act="gelu", num_classes=4, share_rate=2, **overrides)
    truth = create_model("convmixer_768_32", **kw).double().train()
    model = create_model("convmixer_768_32", backend=backend, **kw).train()
    model.load_state_dict(truth.state_dict())
    with torch.no_grad():  # BN affines away from (1, 0), so their gradients matter everywhere
        for m in truth.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    model.load_state_dict({k: v.float() for k, v in truth.state_dict().items()})
    if sync:
        convert_sync_batchnorm(model)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2 * world, 3, 10, 10, generator=g, dtype=torch.float64)  # 5x5 tokens: odd sizes
    y = torch.randint(0, 4, (2 * world,), generator=g)
    mine = slice(2 * rank, 2 * rank + 2)

    logits = model(x[mine].float())
    F.cross_entropy(logits, y[mine]).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    for t in grads.values():  # what DDP does: the average over ranks
        dist.all_reduce(t)
        t /= world
    parts = [torch.empty_like(logits) for _ in range(world)]
    dist.all_gather(parts, logits.detach().contiguous())

    ref_logits = truth(x)
    F.cross_entropy(ref_logits, y).backward()
    ref_grads = {n: p.grad for n, p in truth.named_parameters()}
    running = [(b, model.state_dict()[n]) for n, b in truth.state_dict().items() if "running_" in n]
    return {"grad": max(rel(grads[n], ref_grads[n]) for n in ref_grads),
            "logits": rel(torch.cat(parts), ref_logits.detach()),
            "running": max(rel(mine_, ref) for ref, mine_ in running)}


def main() -> int:
    out, sync = sys.argv[1], "--no-sync" not in sys.argv
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    results = {name: one_case(backend, overrides, sync) for name, (backend, overrides) in CASES.items()}
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
