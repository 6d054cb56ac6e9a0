"""Post-optimisation (the paper's Sec. 4): a 2D image diffusion prior on the dataset's real frames,
conditioned on an image embedding (``nfldm train image-prior``), for score distillation of
generated scenes with negative guidance."""
