"""cktf: contrastive knowledge transfer (Zhao, Chen & Zhao, ICASSP 2023) and its baselines, at scale."""

__version__ = "0.1.0"
