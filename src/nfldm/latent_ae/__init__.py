"""Stage 2: the latent auto-encoder V -> (g, c, f) -> V (docs/latent-ae.md)."""
