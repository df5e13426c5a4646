"""Explainable ImageNet classification: SqueezeNet 1.1 predictions with gradient saliency maps.

The package is framework-free: it imports PyTorch, torchvision and Pillow but nothing from
TorchServe. ``handler/saliency_handler.py`` is the thin TorchServe adapter around it.
"""
