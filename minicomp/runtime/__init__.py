"""Running compiled code: the on-disk cache and executables."""
