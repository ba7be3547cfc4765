"""Transport adapters: one module per protocol, chosen by URL scheme."""
