"""Pieces for the frameworks people train with; each is an optional extra, imported only when used.

- :mod:`curriculum.integrations.lightning` - ``CurriculumCallback`` for Lightning (keeps the
  curriculum under DDP, feeds per-sample results back, resumes from ``ckpt_path``).
- :mod:`curriculum.integrations.transformers` - ``CurriculumTrainer`` for the Hugging Face
  ``Trainer`` (a sampler that survives accelerate's sharding, the dataset index for feedback,
  resume from ``resume_from_checkpoint``) and ``with_index`` for ``datasets``.
- torchrun: nothing to import - ``curriculum.wrap`` shards by rank when iteration starts (see
  ``examples/distributed_torchrun.py``).

``pip install "curriculum[integrations]"`` installs the frameworks.
"""

__all__: list[str] = []
