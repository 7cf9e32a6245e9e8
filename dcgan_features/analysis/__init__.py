"""The paper's analyses and the run page (``dcgan-features analyse ...``), after ``features`` in the flow: they use
G, D and the feature extractor of a trained run, and nothing earlier imports them.

* :mod:`.common`: G and D of a checkpoint; figures.
* :mod:`.samples`: numbered samples whose z vectors are saved beside them (handles for the commands below).
* :mod:`.latent`: walks between two z and vector arithmetic on z (the paper's sections 6.1 and 6.3).
* :mod:`.memorisation`: generated samples beside their nearest training images, and a number (section 6.1).
* :mod:`.visualise`: D's first-layer filters and guided backpropagation (section 6.2).
* :mod:`.run_page`: one HTML / Markdown page per run: curves, sample grids, config, provenance, results.
"""
