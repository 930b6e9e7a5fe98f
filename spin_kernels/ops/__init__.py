"""Public fused ops: torch.library custom ops with fake and autograd registrations, one module per op family.

``spin_kernels.ops.convmixer``: the ConvMixer trunk (``convmixer_features``) and its shared-run op
``spin_kernels::convmixer_run`` (Triton kernels from ``spin_kernels.triton``). Modules are imported on use, so
importing ``spin_kernels.ops`` never needs triton.
"""
