"""Triton kernels, one module per kernel family. Imported only by the entry points in kilotok/kernels/ when
the Triton backend runs (triton is an optional extra), never by model code."""
