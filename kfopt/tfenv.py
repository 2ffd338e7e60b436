"""Import TensorFlow the one way that works with tf-keras and tfmot.

tfmot rejects Keras 3 models, so TF_USE_LEGACY_KERAS=1 must be set before TensorFlow is first
imported. Every module that needs TensorFlow calls `tf()` / `keras()` lazily, inside functions, so
that the CLI and the components start without paying TensorFlow's ~5 s import.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def tf():
    import tensorflow

    return tensorflow


def keras():
    import tf_keras

    return tf_keras
