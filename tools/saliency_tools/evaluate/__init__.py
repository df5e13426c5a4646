"""Faithfulness report: how far the service's saliency maps can be trusted, measured.

For every photo, every method the service offers (vanilla, gradcam, smoothgrad, smoothgrad_sq,
vargrad, integrated_gradients, at the service's defaults) and a random map as the floor:
- deletion and insertion AUC (Petsiuk et al. 2018, RISE): the target class's probability while
  pixels are removed from the photo, or put back into a blurred copy, in the map's order; the
  mean over photos with a 95% Student-t interval, and the paired difference from the random map;
- the model-parameter randomisation test (Adebayo et al. 2018) on the first photos: the Spearman
  rank correlation between the trained model's map and the maps after re-initialising
  SqueezeNet's layers one by one, cumulatively, from the classifier down to the first convolution.
Prints the tables (Markdown) and writes a report (Markdown) and a figure (PNG).

The parts, each a module of this package:
- ``photos``: where the photos come from (scikit-image's or a folder), preprocessed as served;
- ``experiment``: the maps (the service's own engine, saliency_service.methods.explain: the
  photos of a chunk share every pass), their curves and the randomisation, batched;
- ``summary``: every number the report states (intervals, gains over random, the sanity check);
- ``tables``, ``interpretation``, ``cost``, ``report``: the Markdown, pure functions of those;
- ``charts``: the figure, drawn with Pillow; ``cli``: the command line (``main``).
The metrics and statistics are saliency_tools.metrics': the same code, model, layout and
preprocessing as the server. Weights: $SQUEEZENET_WEIGHTS, else torchvision's file (downloaded
once into .cache/). About 6 s per photo plus 1-2 minutes of randomisation on 2 otherwise idle
CPU cores: 100 photos in about 12 minutes (docs/faithfulness.md, "Cost").

Usage:
    .venv/bin/python scripts/evaluate.py                 # scikit-image's photos -> docs/
    .venv/bin/python scripts/evaluate.py --images path/to/photos --out out/faithfulness
        [--samples 25] [--noise 0.15] [--steps 32] [--seed 0] [--pixels-per-step 896]
        [--randomisation-photos 8] [--batch-size 16]
"""
