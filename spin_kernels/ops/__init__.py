"""Public fused ops: torch.library custom ops with fake and autograd registrations, one module per op family.

``spin_kernels.ops.convmixer``: the ConvMixer trunk (``convmixer_features``) and its shared-run op
``spin_kernels::convmixer_run`` (Triton kernels from ``spin_kernels.triton``; with ``backend="cuda"`` the
depthwise half runs on the CUDA C++ kernels through ``dwconv_cuda``); ``convmixer_cuda``: the eval-mode trunk on
the weights-resident persistent kernel; ``dwconv``: the depthwise convolution on its own (``depthwise_conv2d``);
``vit``: the ViT blocks. Modules are imported on use, so importing
``spin_kernels.ops`` never needs triton.
"""
