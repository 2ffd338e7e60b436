"""KFP components: one module per stage, each a thin shell over one call into kfopt.

Component functions are plain functions here; `make()` turns one into a lightweight KFP component
with the base image of its node pool, so images come from configuration, not from code. The image
already holds kfp and kfopt, hence install_kfp_package=False (and no runtime pip installs).
"""

from __future__ import annotations

from typing import Callable

from kfp import dsl


def make(func: Callable, image: str):
    return dsl.component(func=func, base_image=image, install_kfp_package=False)
