"""Triton kernels behind the entry points of kilotok/kernels/ (one module per kernel family). Triton is an
optional extra: nothing outside this package imports it, and the entry points import these modules only
when the Triton backend was chosen (kernels/backend.py). Under TRITON_INTERPRET=1 the same kernels run on
CPU tensors, which is how the tests check them against the PyTorch references."""
