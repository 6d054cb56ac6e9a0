"""Stage 3: hierarchical latent diffusion (psi_g, psi_c, psi_f) and scene generation.

``config`` presets, ``trajectory`` the camera-path encoding, ``data`` the latent folder,
``model`` the denoisers, ``train`` training / loading, ``sample`` the sampler and its outputs,
``evaluate`` Frechet distance / KID of generated views.
See docs/ldm.md.
"""
