"""Code generation: scheduled kernels -> C functions (`lower`), the memory plan (`memory`),
weights as constant data (`weights`) and the static executor with its API (`executor`)."""
