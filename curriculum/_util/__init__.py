"""Shared plumbing with no knowledge of stores or samplers: argument checks, atomic files,
progress bars, the one background-task helper and torch.distributed facts."""
