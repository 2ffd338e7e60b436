"""The kfopt pipeline DAG(s) and their placement on node pools; compiled by `kfopt compile`."""
