"""Triton kernels for the fused ConvMixer layers (launch helpers only; autograd lives in spin_kernels.ops).

Modules: ``dwconv`` (depthwise k×k forward / backward), ``pointwise`` (1×1 conv GEMMs: forward, input grad,
shared-run weight grad), ``bn`` (BatchNorm finalize: Chan merge, affine, running stats), ``_common`` (activation,
fused BN/act backward, prologue helpers).

``AOT_KERNELS`` lists every shipped GPU configuration for the kernels report and tests/triton/test_aot.py:
dict(name, fn, signature, constexprs, options, is_gemm). :func:`spin_kernels.perf.aot.compile_kernel` compiles
one for sm_90 (no GPU needed) and reads its registers, spills, shared memory and wgmma use.
"""
from __future__ import annotations

from . import attention, bn, dwconv, layernorm, pointwise, vit_gemm

_ACT = 1  # GELU: the heavier activation (Φ in every prologue) bounds register use


def _signature(fn, types: dict, constexprs: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in types:
            sig[name] = types[name]
        elif name.endswith("_ptr"):
            raise KeyError(f"{fn.__name__}: no type for pointer {name}")
        elif name in ("eps", "momentum"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _entry(name, fn, types, constexprs, options, is_gemm, div16=()):
    # div16: arguments Triton's launcher would mark 16-divisible (aligned pointers, sizes) at the shipped shapes
    return dict(name=name, fn=fn, signature=_signature(fn, types, constexprs), constexprs=dict(constexprs),
                options=dict(options), is_gemm=is_gemm, div16=tuple(div16))


def _build(dtype="fp16"):
    act = f"*{dtype}"
    f32 = "*fp32"
    out = []
    # the strip tiling of the depthwise kernels on 32-wide rows (4 strips of 8 columns × 32 channels)
    strip_tiling = dict(SW=dwconv.DW_FWD_STRIP, G=32 // dwconv.DW_FWD_STRIP,
                        BLOCK_C=dwconv.DW_FWD_THREADS * dwconv.DW_FWD_STRIP // 32, EVEN_C=True)
    # row width and channels are built into the depthwise kernels: 32-wide rows, the target shapes' channels
    dw_shape = {3: dict(W=32, C=768), 7: dict(W=32, C=768), 9: dict(W=32, C=1536)}
    dw_types = dict(hz_ptr=act, res_ptr=act, ax_ptr=f32, bx_ptr=f32, w_ptr=f32, bias_ptr=act, q_ptr=act, part_ptr=f32,
                    buf_ptr=act, count_ptr="*i32", gamma_ptr=act, beta_ptr=act, stat_ptr=f32, ab_ptr=f32)
    for k, res in ((3, False), (7, True), (9, True)):
        out.append(_entry(f"dw_fwd_k{k}{'_res' if res else ''}", dwconv.dw_fwd_kernel, dw_types,
                          # the training forward's variant on 32-wide rows: statistics, BN finalized in the launch
                          dict(KS=k, ACT_IN=_ACT, ACT=_ACT, HAS_RES=res, EMIT_STATS=True, FINALIZE=True,
                               BLOCK_T=dwconv.DW_FWD_FINALIZE_BLOCK, **strip_tiling, **dw_shape[k]),
                          dict(num_warps=4, num_stages=1), False,
                          # as launched: aligned buffers
                          div16=dw_types))
    dx_types = dict(du_ptr=act, q_ptr=act, qvec_ptr=f32, w_ptr=f32, hz_ptr=act, res_ptr=act, xvec_ptr=f32,
                    dx_ptr=act, dhz_ptr=act, dq_ptr=f32, spart_ptr=f32, wpart_ptr=f32, buf_ptr=f32)
    wg_types = dict(dq_ptr=f32, hz_ptr=act, res_ptr=act, xvec_ptr=f32, wpart_ptr=f32, buf_ptr=f32)
    for k, res in ((3, True), (9, False)):
        fuse = k <= dwconv.DW_BWD_FUSED_MAX_K
        # (k = 9: strips of DW_BWD_STRIP_K9 columns, as dw_bwd launches both kernels there)
        narrow = dict(SW=dwconv.DW_BWD_STRIP_K9, G=32 // dwconv.DW_BWD_STRIP_K9,
                      BLOCK_C=dwconv.DW_FWD_THREADS * dwconv.DW_BWD_STRIP_K9 // 32, EVEN_C=True)
        bwd_tiling = strip_tiling if k < dwconv.DW_WGRAD_NARROW_FROM_K else narrow
        out.append(_entry(f"dw_bwd_dx_k{k}{'_res' if res else ''}{'_fused' if fuse else ''}",
                          dwconv.dw_bwd_dx_kernel, dx_types,
                          dict(KS=k, ACT_IN=_ACT, ACT=_ACT, HAS_RES=res, WRITE_DX=True, WRITE_DHZ=True, FUSE_DW=fuse,
                               **bwd_tiling, **dw_shape[k]),
                          dict(num_warps=4, num_stages=1), False, div16=dx_types))
        if not fuse:
            out.append(_entry(f"dw_wgrad_k{k}_res", dwconv.dw_wgrad_kernel, wg_types,
                              dict(KS=k, ACT_IN=_ACT, HAS_RES=True, **dict(bwd_tiling, EVEN_C=False), **dw_shape[k]),
                              dict(num_warps=4, num_stages=1), False, div16=wg_types))
    out.append(_entry("bn_finalize", bn.bn_finalize_kernel,
                      dict(part_ptr=f32, gamma_ptr=f32, beta_ptr=f32, stat_ptr=f32, ab_ptr=f32, rm_ptr=f32,
                           rv_ptr=f32),
                      dict(UPDATE_RUNNING=True, BLOCK_T=bn.BN_BLOCK_ROWS, BLOCK_C=bn.BN_BLOCK_C),
                      dict(num_warps=4, num_stages=1), False))
    out.append(_entry("bn_bwd_vectors", bn.bn_bwd_vectors_kernel,
                      dict(part_ptr=f32, gamma_ptr=act, mean_ptr=f32, invstd_ptr=f32, sums_ptr=f32, vec_ptr=f32,
                           gw_ptr=act, gb_ptr=act),
                      dict(TRAINING=True, WRITE_VEC=True, WRITE_GRADS=True, BLOCK_P=bn.BN_BLOCK_ROWS,
                           BLOCK_C=bn.BN_BLOCK_C),
                      dict(num_warps=4, num_stages=1), False))
    in_types = dict(hz_ptr=act, res_ptr=act, ax_ptr=f32, bx_ptr=f32, q_ptr=act, a1_ptr=f32, b1_ptr=f32, u_ptr=act)
    for spin in (False, True):
        out.append(_entry(f"pw_input{'_spin' if spin else ''}", pointwise.pw_input_kernel, in_types,
                          dict(ACT_IN=_ACT, ACT_G=_ACT, HAS_RES=spin, BLOCK_M=pointwise.PW_INPUT_BLOCK_M, BLOCK_K=128),
                          dict(num_warps=4, num_stages=1), False, div16=[*in_types, "K"]))
    pw_types = dict(u_ptr=act, w_ptr=act, bias_ptr=act, z_ptr=act, part_ptr=f32)
    for i, cfg in enumerate(pointwise.PW_FWD_GPU_CONFIGS):
        cfg = dict(cfg)
        opts = dict(num_warps=cfg.pop("num_warps"), num_stages=cfg.pop("num_stages"))
        out.append(_entry(f"pw_fwd_cfg{i}", pointwise.pw_fwd_kernel, pw_types,
                          dict(ACT=_ACT, EMIT_STATS=True, **cfg), opts, True, div16=[*pw_types, "N", "K"]))
    dz_types = dict(g_ptr=act, z_ptr=act, zvec_ptr=f32, dz_ptr=act, hz_ptr=act, uvec_ptr=f32, q_ptr=act, u_ptr=act)
    for write_u in (False, True):
        out.append(_entry(f"pw_dz{'_u' if write_u else ''}", pointwise.pw_dz_kernel, dz_types,
                          dict(ACT=_ACT, WRITE_U=write_u, BLOCK_M=pointwise.PW_INPUT_BLOCK_M, BLOCK_N=128),
                          dict(num_warps=4, num_stages=1), False, div16=[*dz_types, "N"]))
    dx_types = dict(dz_ptr=act, w_ptr=act, r_ptr=act, q_ptr=act, qvec_ptr=f32, du_ptr=act, part_ptr=f32)
    for i, cfg in enumerate(pointwise.PW_DX_GPU_CONFIGS):
        cfg = dict(cfg)
        opts = dict(num_warps=cfg.pop("num_warps"), num_stages=cfg.pop("num_stages"))
        out.append(_entry(f"pw_bwd_dx_cfg{i}", pointwise.pw_bwd_dx_kernel, dx_types,
                          dict(ACT_G=_ACT, HAS_R=True, **cfg), opts, True, div16=[*dx_types, "N", "K"]))
    cfg = dict(pointwise.PW_DW_GPU_CONFIG)
    opts = dict(num_warps=cfg.pop("num_warps"), num_stages=cfg.pop("num_stages"))
    dw_types = dict(dzrun_ptr=act, dzlast_ptr=act, urun_ptr=act, ulast_ptr=act, dw_ptr=f32, db_ptr=f32)
    out.append(_entry("pw_bwd_dw", pointwise.pw_bwd_dw_kernel, dw_types, dict(**cfg), opts, True,
                      div16=[*dw_types, "M", "N", "K"]))
    return out


def _bf16_gemms():
    # bf16 is the training dtype on H100: its GEMM variants must also compile spill-free with wgmma
    keep = {"pw_fwd_cfg0", "pw_bwd_dx_cfg0", "pw_bwd_dw"}
    out = []
    for e in _build("bf16"):
        if e["name"] in keep:
            e["name"] += "_bf16"
            out.append(e)
    return out


CONVMIXER_AOT_KERNELS = _build() + _bf16_gemms()
AOT_KERNELS = CONVMIXER_AOT_KERNELS + attention.AOT_KERNELS + layernorm.AOT_KERNELS + vit_gemm.AOT_KERNELS
