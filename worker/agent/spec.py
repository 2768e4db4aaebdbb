"""From a task to the container request the engine runs: Docker Swarm's conventions.

Container name `<service>.<slot>.<task id>` (global: `<service>.<node id>.<task id>`), the
com.docker.swarm.* labels, and the templates Swarm expands in hostname, env and mounts:
{{.Service.Name}}, {{.Service.ID}}, {{.Task.Name}}, {{.Task.ID}}, {{.Task.Slot}},
{{.Node.ID}}, {{.Node.Hostname}}.

Networks: the task's overlay attachments (``Task.networks``, allocated by the manager)
become the container's eth1, eth2... in that order. Each network must be on this node
already (``missing_networks``): the controller waits for it, since the manager's
NetworkState may arrive just after the task, and rejects the task if it does not come.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from pyswarm.proto import engine_pb2 as epb
from pyswarm.proto import objects_pb2 as opb

TASK_LABEL = "com.docker.swarm.task.id"
SERVICE_LABEL = "com.docker.swarm.service.id"
_TEMPLATE = re.compile(r"\{\{\s*\.(\w+)\.(\w+)\s*\}\}")


def task_name(task: opb.Task) -> str:
    return f"{task.service_name}.{task.slot or task.node_id}.{task.id}"


def expand(text: str, task: opb.Task, hostname: str) -> str:
    values = {
        ("Service", "Name"): task.service_name, ("Service", "ID"): task.service_id,
        ("Task", "Name"): task_name(task), ("Task", "ID"): task.id,
        ("Task", "Slot"): str(task.slot), ("Node", "ID"): task.node_id,
        ("Node", "Hostname"): hostname,
    }
    return _TEMPLATE.sub(lambda m: values.get((m.group(1), m.group(2)), m.group(0)), text)


def missing_networks(task: opb.Task, node_networks: Collection[str]) -> list[str]:
    """Ids of the task's networks that this node does not have (yet)."""
    return [n.network_id for n in task.networks if n.network_id not in node_networks]


def overlays(task: opb.Task) -> list[epb.OverlayAttachment]:
    """One attachment per network of the task, in ``Task.networks`` order."""
    return [epb.OverlayAttachment(network_id=n.network_id, address=n.addresses[0])
            for n in task.networks if n.addresses]


def container_request(task: opb.Task, node_hostname: str, dns: Sequence[str] = ()
                      ) -> epb.CreateContainerRequest:
    """``dns``: the node's service DNS, when it serves (the container's nameserver)."""
    c = task.spec.container
    limits = task.spec.resources.limits

    def x(text: str) -> str:
        return expand(text, task, node_hostname)

    volumes, tmpfs = [], []
    for m in c.mounts:
        suffix = ":ro" if m.read_only else ""
        if m.type == "tmpfs":
            size = f":size={m.tmpfs_size_bytes}" if m.tmpfs_size_bytes else ""
            tmpfs.append(f"{m.target}{size}")
        else:
            volumes.append(f"{x(m.source)}:{m.target}{suffix}" if m.source else m.target)
    labels = dict(c.labels)
    labels.update({
        TASK_LABEL: task.id, SERVICE_LABEL: task.service_id,
        "com.docker.swarm.service.name": task.service_name,
        "com.docker.swarm.node.id": task.node_id,
        "com.docker.swarm.task.name": task_name(task),
    })
    # Host-mode ports publish on this node only, straight to this task's container.
    publish = [f"{p.published_port}:{p.target_port}/{p.protocol or 'tcp'}"
               for p in (task.endpoint.ports or task.endpoint.spec.ports)
               if p.publish_mode == opb.PUBLISH_MODE_HOST and p.published_port]
    return epb.CreateContainerRequest(
        image=c.image, name=task_name(task), cmd=list(c.args),
        entrypoint=list(c.command), entrypoint_set=bool(c.command) or c.command_set,
        env=[x(e) for e in c.env], workdir=c.dir, user=c.user,
        hostname=x(c.hostname), volumes=volumes, tmpfs=tmpfs,
        memory_bytes=limits.memory_bytes, cpus=limits.nano_cpus / 1e9,
        pids_limit=limits.pids, network="bridge", labels=labels,
        stop_signal=c.stop_signal, publish=publish, overlays=overlays(task), dns=list(dns),
        extra_hosts=list(c.extra_hosts),
    )
