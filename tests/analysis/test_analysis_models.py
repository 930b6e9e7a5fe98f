"""Layer similarity on small real models, weight similarity / fusion drift, plan suggestion, the model family,
and the `spin analyze` / `spin family` commands (plots checked written and non-empty)."""
import argparse
import json
import os

import numpy as np
import pytest
import torch

import spin_kernels as sk
from spin_kernels import analysis as A
from spin_kernels.analysis import cli as acli
from spin_kernels.analysis.family import pareto_front

SMALL_CM = dict(dim=32, depth=6, patch_size=4, kernel_size=3, num_classes=10)
SMALL_VIT = dict(embed_dim=32, depth=4, num_heads=2, img_size=32, patch_size=8, num_classes=10)


def small_convmixer(**kw):
    torch.manual_seed(0)
    return sk.create_model("convmixer_768_32", **{**SMALL_CM, **kw})


def batches(n=48, bs=16, seed=0):
    return list(acli.synthetic_loader(n, 32, 3, bs, seed))


def assert_png(path):
    assert os.path.isfile(path) and os.path.getsize(path) > 1000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_layer_similarity_convmixer_matches_direct_cka_and_cleans_up():
    m = small_convmixer()
    m.train()
    data = batches()
    S = A.layer_similarity(m, data, debiased=False)
    assert S.shape == (6, 6)
    np.testing.assert_allclose(np.diag(S), 1.0, atol=1e-10)
    np.testing.assert_allclose(S, S.T, atol=1e-12)
    # hooks removed, mode restored
    assert m.training
    assert all(len(b._forward_hooks) == 0 for b in m.blocks)
    # One batch, biased: equals plain CKA on that batch's block outputs.
    feats = {}
    hooks = [m.blocks[i].register_forward_hook(lambda mod, inp, o, i=i: feats.__setitem__(i, o)) for i in (1, 4)]
    m.eval()
    with torch.no_grad():
        m(data[0])
    for h in hooks:
        h.remove()
    S1 = A.layer_similarity(m, data[:1], layers=[1, 4], debiased=False)
    assert S1[0, 1] == pytest.approx(A.linear_cka(feats[1], feats[4]), rel=1e-9)


def test_layer_similarity_vit_and_tuple_batches_and_layer_subset():
    torch.manual_seed(0)
    v = sk.create_model("deit_tiny_patch16_224", **SMALL_VIT)
    data = [(x, torch.zeros(len(x), dtype=torch.long)) for x in batches(32)]
    S = A.layer_similarity(v, data, layers=[0, -1])
    assert S.shape == (2, 2) and S[0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="layers"):
        A.layer_similarity(v, data, layers=[7])


def test_layer_similarity_two_models():
    a, b = small_convmixer(), small_convmixer()
    S = A.layer_similarity(a, batches(32), other=b)
    # identical weights (same seed) -> identical representations on the diagonal
    np.testing.assert_allclose(np.diag(S), 1.0, atol=1e-9)


def test_weight_similarity_shared_layers_are_identical():
    m = small_convmixer(share_rate=2)
    W = A.weight_similarity(m)
    plan = m.pw_plan.layer_to_unique
    for i in range(6):
        for j in range(6):
            if plan[i] == plan[j]:
                assert W[i, j] == pytest.approx(1.0)
    # unshared random init: nearly orthogonal weight vectors
    W = A.weight_similarity(small_convmixer(), "pointwise")
    assert np.abs(W - np.eye(6)).max() < 0.5
    assert A.weight_similarity(small_convmixer(), "depthwise").shape == (6, 6)
    v = sk.create_model("deit_tiny_patch16_224", **SMALL_VIT)
    assert A.weight_similarity(v, "block").shape == (4, 4)
    with pytest.raises(ValueError, match="part"):
        A.weight_similarity(v, "pointwise")


def test_fusion_drift_reads_per_layer_sources():
    src = small_convmixer()
    fused = sk.from_timm(src.state_dict(), "convmixer_768_32", share_rate=2, method="mean", **SMALL_CM)
    rows = A.fusion_drift(fused)
    layers = {r["layer"] for r in rows}
    assert layers == set(range(6))
    # Layer l's source equals the unshared model's layer-l weight (what the drift is measured on).
    per_layer = A.per_layer_tensors(fused, "pointwise")
    ref = A.per_layer_tensors(src, "pointwise")
    for a, b in zip(per_layer, ref, strict=True):
        torch.testing.assert_close(a, b)
    # After making a group's sources identical, their drift is zero.
    owner = fused.pointwise[0]
    with torch.no_grad():
        owner.parametrizations.weight.original1.copy_(owner.parametrizations.weight.original0)
    rows = [r for r in A.fusion_drift(fused) if r["unique"] == 0 and r["tensor"] == "weight"]
    assert all(r["rel_dist"] == pytest.approx(0.0, abs=1e-12) and r["cosine"] == pytest.approx(1.0) for r in rows)
    with pytest.raises(ValueError, match="fusion"):
        A.fusion_drift(src)


def test_suggest_plan_recovers_planted_blocks():
    spans = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    L = len(spans)
    S = np.full((L, L), 0.2)
    for i in range(L):
        for j in range(L):
            if spans[i] == spans[j]:
                S[i, j] = 0.95
    np.fill_diagonal(S, 1.0)
    assert A.suggest_sharing_plan(S, num_unique=4) == spans
    plan = A.suggest_sharing_plan(S, rate=2)
    assert len(plan) == L and max(plan) == 4 and sk.SharingPlan.from_list(plan).num_unique == 5
    assert A.top_similar_spans(S, 2, 1)[0]["mean_similarity"] == pytest.approx(0.95)
    assert A.format_mapping(plan).count(",") == L - 1
    with pytest.raises(ValueError, match="num_unique"):
        A.suggest_sharing_plan(S, num_unique=11)
    with pytest.raises(ValueError, match="similarity"):
        A.suggest_sharing_plan(np.zeros((2, 3)))


def test_pareto_front():
    costs = [1, 2, 3, 4, 2.5]
    accs = [70, 69, 75, 74, 72]
    assert pareto_front(costs, accs) == [0, 4, 2]


def test_family_table_and_plots(tmp_path):
    rows = A.family_table(["spin_convmixer_768_32", "deit_tiny_patch16_224"], [1, 2, 4, 5],
                          ["sequential", "strided"])
    by = {(r["model"], r["share_rate"], r["mapping"]): r for r in rows}
    assert by[("spin_convmixer_768_32", 1, "none")]["params"] == 20_465_896      # DESIGN.md §1
    assert by[("spin_convmixer_768_32", 2, "sequential")]["params"] == 11_016_424
    assert "skipped" in by[("spin_convmixer_768_32", 5, "sequential")]               # 5 does not divide 32
    results = [{"model": "spin_convmixer_768_32", "share_rate": 1, "top1": 76.32},
               {"model": "spin_convmixer_768_32", "share_rate": 2, "mapping": "sequential", "top1": 74.27},
               {"model": "spin_convmixer_768_32", "share_rate": 4, "mapping": "sequential", "top1": 70.0},
               {"model": "spin_convmixer_768_32", "share_rate": 2, "mapping": "strided", "top1": 73.0},
               {"checkpoint": "/x/fused.pth", "top1": 75.21, "params": 11_016_424, "macs": 5_000_000_000}]
    p = tmp_path / "results.json"
    p.write_text(json.dumps(results))
    from spin_kernels.analysis.family import load_results, write_family
    rows = A.family_table(["spin_convmixer_768_32"], [1, 2, 4], ["sequential", "strided"],
                          results=load_results(str(p)))
    front = [r for r in rows if r.get("pareto_params")]
    # the fused result (same params, matched by neither name nor MACs) becomes its own row and dominates r=2
    assert {r["top1"] for r in front} == {76.32, 75.21, 70.0}
    paths = write_family(rows, str(tmp_path / "fam"))
    assert_png(paths["params_plot"])
    assert_png(paths["macs_plot"])
    assert json.loads(open(paths["json"]).read())[0]["params"] == 20_465_896


def _parser():
    parser = argparse.ArgumentParser()
    acli.register(parser.add_subparsers())
    return parser


def test_cli_analyze_synthetic_and_image_folder(tmp_path, capsys):
    from PIL import Image
    m = small_convmixer(share_rate=1)
    ckpt = tmp_path / "m.pth"
    sk.models.save_model(m, ckpt)
    out = tmp_path / "an"
    args = _parser().parse_args(["analyze", "--checkpoint", str(ckpt), "--synthetic", "40", "--img-size", "32",
                                 "--batch-size", "10", "--output", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    plan_line = [ln for ln in text.splitlines() if ln and set(ln) <= set("0123456789,")][-1]
    plan = [int(x) for x in plan_line.split(",")]
    assert len(plan) == 6 and sk.SharingPlan.from_list(plan).num_unique == 3
    for name in ("cka.png", "weight_similarity.png", "cka_suggested_plan.png", "weight_similarity_depthwise.png"):
        assert_png(out / name)
    summary = json.loads((out / "analysis.json").read_text())
    assert np.array(summary["cka"]).shape == (6, 6) and summary["suggestion"]["mapping"] == plan

    # ImageFolder input with the model's eval transform
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls /
                                                                                   f"{i}.png")
    fused = sk.from_timm(m.state_dict(), "convmixer_768_32", share_rate=2, method="mean", **SMALL_CM)
    ckpt2 = tmp_path / "f.pth"
    sk.models.save_model(fused, ckpt2)
    out2 = tmp_path / "an2"
    args = _parser().parse_args(["analyze", "--checkpoint", str(ckpt2), "--data-dir", str(tmp_path / "imgs"),
                                 "--img-size", "32", "--batch-size", "6", "--workers", "0", "--output", str(out2),
                                 "--compare", str(ckpt)])
    assert args.func(args) == 0
    assert_png(out2 / "fusion_drift.png")
    assert_png(out2 / "cka_cross.png")
    assert "fusion_drift" in json.loads((out2 / "analysis.json").read_text())

    from spin_kernels.cli import main as spin

    capsys.readouterr()
    assert spin(["analyze", "--checkpoint", str(ckpt), "--output", str(out)]) == 2  # neither --data-dir nor --synthetic
    assert capsys.readouterr().err.strip() == ("spin analyze: error: --data-dir / --synthetic: pass exactly one of "
                                               "--data-dir DIR or --synthetic N")


def test_cli_family(tmp_path, capsys):
    out = tmp_path / "fam"
    args = _parser().parse_args(["family", "--models", "deit_tiny_patch16_224", "--rates", "1,2",
                                 "--mappings", "sequential", "--output", str(out)])
    assert args.func(args) == 0
    assert "deit_tiny_patch16_224" in capsys.readouterr().out
    assert_png(out / "params_vs_accuracy.png")


def test_demo_results_feed_the_family_table(tmp_path):
    """spin demo's demo_results.json (records with test_top1, params, macs) is accepted by spin family."""
    import json

    from spin_kernels.analysis.family import load_results

    demo = {"results": [{"model": "unshared", "share_rate": 1, "mapping": "sequential", "params": 86890,
                         "macs": 15881664, "test_top1": 91.54},
                        {"model": "shared", "share_rate": 2, "mapping": "sequential", "params": 49642,
                         "macs": 15881664, "test_top1": 91.06}]}
    (tmp_path / "demo_results.json").write_text(json.dumps(demo))
    rows = load_results(str(tmp_path / "demo_results.json"))
    assert [r["top1"] for r in rows] == [91.54, 91.06] and rows[1]["params"] == 49642
