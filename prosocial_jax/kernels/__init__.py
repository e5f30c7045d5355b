"""Native CPU kernels that XLA:CPU's own code generation does not match, each optional.

- `rows_matmul`: few-row products (decode steps) with weights packed once at load time; built
  from `rows_matmul.cc` on first use with the machine's C++ compiler, registered with XLA as an
  FFI custom call. Where it cannot be built or run, decoding uses XLA's products unchanged.
"""
