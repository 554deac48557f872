"""C++ CPU kernels of realm_tf2 (built on first use) and their loader."""
