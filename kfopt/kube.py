"""The Kubernetes API client the cluster-side stages use (deploy, TrainJob): in a pod, else the kubeconfig.

One place for the lookup and for the message when there is neither, so every stage that talks to the
API fails the same clear way. The `kubernetes` package is imported only when a client is needed.
"""

from __future__ import annotations

from kfopt.errors import ConfigError


def api_client(doing: str, otherwise: str):
    """A kubernetes.client.ApiClient, or one ConfigError: "No Kubernetes API to <doing>: …; <otherwise>"."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError):
            raise ConfigError(f"No Kubernetes API to {doing}: not inside a pod and no kubeconfig; "
                              f"{otherwise}.") from None
    return client.ApiClient()
