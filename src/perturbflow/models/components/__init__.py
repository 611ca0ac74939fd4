"""The ST network and its parts: transformer, perturbation encoder, losses, LoRA, doses, prior."""
