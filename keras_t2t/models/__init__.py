"""The models: ``T2TViT`` / ``T2TViTDense`` (``t2t_vit``), the ``ViT`` baseline (``vit``), what they
share (``base``), and the registry of every named configuration (``presets``)."""
