"""The role each RPC needs: one table, read by the servers' interceptor
(services/common/server.py) and printed in docs/security.md. A method missing
here is refused to everyone (and tests/mtserve_api/test_roles.py fails), so a
new RPC cannot ship open by accident.

`client`: what backends and batch workers call (classify, read tasks, routes,
the truncation policy, what a replica serves). `operator`: also what ops
engineers and inference replicas read (checkpoints, route history, the
registry's Watch stream, training jobs). `admin`: every write (tasks,
checkpoints, routes, training jobs). Health answers everyone: orchestrators
probe it without credentials.
"""

from __future__ import annotations

from mtserve.auth import Role

PUBLIC_PREFIX = "/grpc.health.v1.Health/"

ROLE_OF: dict[str, Role] = {
    # inference
    "/mtserve.v1.Inference/Classify": Role.CLIENT,
    "/mtserve.v1.Inference/ClassifyMany": Role.CLIENT,
    "/mtserve.v1.Inference/Generate": Role.CLIENT,
    "/mtserve.v1.Inference/ModelInfo": Role.CLIENT,
    # registry: reads
    "/mtserve.v1.Registry/GetTask": Role.CLIENT,
    "/mtserve.v1.Registry/ListTasks": Role.CLIENT,
    "/mtserve.v1.Registry/GetTruncationPolicy": Role.CLIENT,
    "/mtserve.v1.Registry/GetRoutes": Role.CLIENT,
    "/mtserve.v1.Registry/GetCheckpoint": Role.OPERATOR,
    "/mtserve.v1.Registry/ListCheckpoints": Role.OPERATOR,
    "/mtserve.v1.Registry/GetRouteHistory": Role.OPERATOR,
    "/mtserve.v1.Registry/GetAuditLog": Role.OPERATOR,
    "/mtserve.v1.Registry/Watch": Role.OPERATOR,
    # registry: writes
    "/mtserve.v1.Registry/RegisterTask": Role.ADMIN,
    "/mtserve.v1.Registry/ApplyCatalogue": Role.ADMIN,
    "/mtserve.v1.Registry/RetireTask": Role.ADMIN,
    "/mtserve.v1.Registry/RegisterCheckpoint": Role.ADMIN,
    "/mtserve.v1.Registry/SetRoute": Role.ADMIN,
    "/mtserve.v1.Registry/SetRoutes": Role.ADMIN,
    "/mtserve.v1.Registry/RollbackRoute": Role.ADMIN,
    # trainer
    "/mtserve.v1.Trainer/GetJob": Role.OPERATOR,
    "/mtserve.v1.Trainer/ListJobs": Role.OPERATOR,
    "/mtserve.v1.Trainer/WatchJob": Role.OPERATOR,
    "/mtserve.v1.Trainer/StartJob": Role.ADMIN,
    "/mtserve.v1.Trainer/CancelJob": Role.ADMIN,
    "/mtserve.v1.Trainer/ResumeJob": Role.ADMIN,
    # reflection: the API's shape, to anyone with a token
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Role.CLIENT,
}


def is_public(method: str) -> bool:
    """Health: answered without a token."""
    return method.startswith(PUBLIC_PREFIX)


def allows(method: str, role: Role) -> bool:
    """May a token of `role` call `method` (a full gRPC method name)? A
    method missing from the table is allowed to no one."""
    need = ROLE_OF.get(method)
    return need is not None and role >= need
