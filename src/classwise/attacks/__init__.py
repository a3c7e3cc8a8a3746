"""Adversarial attacks in [0, 1] pixel space, for training and for evaluation (`classwise.attacks.pgd`)."""
