"""Subcommands of the ``probe`` CLI, one module each: ``add_arguments(parser)`` and ``run(args)``.

Modules here must not import torch, timm or h5py at import time (``probe --help`` answers instantly).
"""
