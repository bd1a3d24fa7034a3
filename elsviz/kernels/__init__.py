"""Kernels that compute what they are given and hold no engine state: cpu (a C++ kernel compiled
on first use) and triton (a fused GPU kernel, tested on the CPU under TRITON_INTERPRET=1)."""
