"""kfopt: make ML models fast and small, verified, on Kubeflow Pipelines or one machine."""

__version__ = "0.1.0"
