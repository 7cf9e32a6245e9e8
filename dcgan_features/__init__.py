"""dcgan-features: a DCGAN's frozen discriminator as a feature extractor, evaluated with an L2-SVM."""

__version__ = "0.1.0"
