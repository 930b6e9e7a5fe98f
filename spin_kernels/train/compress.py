"""``spin compress``: an unshared checkpoint (timm's or ours) -> a shared model by a sharing plan and fusion."""
from __future__ import annotations

from collections import OrderedDict

import torch

from ..argtypes import parse_kv, parse_mapping, parse_share
from ..checkpoint_io import check_writable_file
from ..interop import from_timm
from ..models.registry import config_conflicts, create_model, profile
from .checkpoint import atomic_save, load_checkpoint, model_state_dict


def param_table(model: torch.nn.Module) -> OrderedDict[str, int]:
    """Unique parameter count per top-level family (stem, depthwise, pointwise, norm1, ..., head), plus total.

    Counts each tensor once even when several layers use it (model.parameters() deduplicates), and for the
    fusion-training form counts the per-layer source tensors that are actually trained.
    """
    rows: OrderedDict[str, int] = OrderedDict()
    seen = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        fam = name.split(".")[0]
        rows[fam] = rows.get(fam, 0) + p.numel()
    rows["total"] = sum(v for k, v in rows.items())
    return rows


def format_tables(before: dict, after: dict, label_before: str = "unshared", label_after: str = "shared") -> str:
    """A text table of two :func:`param_table` results side by side, with the ratio per row."""
    keys = list(dict.fromkeys([*before, *after]))
    keys.remove("total")
    keys.append("total")
    w = max(len(k) for k in keys) + 2
    lines = [f"{'family':<{w}}{label_before:>14}{label_after:>14}{'ratio':>9}"]
    for k in keys:
        b, a = before.get(k, 0), after.get(k, 0)
        lines.append(f"{k:<{w}}{b:>14,}{a:>14,}{(b / a if a else float('inf')):>8.2f}x")
    return "\n".join(lines)


def compress_model(checkpoint: str, *, model_name: str | None = None, model_kwargs: dict | None = None,
                   share_rate: int = 2, mapping="sequential", share=None, fusion: str = "mean",
                   collapse: bool = True, trusted: bool = False):
    """Return ``(unshared_model, shared_model)`` built from ``checkpoint``.

    ``shared_model`` is the collapsed plain shared model, or the fusion-training form when ``collapse`` is False.
    Our checkpoints carry their architecture: ``model_name`` / ``model_kwargs`` may only repeat it.
    """
    ckpt = load_checkpoint(checkpoint, trusted=trusted, what="--checkpoint")
    if isinstance(ckpt.get("spin_config"), dict):
        sc = dict(ckpt["spin_config"])
        if sc.get("share_rate", 1) != 1 or sc.get("fusion"):
            raise ValueError(f"--checkpoint {checkpoint} is already shared (share_rate={sc.get('share_rate')}); "
                             "compress starts from an unshared model")
        conflicts = config_conflicts(sc, model_name, model_kwargs)
        if conflicts:
            raise ValueError(f"--model / --model-kwargs: {'; '.join(conflicts)}; --checkpoint {checkpoint} carries "
                             "its own architecture, leave these flags out")
        for k in ("share_rate", "mapping", "share", "fusion"):
            sc.pop(k, None)
        name = sc.pop("name")
        unshared = create_model(name, checkpoint_path=checkpoint, trust_checkpoint=trusted, **sc)
        fused = create_model(name, share_rate=share_rate, mapping=mapping, share=share, fusion=fusion,
                             checkpoint_path=checkpoint, trust_checkpoint=trusted, **sc)
    else:
        if not model_name:
            raise ValueError(f"--checkpoint {checkpoint} has no spin_config (timm weights?): pass --model NAME")
        state = model_state_dict(ckpt, checkpoint, what="--checkpoint")
        unshared = from_timm(state, model_name, **(model_kwargs or {}))
        fused = from_timm(state, model_name, share_rate=share_rate, mapping=mapping, share=share, method=fusion,
                          **(model_kwargs or {}))
    return unshared, (fused.collapse() if collapse else fused)


def run_compress(args) -> int:
    """CLI body: compress, print the parameter table before/after (and MACs), save our checkpoint."""
    check_writable_file(args.output, "--output")
    unshared, shared = compress_model(args.checkpoint, model_name=args.model, model_kwargs=parse_kv(args.model_kwargs),
                                      share_rate=args.share_rate, mapping=parse_mapping(args.mapping),
                                      share=parse_share(args.share), fusion=args.fusion,
                                      collapse=not args.keep_fusion_form, trusted=args.trust_checkpoint)
    print(format_tables(param_table(unshared), param_table(shared)))
    try:
        pu, ps = profile(unshared, img_size=args.img_size), profile(shared, img_size=args.img_size)
        print(f"unique params {pu['params']:,} -> {ps['params']:,} ({pu['params'] / ps['params']:.2f}x smaller); "
              f"MACs {pu['macs']:,} -> {ps['macs']:,} (sharing does not change compute)")
    except Exception as e:  # noqa: BLE001 - the table above is the essential output
        print(f"(profile unavailable: {e})")
    atomic_save({"model": shared.state_dict(), "spin_config": shared.spin_config}, args.output)
    print(f"saved {args.output} ({'fusion-training form' if args.keep_fusion_form else 'shared model'}, "
          f"plan {shared.spin_config.get('mapping')} r={shared.spin_config.get('share_rate')}, fusion {args.fusion})")
    return 0
