"""PECHead models: layers (warp, heatmaps, hourglass), E, dense motion, G and PECHead.

Models never import data, training or CLI code.
"""
