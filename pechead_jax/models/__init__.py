"""PECHead models: layers (warp, heatmaps, hourglass), E, dense motion, G and PECHead, the
multi-scale discriminator D and the perceptual VGG.

Models never import data, training or CLI code.
"""
