"""Who may read and write what: the Kafka ACLs of a worker principal and of a shop (producer) principal.

A worker reads its inputs and its consumer groups, writes its outputs, and owns the topics named after
its app id (table changelogs, Faust's leader topic). A producer only writes the shop's inputs. Nothing
else is allowed (the broker runs the StandardAuthorizer with ``allow.everyone.if.no.acl.found=false``).
An administrator (a super user) creates the shared topics and applies these bindings
(``apply_acls``); docs/SECURITY.md lists them as a table.
"""

from __future__ import annotations

import time

from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType, AdminClient,
                                   ResourcePatternType, ResourceType)

from streams.kafka_io import client_config
from streams.settings import KafkaSettings, Settings
from streams.topics import Topics


def _topic(name: str, principal: str, op: AclOperation,
           pattern: ResourcePatternType = ResourcePatternType.LITERAL) -> AclBinding:
    return AclBinding(ResourceType.TOPIC, name, pattern, principal, "*", op, AclPermissionType.ALLOW)


def worker_acls(settings: Settings, topics: Topics, principal: str) -> list[AclBinding]:
    """What the worker ``settings.worker_id`` running as ``principal`` (``User:name``) may do."""
    inputs = [topics.ad_requests, topics.ad_feedback, topics.sessions, topics.retention_outcomes,
              topics.erasure_requests, topics.policy_updates]
    outputs = [topics.ad_decisions, topics.retention_actions, topics.dead_letters, topics.worker_stats]
    bindings = [_topic(t.name, principal, AclOperation.READ) for t in inputs]
    bindings += [_topic(t.name, principal, AclOperation.WRITE) for t in outputs]
    own = f"{settings.worker_id}-"  # changelogs <app>-<table>-changelog, leader topic <app>-__assignor-__leader
    bindings += [_topic(own, principal, op, ResourcePatternType.PREFIXED)
                 for op in (AclOperation.CREATE, AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE)]
    bindings.append(AclBinding(ResourceType.GROUP, settings.worker_id, ResourcePatternType.PREFIXED, principal,
                               "*", AclOperation.READ, AclPermissionType.ALLOW))  # the app and its watchers
    bindings += [AclBinding(ResourceType.TRANSACTIONAL_ID, settings.worker_id, ResourcePatternType.PREFIXED,
                            principal, "*", op, AclPermissionType.ALLOW)  # exactly-once output transactions
                 for op in (AclOperation.WRITE, AclOperation.DESCRIBE)]
    return bindings


def producer_acls(topics: Topics, principal: str) -> list[AclBinding]:
    """What the shop's producer may do: write ad requests, ad feedback, sessions and outcomes."""
    return [_topic(t.name, principal, AclOperation.WRITE)
            for t in (topics.ad_requests, topics.ad_feedback, topics.sessions, topics.retention_outcomes)]


def apply_acls(admin_kafka: KafkaSettings, bindings: list[AclBinding], timeout_s: float = 30.0) -> None:
    """Create ``bindings`` as the administrator ``admin_kafka`` (a super user), and wait until the broker
    enforces them (the controller commits them first; the broker's authorizer catches up a moment later)."""
    admin = AdminClient(client_config(admin_kafka))
    for future in admin.create_acls(bindings, request_timeout=timeout_s).values():
        future.result(timeout=timeout_s)
    wanted = {_key(b) for b in bindings}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = admin.describe_acls(AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                                    AclOperation.ANY, AclPermissionType.ANY)).result(timeout_s)
        if wanted <= {_key(b) for b in seen}:
            return
        time.sleep(0.1)
    raise TimeoutError(f"the broker did not report {len(wanted)} new ACLs within {timeout_s:.0f}s")


def _key(b: AclBinding) -> tuple:
    return (b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation, b.permission_type)
