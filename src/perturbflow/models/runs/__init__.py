"""Run folders: what a training writes and inference reads; LoRA adapters of a base run."""
