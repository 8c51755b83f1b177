"""Code generation: renderers (loop IR -> C or CUDA text), compiling and loading."""
