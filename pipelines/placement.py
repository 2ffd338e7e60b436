"""Put one pipeline task on its node pool, at compile time, from a kfopt deployment.

The pipeline DAG says *what* runs; `config/deployment/<name>.yaml` says *where*. Keeping the two
apart lets one pipeline compile for a GKE cluster with GPU and TPU pools or for a CPU-only cluster.
Each call below is a kfp / kfp-kubernetes setter, so the result is plain PipelineSpec + platform
spec that any KFP v2 backend understands. kfp.local ignores the Kubernetes parts, which is harmless.
"""

from kfp import dsl, kubernetes

from kfopt.deployment import Deployment

#: The user the images run as (images/*/Dockerfile: USER 10001:10001); tests check they agree.
RUN_AS_UID = 10001
#: Where the KFP v2 launcher keeps local copies of artifacts, per pipeline-root scheme (a contract of
#: KFP's Python executor: /gcs/..., /minio/..., /s3/...). Root-owned in the image, so a non-root task
#: needs them as emptyDirs (kubeflow/pipelines#5673); KFP's default root is MinIO.
ARTIFACT_MOUNTS = {"gs": "/gcs", "minio": "/minio", "s3": "/s3"}


def secure(task: dsl.PipelineTask, deployment: Deployment) -> dsl.PipelineTask:
    """Run the task as the images' non-root user, with every path it writes on an emptyDir.

    kfp-kubernetes 2.17 sets only runAsUser, runAsGroup and runAsNonRoot on a task; the KFP backend
    adds allowPrivilegeEscalation=false, drop ALL capabilities and seccomp RuntimeDefault itself
    (kfp.kubernetes.set_security_context's docstring). readOnlyRootFilesystem cannot be set per task
    with kfp-kubernetes 2.17: the images are ready for it (HOME and TMPDIR are /tmp, mounted here),
    and the namespace's Pod Security Admission labels (manifests/base/namespace.yaml) enforce the rest.
    """
    kubernetes.set_security_context(task, run_as_user=RUN_AS_UID, run_as_group=RUN_AS_UID,
                                    run_as_non_root=True)
    kubernetes.empty_dir_mount(task, volume_name="kfopt-tmp", mount_path="/tmp")
    scheme = (deployment.pipeline_root or "minio://").partition("://")[0]
    if scheme in ARTIFACT_MOUNTS:
        kubernetes.empty_dir_mount(task, volume_name="kfopt-artifacts", mount_path=ARTIFACT_MOUNTS[scheme])
    return task


def apply(task: dsl.PipelineTask, stage: str, deployment: Deployment) -> dsl.PipelineTask:
    """Set image, resources, accelerator, node selectors, tolerations, retry and the pod security
    context (secure) for `stage`.

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
    return secure(task, deployment)
