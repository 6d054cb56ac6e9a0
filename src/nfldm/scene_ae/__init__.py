"""Stage 1: the scene auto-encoder (lift, splat, render, decode; docs/scene-ae.md)."""
