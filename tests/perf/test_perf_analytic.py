"""The analytic cost model: activation-pass budgets (DESIGN.md §2), FLOP sanity, ceilings, the CLI table."""
import argparse
import json

import pytest

from spin_kernels import perf


@pytest.mark.parametrize("train", [False, True])
def test_convmixer_pass_budget_timm(train):
    rows = perf.convmixer_layer_costs(8, 64, 14, 7, "bf16", act="gelu", train=train)
    fwd = perf.activation_passes(rows, "fwd")
    assert fwd["design"] <= 5          # K1 reads h_prev, writes g; K2 reads h_prev, g, writes h
    assert fwd["eager"] >= 15          # ~18 in DESIGN.md; itemised: 17
    assert fwd["min"] <= fwd["design"] < fwd["eager"]
    if train:
        bwd = perf.activation_passes(rows, "bwd")
        assert bwd["design"] <= 2.5 * fwd["design"]
        assert bwd["design"] < bwd["eager"]


def test_convmixer_pass_budget_spin():
    rows = perf.convmixer_layer_costs(8, 64, 16, 3, "bf16", act="relu", spin_residual=True, train=True)
    fwd, bwd = perf.activation_passes(rows, "fwd"), perf.activation_passes(rows, "bwd")
    assert fwd["design"] <= 8
    assert bwd["design"] <= 2.5 * fwd["design"]
    # The fused kernels' passes are exactly the layer's design passes.
    fused_fwd = sum(r.design_passes for r in rows if r.kind == "fused" and r.phase == "fwd")
    assert fused_fwd == fwd["design"]
    # The eager layer is the sum of its primitive ops.
    assert fwd["eager"] == sum(r.eager_passes for r in rows if r.kind == "op" and r.phase == "fwd")


@pytest.mark.parametrize("recompute", ["all", "qkv", "fc1", "none"])
def test_vit_pass_budget(recompute):
    """Backward ≤ 2.5x the forward's passes, not counting the recomputation (rows F1r_* / F4r_*: forward work
    redone by choice, present exactly for the GEMMs the mode recomputes); the layer summary is their sum."""
    rows = perf.vit_block_costs(8, 384, 6, 197, "bf16", train=True, recompute=recompute)
    fwd, bwd = perf.activation_passes(rows, "fwd"), perf.activation_passes(rows, "bwd")
    assert fwd["design"] < fwd["eager"]
    redo = [r for r in rows if r.kind == "fused" and r.name[:4] in ("F1r_", "F4r_")]
    assert {r.name[:2] for r in redo} == {{"qkv": "F1", "fc1": "F4"}[g] for g in perf.vit_recomputed(recompute)}
    assert bwd["design"] - sum(r.design_passes for r in redo) <= 2.5 * fwd["design"]
    assert bwd["design"] == sum(r.design_passes for r in rows if r.kind == "fused" and r.phase == "bwd")


@pytest.mark.parametrize("name,gmacs", [("deit_small_patch16_224", 4.6), ("deit_base_patch16_224", 17.6),
                                        ("convmixer_768_32", 19.5), ("convmixer_1536_20", 48.7)])
def test_model_flops_match_published_macs(name, gmacs):
    # timm / paper MACs per 224² image; our FLOPs also count bias, act and softmax, hence the 8% band.
    t = perf.model_costs(name, 1, "bf16").totals()
    assert t["flops"] / 2 / 1e9 == pytest.approx(gmacs, rel=0.08)


def test_bytes_scale_with_dtype_and_floor_is_roofline():
    rows16 = perf.convmixer_layer_costs(4, 32, 8, 3, "bf16")
    rows32 = perf.convmixer_layer_costs(4, 32, 8, 3, "fp32")
    dw16, dw32 = rows16[0], rows32[0]
    assert dw32.bytes("min") == pytest.approx(2 * dw16.bytes("min"))
    c = perf.Ceilings()
    f = dw16.floor_s(c, "bf16")
    assert f == pytest.approx(max(dw16.flops / c.vector_flops["bf16"], dw16.bytes("min") / c.hbm_bytes_per_s))
    # A GEMM at large C is compute-bound: its intensity beats the ridge point.
    gemm = perf.convmixer_layer_costs(64, 1536, 32, 9, "bf16")[4]
    assert gemm.name == "pointwise_gemm"
    assert gemm.intensity() > c.tensor_flops["bf16"] / c.hbm_bytes_per_s
    # train mode adds backward rows and roughly triples the FLOPs.
    ft = perf.model_costs("spin_convmixer_768_32", 2, "bf16", train=True).totals()["flops"]
    ff = perf.model_costs("spin_convmixer_768_32", 2, "bf16").totals()["flops"]
    assert 2.5 < ft / ff < 3.5


def test_totals_order():
    t = perf.model_costs("spin_convmixer_768_32", 64, "bf16").totals()
    assert t["min_bytes"] < t["design_bytes"] < t["eager_bytes"]
    assert t["min_floor_s"] <= t["design_floor_s"] <= t["eager_floor_s"]


def test_ceilings_json_roundtrip_and_partial(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"ceilings": {"name": "my-card", "hbm_bytes_per_s": 2.5e12,
                                          "tensor_flops": {"bf16": 600e12}}}))
    c = perf.Ceilings.from_json(str(p))
    assert c.name == "my-card" and c.hbm_bytes_per_s == 2.5e12
    assert c.tensor_flops["bf16"] == 600e12 and c.tensor_flops["tf32"] == perf.H100.tensor_flops["tf32"]
    assert perf.Ceilings.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown ceiling keys"):
        perf.Ceilings.from_dict({"hbm": 1})


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="dtype"):
        perf.model_costs("deit_small_patch16_224", 1, "int8")
    with pytest.raises(ValueError, match="name"):
        perf.model_costs("resnet50", 1)
    with pytest.raises(ValueError, match="batch"):
        perf.convmixer_layer_costs(0, 8, 8, 3)
    with pytest.raises(ValueError, match="num_heads"):
        perf.vit_block_costs(1, 10, 3, 5)
    with pytest.raises(ValueError, match="arch_overrides"):
        perf.model_costs("deit_small_patch16_224", 1, foo=1)


def test_occupancy_rules():
    # 128 threads, 96 regs, no smem: register-limited to 5 blocks (65536 / (96*32*4) = 5.3).
    o = perf.theoretical_occupancy(96, 0, 4)
    assert o["blocks_per_sm"] == 5 and o["limiter"] == "registers"
    # 100 KiB smem per block: 2 blocks fit in 228 KiB.
    o = perf.theoretical_occupancy(32, 100 * 1024, 4)
    assert o["blocks_per_sm"] == 2 and o["limiter"] == "shared_memory"


def test_parsers():
    text = ("ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
            "ptxas info    : Function properties for k\n"
            "    8 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n"
            "ptxas info    : Used 40 registers, used 1 barriers, 16 bytes smem\n")
    assert perf.parse_ptxas_verbose(text) == {"k": {"stack": 8, "spill_stores": 8, "spill_loads": 4,
                                                    "registers": 40, "static_smem": 16}}
    ru = (" Function _Z3fooPf:\n  REG:32 STACK:0 SHARED:2048 LOCAL:0 CONSTANT[0]:368 TEXTURE:0\n")
    assert perf.parse_resource_usage(ru)["_Z3fooPf"]["static_smem"] == 2048


def test_cli_bench_analytic(capsys, tmp_path):
    from spin_kernels import perf_cli
    parser = argparse.ArgumentParser()
    perf_cli.register(parser.add_subparsers())
    out = tmp_path / "t.json"
    args = parser.parse_args(["bench", "--analytic", "--model", "spin_convmixer_768_32", "--batch", "8",
                              "--train", "--json", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "K2_pointwise_fused" in text and "layer bwd activation passes" in text
    data = json.loads(out.read_text())
    assert data["model"] == "spin_convmixer_768_32" and data["totals"]["flops"] > 0


@pytest.mark.parametrize("name", ["convmixer_1536_20", "spin_convmixer_768_32", "deit_tiny_patch16_224"])
def test_flops_agree_with_model_profile(name):
    # perf.roofline carries its own architecture table; it must agree with the MACs of the real model (within the
    # bias / activation / softmax FLOPs that profile() leaves out).
    import spin_kernels as sk
    model = sk.create_model(name)
    macs = sk.profile(model, img_size=224)["macs"]
    flops = perf.model_costs(name, 1, "bf16").totals()["flops"]
    assert flops / 2 / macs == pytest.approx(1.0, abs=0.03)


def test_named_cards():
    assert perf.get_ceilings("H200").hbm_bytes_per_s > perf.get_ceilings().hbm_bytes_per_s
    with pytest.raises(ValueError, match="card"):
        perf.get_ceilings("a100x")


@pytest.mark.parametrize("name", ["convmixer_768_32", "convmixer_1536_20", "spin_convmixer_768_32"])
def test_model_budget_report(name):
    cost = perf.model_costs(name, 8, "bf16", train=True)
    b = perf.pass_budget(cost)
    assert all(v["ok"] for v in b.values()) and len(b) == 2
    assert "budget (DESIGN.md §2)" in perf.format_table(cost)
    assert perf.pass_budget(perf.model_costs("deit_small_patch16_224", 1)) == {}
