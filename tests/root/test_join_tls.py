"""Secure joins end to end: real daemons on this machine, a manager serving its TLS port on
127.0.0.1, nodes joining it with tokens, and clients holding the wrong certificates.

The daemons share the host's network namespace, so each manager listens on a free loopback
port of its own and every node advertises 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from pyswarm.common import pki
from pyswarm.proto import cluster_pb2 as cpb
from pyswarm.proto import cluster_pb2_grpc as cpb_grpc
from tests.engine_fixtures import Daemon, build_base_image, cleanup, engine_env, router_pids
from tests.etcd_fixtures import etcd_server  # noqa: F401  (a real etcd for the etcd store)
from tests.root.test_cluster import SLEEPER, tasks, wait_for, write_stack

pytestmark = pytest.mark.root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Swarm:
    manager: Daemon
    worker: Daemon
    addr: str  # 127.0.0.1:PORT

    def nodes(self) -> dict[str, dict[str, object]]:
        return {str(n["hostname"]): n
                for n in self.manager.json_lines("node", "ls", "--format", "json")}


def new_daemon(tmp_path_factory: pytest.TempPathFactory, index: int, name: str) -> Daemon:
    base = tmp_path_factory.mktemp(name)
    return Daemon(base, dict(engine_env(base, index=index), PYSWARM_NODE_NAME=name))


def joined_nothing(d: Daemon) -> bool:
    return not (d.root / "join.json").exists() and not (d.root / "certificates").exists()


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    manager = new_daemon(tmp_path_factory, 4, "tls-mgr")
    worker = new_daemon(tmp_path_factory, 5, "tls-w1")
    addr = f"127.0.0.1:{free_port()}"
    try:
        manager.start()
        worker.start()
        build_base_image(worker)  # the test's task runs there (images are not distributed)
        out = manager.cli("init", "--advertise-addr", "127.0.0.1", "--listen-addr", addr)
        assert "pyswarm join --token PSWMTKN-1-" in out.stdout and addr in out.stdout
        token = manager.cli("join-token", "-q", "worker").stdout.strip()
        out = worker.cli("join", "--token", token, "--advertise-addr", "127.0.0.1", addr)
        assert "This node joined a swarm as a worker." in out.stdout
        s = Swarm(manager, worker, addr)
        wait_for("the worker ready", lambda: s.nodes().get("tls-w1", {}).get("status") == "ready")
        yield s
    finally:
        cleanup(worker)
        cleanup(manager)


@pytest.fixture(scope="module")
def outsider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A third daemon for the joins that must fail (and, last, one that succeeds)."""
    d = new_daemon(tmp_path_factory, 6, "tls-x")
    try:
        d.start()
        yield d
    finally:
        cleanup(d)


# ---- a good join ---------------------------------------------------------------------------


def test_joined_worker_is_ready_with_its_address_and_runs_a_task(swarm: Swarm,
                                                                 tmp_path: Path) -> None:
    node = swarm.nodes()["tls-w1"]
    assert (node["role"], node["status"], node["address"]) == ("worker", "ready", "127.0.0.1")
    certs = swarm.worker.root / "certificates"
    assert stat.S_IMODE((certs / "node.key").stat().st_mode) == 0o600
    identity = pki.verify_node_cert((certs / "node.crt").read_bytes(),
                                    (certs / "root_ca.crt").read_bytes())
    assert (identity.node_id, identity.role) == (node["id"], "worker")
    assert json.loads((swarm.worker.root / "join.json").read_text())["manager_addr"] == swarm.addr
    out = swarm.worker.cli("node", "ls", check=False)
    assert out.returncode != 0 and "Worker nodes can't be used" in out.stderr

    stack = write_stack(tmp_path / "tls", SLEEPER.format(replicas=1).replace(
        "      replicas: 1", "      replicas: 1\n      placement:\n"
        "        constraints: [\"node.role == worker\"]"))
    swarm.manager.cli("deploy", "-c", str(stack), "--name", "tls", "--timeout", "90")
    try:
        (task,) = [t for t in tasks(swarm.manager, "tls_app") if t["desired_state"] == "running"]
        assert (task["node"], task["state"]) == ("tls-w1", "running")
        assert [c for c in swarm.worker.json_lines("ps", "--format", "json")
                if c["name"].startswith("tls_app.1.")]
    finally:
        swarm.manager.cli("stack", "rm", "tls")


def test_a_restarted_worker_resumes_its_session_from_its_files(swarm: Swarm) -> None:
    swarm.worker.kill()
    wait_for("the worker down", lambda: swarm.nodes()["tls-w1"]["status"] == "down")
    swarm.worker.start()
    wait_for("the worker ready again", lambda: swarm.nodes()["tls-w1"]["status"] == "ready")
    assert len(swarm.nodes()) == 2  # the same node, not a new one


def test_join_token_prints_docker_s_instructions(swarm: Swarm) -> None:
    token = swarm.manager.cli("join-token", "-q", "manager").stdout.strip()
    assert pki.parse_token(token)
    out = swarm.manager.cli("join-token", "manager").stdout
    assert out.startswith("To add a manager to this swarm, run the following command:\n\n")
    assert f"    pyswarm join --token {token} {swarm.addr}\n" in out


# ---- joins that must fail, leaving nothing behind ------------------------------------------


def test_bad_tokens_are_refused_clearly_and_leave_nothing(swarm: Swarm, outsider: Daemon) -> None:
    good = pki.parse_token(swarm.manager.cli("join-token", "-q", "worker").stdout)
    wrong_secret = str(pki.JoinToken(good.digest, "0" * 25))
    other_cluster = pki.new_token(pki.RootCA.create().cert_pem)
    manager_token = swarm.manager.cli("join-token", "-q", "manager").stdout.strip()
    cases = [
        (wrong_secret, "not valid for this swarm"),
        (other_cluster, "the manager's root CA does not match the token"),
        ("PSWMTKN-1-nonsense", "invalid join token"),
        (manager_token, "store is sqlite"),
    ]
    for token, message in cases:
        out = outsider.cli("join", "--token", token, "--advertise-addr", "127.0.0.1",
                           swarm.addr, check=False)
        assert out.returncode != 0 and message in out.stderr, (token, out.stderr)
        assert joined_nothing(outsider)
    unreachable = outsider.cli("join", "--token", str(good), f"127.0.0.1:{free_port()}",
                               check=False)
    assert unreachable.returncode != 0 and "cannot reach the manager" in unreachable.stderr
    assert joined_nothing(outsider)
    assert set(swarm.nodes()) == {"tls-mgr", "tls-w1"}


def test_a_rotated_out_token_is_refused_and_the_new_one_admits(swarm: Swarm,
                                                              outsider: Daemon) -> None:
    old = swarm.manager.cli("join-token", "-q", "worker").stdout.strip()
    out = swarm.manager.cli("join-token", "--rotate", "worker").stdout
    assert out.startswith("Successfully rotated worker join token.")
    new = swarm.manager.cli("join-token", "-q", "worker").stdout.strip()
    assert new != old and new in out
    refused = outsider.cli("join", "--token", old, swarm.addr, check=False)
    assert refused.returncode != 0 and "rotated out" in refused.stderr
    assert joined_nothing(outsider)
    outsider.cli("join", "--token", new, "--advertise-addr", "127.0.0.1", swarm.addr)
    wait_for("the new node ready", lambda: swarm.nodes().get("tls-x", {}).get("status")
             == "ready")


# ---- certificates that must not work -------------------------------------------------------


def channel(swarm: Swarm, key: bytes | None, cert: bytes | None,
            name: str = "swarm-manager") -> grpc.Channel:
    ca = (swarm.manager.root / "certificates" / "root_ca.crt").read_bytes()
    creds = grpc.ssl_channel_credentials(ca, key, cert)
    return grpc.secure_channel(swarm.addr, creds, options=[("grpc.ssl_target_name_override",
                                                            name)])


def test_a_certificate_from_another_ca_fails_the_handshake(swarm: Swarm) -> None:
    node_id = (swarm.worker.root / "node_id").read_text()
    key = pki.new_key()
    forged = pki.RootCA.create().sign_node(pki.make_csr(key), node_id, "manager", "x")
    for k, c in ((pki.key_pem(key), forged), (None, None)):
        with channel(swarm, k, c) as ch, pytest.raises(grpc.RpcError) as caught:
            cpb_grpc.ControlStub(ch).ListNodes(cpb.ListNodesRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # Without a certificate, only the join port's NodeCA answers; Control is refused there.
    with channel(swarm, None, None, "swarm-ca") as ch, pytest.raises(grpc.RpcError) as caught:
        cpb_grpc.ControlStub(ch).ListNodes(cpb.ListNodesRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_worker_certificate_cannot_call_control_nor_act_for_another_node(swarm: Swarm) -> None:
    certs = swarm.worker.root / "certificates"
    key, cert = (certs / "node.key").read_bytes(), (certs / "node.crt").read_bytes()
    node_id = (swarm.worker.root / "node_id").read_text()
    with channel(swarm, key, cert) as ch:
        control = cpb_grpc.ControlStub(ch)
        for call, request in ((control.ListNodes, cpb.ListNodesRequest()),
                              (control.DeployStack, cpb.DeployStackRequest(name="evil"))):
            with pytest.raises(grpc.RpcError) as caught:
                call(request, timeout=10)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert caught.value.details() == ("a worker node's certificate cannot call the "
                                              "control API")
        # A session is checked at the message that opens it (tests/unit/test_pki_authz.py).
        with pytest.raises(grpc.RpcError) as caught:
            list(cpb_grpc.DispatcherStub(ch).Session(iter([cpb.SessionUp(
                open=cpb.SessionRequest(node_id="someone-else"))]), timeout=10))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    log = swarm.manager.log_path.read_text()
    assert (f"refused Control/ListNodes from node {node_id} (worker): a worker node's "
            f"certificate cannot call the control API") in log
    assert (f"refused Dispatcher/Session from node {node_id} (worker): node {node_id} "
            f"cannot act for node someone-else") in log


# ---- node rm / promote / demote ------------------------------------------------------------


def test_promote_with_a_sqlite_store_is_refused(swarm: Swarm) -> None:
    out = swarm.manager.cli("node", "promote", "tls-w1", check=False)
    assert out.returncode != 0 and "store is sqlite" in out.stderr
    assert "--store etcd://" in out.stderr
    assert swarm.nodes()["tls-w1"]["role"] == "worker"
    out = swarm.manager.cli("node", "demote", "tls-mgr", check=False)
    assert out.returncode != 0 and "last manager" in out.stderr
    assert swarm.manager.cli("node", "demote", "tls-w1").stdout == (
        "Node tls-w1 is already a worker.\n")


def test_node_rm_refuses_a_live_node_without_force_and_a_removed_node_is_shut_out(
        swarm: Swarm, outsider: Daemon) -> None:
    if "tls-x" not in swarm.nodes():
        pytest.skip("needs the node joined by the rotation test")
    out = swarm.manager.cli("node", "rm", "tls-x", check=False)
    assert out.returncode != 0 and "is not down" in out.stderr and "--force" in out.stderr
    out = swarm.manager.cli("node", "rm", "tls-mgr", check=False)
    assert out.returncode != 0
    assert swarm.manager.cli("node", "rm", "--force", "tls-x").stdout.strip() == "tls-x"
    assert "tls-x" not in swarm.nodes()
    wait_for("the removed node's agent told", lambda: "has been removed from the swarm"
             in outsider.log())
    # Its agent keeps knocking; it is refused each time and never registered again.
    wait_for("another refusal", lambda: outsider.log().count("has been removed") >= 2)
    assert "tls-x" not in swarm.nodes()


# ---- a manager token with an etcd store ----------------------------------------------------


def test_with_an_etcd_store_a_manager_token_registers_a_manager(
        etcd_server: Any, tmp_path_factory: pytest.TempPathFactory,  # noqa: F811
) -> None:
    manager = new_daemon(tmp_path_factory, 7, "tls-etcd-m")
    second = new_daemon(tmp_path_factory, 8, "tls-etcd-2")
    addr = f"127.0.0.1:{free_port()}"
    try:
        manager.start()
        second.start()
        manager.cli("init", "--store", f"etcd://{etcd_server.endpoint}/tls-{free_port()}/",
                    "--advertise-addr", "127.0.0.1", "--listen-addr", addr)
        token = manager.cli("join-token", "-q", "manager").stdout.strip()
        # a manager serves a TLS port of its own: not 2377, which the machine may hold
        out = second.cli("join", "--token", token, "--advertise-addr", "127.0.0.1",
                         "--listen-addr", f"127.0.0.1:{free_port()}", addr)
        assert out.stdout.startswith("This node joined a swarm as a manager.")
        assert "it runs tasks as a worker does" in out.stdout

        def second_node() -> dict[str, Any] | None:
            for n in manager.json_lines("node", "ls", "--format", "json"):
                if n["hostname"] == "tls-etcd-2" and n["status"] == "ready":
                    return n
            return None

        node = wait_for("the second manager ready", second_node)
        assert node["role"] == "manager"
        identity = pki.identity_of((second.root / "certificates" / "node.crt").read_bytes())
        assert identity.role == "manager"
        # Two managers: the joined one can be demoted (the one serving requests cannot).
        assert manager.cli("node", "demote", "tls-etcd-2").stdout == (
            "Manager tls-etcd-2 demoted in the swarm.\n")
        assert manager.cli("node", "promote", "tls-etcd-2").stdout == (
            "Node tls-etcd-2 promoted to a manager in the swarm.\n")
    finally:
        cleanup(second)
        cleanup(manager)


# ---- the port's router process -------------------------------------------------------------


def test_a_port_in_use_is_a_clear_error_and_starts_nothing(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    d = new_daemon(tmp_path_factory, 7, "tls-busy")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            d.start()
            out = d.cli("init", "--advertise-addr", "127.0.0.1", "--listen-addr",
                        f"127.0.0.1:{port}", check=False)
            assert out.returncode != 0
            assert (f"cannot listen on 127.0.0.1:{port}: Address already in use"
                    in out.stderr), out.stderr
            assert router_pids(d.proc.pid) == []
            # Nothing was half-applied: the same node inits on a free port.
            d.cli("init", "--advertise-addr", "127.0.0.1", "--listen-addr",
                  f"127.0.0.1:{free_port()}")
            assert len(router_pids(d.proc.pid)) == 1
        finally:
            cleanup(d)


def test_the_router_goes_when_its_daemon_is_killed(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    import os
    import signal
    import time

    d = new_daemon(tmp_path_factory, 8, "tls-kill")
    port = free_port()
    try:
        d.start()
        d.cli("init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{port}")
        routers = router_pids(d.proc.pid)
        assert len(routers) == 1
        assert d.proc is not None
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{routers[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        # No orphan holds the manager's port: a restarted daemon can serve it again.
        assert not Path(f"/proc/{routers[0]}").exists()
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    finally:
        cleanup(d)
