"""Plain-PyTorch ground truth of the weights-resident shared-run contract (csrc/shared_run.cu).

For each layer l of the run, on channels-last x [B, H, W, C]:
    u = x + s1[l] * act(dwconv(x; filt[l]) + dwb[l]) + t1[l]
    x = s2[l] * act(u W^T + b) + t2[l]   (+ u for SPIN's layer)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTS = {"relu": F.relu, "gelu": F.gelu}


def shared_run(x, w, w_bias, dw_weight, dw_bias, s1, t1, s2, t2, *, act: str, spin_residual: bool,
               dtype=torch.float64):
    """The run's output, computed in ``dtype`` (float64 by default) and returned in that dtype."""
    f = ACTS[act]
    x = x.to(dtype).permute(0, 3, 1, 2)
    c, k = x.shape[1], dw_weight.shape[-1]
    w2 = w.reshape(c, c).to(dtype)
    for l in range(dw_weight.shape[0]):
        z = F.conv2d(x, dw_weight[l].to(dtype).reshape(c, 1, k, k), dw_bias[l].to(dtype), padding=k // 2, groups=c)
        u = x + s1[l].to(dtype).view(1, c, 1, 1) * f(z) + t1[l].to(dtype).view(1, c, 1, 1)
        h = f(torch.einsum("bchw,oc->bohw", u, w2) + w_bias.to(dtype).view(1, c, 1, 1))
        x = s2[l].to(dtype).view(1, c, 1, 1) * h + t2[l].to(dtype).view(1, c, 1, 1)
        if spin_residual:
            x = x + u
    return x.permute(0, 2, 3, 1)
