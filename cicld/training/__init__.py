"""Training: ``pretrain-ae``, ``pretrain-ldm`` and ``adapt``, with run folders and checkpoints."""
