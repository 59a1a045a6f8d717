"""Training and evaluation of the OIM model: losses, datasets, synthetic world, trainer, evaluator."""
