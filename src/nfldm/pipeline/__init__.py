"""What spans stages: loading a whole pipeline or bundle, generating and rendering scenes
(meshes, videos, camera paths), fine-tuning stage 1's renderer on V decoded by stage 2,
bundles, and the quickstart. Imports every stage; no stage imports it.

Modules: ``load`` (the stages behind an ldm run, checked), ``generate`` (load a pipeline,
``nfldm sample``), ``renderer`` (stage 1 trained on decoded latents), ``bundle`` (float16
bundles; the shipped model), ``ablation``, ``quickstart``.
"""
