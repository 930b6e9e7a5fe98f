"""A whole triton-backend model traces with torch.compile(fullgraph=True): no graph breaks."""
import torch

import spin_kernels as sk


def test_whole_model_fullgraph():
    torch.manual_seed(0)
    model = sk.create_model("spin_convmixer_768_32", dim=16, depth=4, kernel_size=3, patch_size=4, num_classes=5,
                            share_rate=2, backend="triton").train()
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    ref = sk.create_model("spin_convmixer_768_32", dim=16, depth=4, kernel_size=3, patch_size=4, num_classes=5,
                          share_rate=2).train()
    ref.load_state_dict(model.state_dict())  # running stats were updated once by the compiled call
    ref.eval(), model.eval()
    torch.testing.assert_close(torch.compile(model, fullgraph=True, backend="aot_eager")(x), ref(x),
                               rtol=1e-4, atol=1e-4)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
