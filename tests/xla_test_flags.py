"""XLA flags of every test process (conftest.py sets them before jax starts; the tests that
launch processes pass them on). No imports: it is read before jax is imported."""

DEVICES = "--xla_force_host_platform_device_count=8"  # 8 simulated CPU devices: the meshes
# LLVM at -O0: the suite compiles a few thousand programs of tiny models, whose run time is
# nothing beside their compile time; -O0 cut a guided-decoding test file's time by 27%. XLA's
# own graph passes (fusion, layout, sharding) run as in production; only the machine code is
# less optimised. Benchmarks and the make targets run at XLA's default level.
FAST_COMPILE = "--xla_backend_optimization_level=0"
