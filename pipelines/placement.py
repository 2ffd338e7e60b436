"""Put one pipeline task on its node pool, at compile time, from a kfopt deployment.

The pipeline DAG says *what* runs; `config/deployment/<name>.yaml` says *where*. Keeping the two
apart lets one pipeline compile for a GKE cluster with GPU and TPU pools or for a CPU-only cluster.
Each call below is a kfp / kfp-kubernetes setter, so the result is plain PipelineSpec + platform
spec that any KFP v2 backend understands. kfp.local ignores the Kubernetes parts, which is harmless.
"""

from kfp import dsl, kubernetes

from kfopt.deployment import Deployment


def apply(task: dsl.PipelineTask, stage: str, deployment: Deployment) -> dsl.PipelineTask:
    """Set image, resources, accelerator, node selectors, tolerations and retry for `stage`.

    A stage on a pool without an accelerator gets no accelerator request at all, so a CPU-only
    deployment compiles to a pipeline that schedules on any node.
    """
    pool = deployment.pool_for(stage)
    resources = deployment.resources_for(stage)
    task.set_container_image(pool.image)
    task.set_cpu_request(resources.cpu_request).set_cpu_limit(resources.cpu_limit)
    task.set_memory_request(resources.memory_request).set_memory_limit(resources.memory_limit)
    if pool.accelerator is not None:
        task.set_accelerator_type(pool.accelerator.resource)
        task.set_accelerator_limit(pool.accelerator.count)
    for label, value in pool.node_selector.items():
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    for toleration in pool.tolerations:
        kubernetes.add_toleration(task, key=toleration.key, operator=toleration.operator,
                                  value=toleration.value, effect=toleration.effect)
    if pool.retry is not None:
        task.set_retry(num_retries=pool.retry.count, backoff_duration=pool.retry.backoff,
                       backoff_factor=pool.retry.factor,
                       backoff_max_duration=pool.retry.max_duration)
    return task
