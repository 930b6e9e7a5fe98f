"""Plain-PyTorch ground truth of the weights-resident shared-run contract (csrc/shared_run.cu).

For each layer l, on channels-last x [B, H, W, C], with W, b the pointwise weight of l's run:
    u = x + s1[l] * act(dwconv(x; filt[l]) + dwb[l]) + t1[l]
    x = s2[l] * act(u W^T + b) + t2[l]   (+ u for SPIN's layer)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTS = {"relu": F.relu, "gelu": F.gelu}


def shared_run(x, w, w_bias, dw_weight, dw_bias, s1, t1, s2, t2, *, act: str, spin_residual: bool,
               run_lengths=None, dtype=torch.float64):
    """The layers' output, computed in ``dtype`` (float64 by default) and returned in that dtype.

    ``w``, ``w_bias``: one weight / bias for all layers, or per-run lists with ``run_lengths`` (as the kernel).
    """
    f = ACTS[act]
    x = x.to(dtype).permute(0, 3, 1, 2)
    c, k = x.shape[1], dw_weight.shape[-1]
    if run_lengths is None:
        w, w_bias, run_lengths = [w], [w_bias], [dw_weight.shape[0]]
    run_of = [r for r, n in enumerate(run_lengths) for _ in range(n)]
    for l in range(dw_weight.shape[0]):
        w2, wb = w[run_of[l]].reshape(c, c).to(dtype), w_bias[run_of[l]]
        z = F.conv2d(x, dw_weight[l].to(dtype).reshape(c, 1, k, k), dw_bias[l].to(dtype), padding=k // 2, groups=c)
        u = x + s1[l].to(dtype).view(1, c, 1, 1) * f(z) + t1[l].to(dtype).view(1, c, 1, 1)
        h = f(torch.einsum("bchw,oc->bohw", u, w2) + wb.to(dtype).view(1, c, 1, 1))
        x = s2[l].to(dtype).view(1, c, 1, 1) * h + t2[l].to(dtype).view(1, c, 1, 1)
        if spin_residual:
            x = x + u
    return x.permute(0, 2, 3, 1)
