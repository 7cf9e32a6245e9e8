"""``python -m dcgan_features ...``, which is what torchrun starts: ``torchrun --nproc_per_node=N -m dcgan_features
pretrain ...``."""

from .cli import main

if __name__ == "__main__":
    main()
