"""The training core in plain PyTorch: model, data, augmentation, loop, checkpoints. No Ray."""
