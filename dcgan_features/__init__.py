"""dcgan-features: a DCGAN's frozen discriminator as a feature extractor (Radford, Metz & Chintala 2015).

The promised Python API is the names in ``__all__`` (``dcgan_features.api``). They are bound here, after the
stage modules they use are imported, so ``dcgan_features.evaluate`` is the API function, not the stage module of
the same name; ``from dcgan_features.evaluate import ...`` and ``importlib.import_module`` still reach the module.
"""

__version__ = "0.1.0"
__all__ = ["Extractor", "evaluate", "load_extractor"]

from .api import Extractor, evaluate, load_extractor  # noqa: E402  (after __version__, which the API does not need)
