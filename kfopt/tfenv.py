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


def set_threads(threads: int | None) -> None:
    """Intra-op threads for this process's TensorFlow runtime (inter-op 1), before its first op.

    Once TensorFlow has initialised its thread pools the call is refused; the benchmark records the
    requested count either way, and each variant runs in a fresh process, so that is the rare case.
    """
    if not threads:
        return
    try:
        tf().config.threading.set_intra_op_parallelism_threads(threads)
        tf().config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
