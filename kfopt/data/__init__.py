"""Datasets: load (bundled or from a URI), validate, split, normalize, augment; the Dataset artifact."""
