"""Stack files → ServiceSpec and friends: valid stacks, every error with its file:line:key,
warnings for keys a swarm ignores, and depends_on ordering."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pyswarm.manager.stack import StackInvalid, load_stack
from pyswarm.proto import objects_pb2 as pb

from .test_stack_support import errors_of, load, write


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def one_service(tmp_path: Path, body: str, extra: str = "") -> pb.ServiceSpec:
    text = "services:\n  web:\n    image: busybox\n" + "".join(
        f"    {line}\n" for line in body.strip("\n").splitlines()
    ) + extra
    stack = load(tmp_path, text)
    assert len(stack.services) == 1
    return stack.services[0]


Check = Callable[[pb.ServiceSpec], object]
VALID: list[tuple[str, str, Check]] = [
    ("defaults", "", lambda s: (s.name, s.replicated.replicas, s.task.restart.condition,
                                s.task.restart.delay_set, s.endpoint.mode, s.update.parallelism)
     == ("app_web", 1, pb.RESTART_CONDITION_ANY, False, "vip", 1)),
    ("namespace labels", "", lambda s: s.labels["com.docker.stack.namespace"] == "app"
     and s.task.container.labels["com.docker.stack.namespace"] == "app"),
    ("command string is shell-split", 'command: echo "a b" c',
     lambda s: list(s.task.container.args) == ["echo", "a b", "c"] and s.task.container.args_set),
    ("command list as is", 'command: ["sh", "-c", "echo $$HOME"]',
     lambda s: list(s.task.container.args) == ["sh", "-c", "echo $HOME"]),
    ("entrypoint → command", "entrypoint: /bin/sh -c",
     lambda s: list(s.task.container.command) == ["/bin/sh", "-c"]),
    ("empty entrypoint still set", "entrypoint: []",
     lambda s: s.task.container.command_set and not s.task.container.command),
    ("environment list", 'environment: ["A=1", "B=x=y"]',
     lambda s: list(s.task.container.env) == ["A=1", "B=x=y"]),
    ("environment map with numbers and bools", "environment: {A: 1, B: true, C: 0.5}",
     lambda s: list(s.task.container.env) == ["A=1", "B=true", "C=0.5"]),
    ("container labels", "labels: {a: b}", lambda s: s.task.container.labels["a"] == "b"),
    ("service labels", "deploy: {labels: [team=web]}", lambda s: s.labels["team"] == "web"),
    ("replicas", "deploy: {replicas: 3}", lambda s: s.replicated.replicas == 3),
    ("zero replicas", "deploy: {replicas: 0}",
     lambda s: s.WhichOneof("mode") == "replicated" and s.replicated.replicas == 0),
    ("global", "deploy: {mode: global}", lambda s: s.WhichOneof("mode") == "global"),
    ("port short", 'ports: ["8080:80"]', lambda s: [(p.published_port, p.target_port,
                                                      p.protocol) for p in s.endpoint.ports]
     == [(8080, 80, "tcp")]),
    ("port udp", 'ports: ["53:53/udp"]', lambda s: s.endpoint.ports[0].protocol == "udp"),
    ("port target only", 'ports: ["80"]', lambda s: s.endpoint.ports[0].published_port == 0),
    ("port int", "ports: [80]", lambda s: s.endpoint.ports[0].target_port == 80),
    ("port range", 'ports: ["8000-8001:80-81"]', lambda s: [(p.published_port, p.target_port)
                                                           for p in s.endpoint.ports]
     == [(8000, 80), (8001, 81)]),
    ("port long host mode", "ports: [{target: 80, published: 8080, mode: host}]",
     lambda s: s.endpoint.ports[0].publish_mode == pb.PUBLISH_MODE_HOST),
    ("bind mount relative", 'volumes: ["./html:/usr/share/html:ro"]',
     lambda s: s.task.container.mounts[0].type == "bind"
     and s.task.container.mounts[0].source == str(Path.cwd() / "html")
     and s.task.container.mounts[0].read_only),
    ("named volume", 'volumes: ["data:/data"]',
     lambda s: (s.task.container.mounts[0].type, s.task.container.mounts[0].source)
     == ("volume", "app_data")),
    ("tmpfs long", "volumes: [{type: tmpfs, target: /c, tmpfs: {size: 64m}}]",
     lambda s: s.task.container.mounts[0].tmpfs_size_bytes == 64 << 20),
    ("tmpfs service key", "tmpfs: [/run]", lambda s: s.task.container.mounts[0].type == "tmpfs"),
    ("healthcheck string", "healthcheck: {test: curl -f x, interval: 1m30s, timeout: 500ms, "
     "start_period: 1s, retries: 3}",
     lambda s: (list(s.task.container.healthcheck.test), s.task.container.healthcheck.interval_ns,
                s.task.container.healthcheck.timeout_ns, s.task.container.healthcheck.retries)
     == (["CMD-SHELL", "curl -f x"], 90 * 10**9, 5 * 10**8, 3)),
    ("healthcheck list", 'healthcheck: {test: ["CMD", "true"]}',
     lambda s: list(s.task.container.healthcheck.test) == ["CMD", "true"]),
    ("healthcheck disabled", "healthcheck: {disable: true}",
     lambda s: list(s.task.container.healthcheck.test) == ["NONE"]),
    ("user int", "user: 1000", lambda s: s.task.container.user == "1000"),
    ("working_dir, hostname", "working_dir: /srv\nhostname: h",
     lambda s: (s.task.container.dir, s.task.container.hostname) == ("/srv", "h")),
    ("stop", "stop_grace_period: 1m\nstop_signal: SIGINT",
     lambda s: (s.task.container.stop_grace_period_ns, s.task.container.stop_signal)
     == (60 * 10**9, "SIGINT")),
    ("extra_hosts list", 'extra_hosts: ["db:10.0.0.2"]',
     lambda s: list(s.task.container.extra_hosts) == ["db:10.0.0.2"]),
    ("extra_hosts map", "extra_hosts: {db: 10.0.0.2}",
     lambda s: list(s.task.container.extra_hosts) == ["db:10.0.0.2"]),
    ("resources", "deploy: {resources: {limits: {cpus: '0.5', memory: 64M, pids: 10}, "
     "reservations: {cpus: 0.25, memory: 1g}}}",
     lambda s: (s.task.resources.limits.nano_cpus, s.task.resources.limits.memory_bytes,
                s.task.resources.limits.pids, s.task.resources.reservations.nano_cpus,
                s.task.resources.reservations.memory_bytes)
     == (500_000_000, 64 << 20, 10, 250_000_000, 1 << 30)),
    ("restart policy", "deploy: {restart_policy: {condition: on-failure, delay: 0s, "
     "max_attempts: 3, window: 2m}}",
     lambda s: (s.task.restart.condition, s.task.restart.delay_ns, s.task.restart.delay_set,
                s.task.restart.max_attempts, s.task.restart.window_ns)
     == (pb.RESTART_CONDITION_ON_FAILURE, 0, True, 3, 120 * 10**9)),
    ("placement", "deploy: {placement: {constraints: ['node.role==manager', "
     "'node.labels.zone != a', 'engine.labels.x == y'], preferences: [{spread: "
     "node.labels.zone}], max_replicas_per_node: 2}}",
     lambda s: (list(s.task.placement.constraints), s.task.placement.preferences[0].spread,
                s.task.placement.max_replicas)
     == (["node.role==manager", "node.labels.zone != a", "engine.labels.x == y"],
         "node.labels.zone", 2)),
    ("update and rollback", "deploy: {update_config: {parallelism: 2, delay: 10s, "
     "failure_action: rollback, monitor: 30s, max_failure_ratio: 0.1, order: start-first}, "
     "rollback_config: {parallelism: 0}}",
     lambda s: (s.update.parallelism, s.update.delay_ns, s.update.failure_action,
                s.update.monitor_ns, s.update.max_failure_ratio, s.update.order,
                s.rollback.parallelism)
     == (2, 10**10, "rollback", 3 * 10**10, 0.1, "start-first", 0)),
    ("dnsrr", "deploy: {endpoint_mode: dnsrr}", lambda s: s.endpoint.mode == "dnsrr"),
    ("networks with aliases", "networks: {front: {aliases: [www]}}",
     lambda s: (s.task.networks[0].target, list(s.task.networks[0].aliases))
     == ("app_front", ["www"])),
    ("external network", "networks: [outside]",
     lambda s: s.task.networks[0].target == "outside"),
    ("default network", "", lambda s: s.task.networks[0].target == "app_default"),
    ("secrets short and long", "secrets: [pw, {source: pw, target: other, uid: '1', "
     "gid: '2', mode: 0400}]",
     lambda s: [(r.name, r.target, r.uid, r.gid, r.mode) for r in s.task.container.secrets]
     == [("app_pw", "pw", 0, 0, 0o444), ("app_pw", "other", 1, 2, 0o400)]),
    ("config default target", "configs: [conf]",
     lambda s: (s.task.container.configs[0].name, s.task.container.configs[0].target)
     == ("app_conf", "/conf")),
    ("secret mode 0o form", "secrets: [{source: pw, mode: 0o440}]",
     lambda s: s.task.container.secrets[0].mode == 0o440),
]
TOP = """networks:
  front:
  outside: {external: true}
volumes:
  data:
secrets:
  pw: {file: pw.txt}
configs:
  conf: {content: "x"}
"""


@pytest.mark.parametrize(("body", "check"), [(b, c) for _, b, c in VALID],
                         ids=[i for i, _, _ in VALID])
def test_valid_service(tmp_path: Path, body: str, check: Check) -> None:
    (tmp_path / "pw.txt").write_text("s3cret")
    assert check(one_service(tmp_path, body, TOP))


def test_top_level_objects(tmp_path: Path) -> None:
    (tmp_path / "pw.txt").write_text("s3cret")
    stack = load(tmp_path, """
        services:
          web: {image: busybox, networks: [front, outside], secrets: [pw, ext], configs: [conf]}
          api: {image: busybox}
        networks:
          front: {attachable: true, internal: true, labels: {a: b},
                  ipam: {config: [{subnet: 10.9.0.0/24}]}}
          unused:
          outside: {external: true}
          named: {name: fixed}
        secrets:
          pw: {file: ./pw.txt, labels: [x=y]}
          ext: {external: true}
          env: {environment: TOKEN}
        configs:
          conf: {file: pw.txt, name: my-conf}
        """, env={"TOKEN": "t0k"})
    assert [(n.name, n.driver, n.attachable, n.internal, n.subnet, n.labels.get("a"))
            for n in stack.networks] == [
        ("app_front", "overlay", True, True, "10.9.0.0/24", "b"),
        ("app_default", "overlay", False, False, "", None),
    ]
    assert all(n.labels["com.docker.stack.namespace"] == "app" for n in stack.networks)
    assert [(s.name, s.data, s.labels.get("x")) for s in stack.secrets] == [
        ("app_pw", b"s3cret", "y"), ("app_env", b"t0k", None)]
    assert [(c.name, c.data) for c in stack.configs] == [("my-conf", b"s3cret")]
    assert [r.name for r in stack.services[0].task.container.secrets] == ["app_pw", "ext"]
    assert stack.services[0].task.container.configs[0].name == "my-conf"


def test_env_file_relative_to_the_stack_file(tmp_path: Path) -> None:
    write(tmp_path, "sub/web.env", "# comment\nA=1\nexport B='two words'\nC\nD=\"x\\ny\"\n")
    write(tmp_path, "sub/stack.yml", """
        services:
          web:
            image: busybox
            env_file: web.env
            environment: {A: override}
        """)
    stack = load_stack([Path("sub/stack.yml")], "app", {"C": "from-env"})
    assert list(stack.services[0].task.container.env) == [
        "A=override", "B=two words", "C=from-env", "D=x\ny"]


def test_environment_key_alone_takes_the_environment(tmp_path: Path) -> None:
    spec = load(tmp_path, """
        services:
          web: {image: busybox, environment: [HOME, UNSET, X=1]}
        """, env={"HOME": "/root"}).services[0]
    assert list(spec.task.container.env) == ["HOME=/root", "X=1"]


def test_depends_on_orders_services(tmp_path: Path) -> None:
    stack = load(tmp_path, """
        services:
          web: {image: a, depends_on: [api, cache]}
          api: {image: a, depends_on: {db: {condition: service_healthy}}}
          cache: {image: a}
          db: {image: a}
        """)
    assert [s.name for s in stack.services] == ["app_db", "app_api", "app_cache", "app_web"]
    assert list(stack.services[-1].depends_on) == ["app_api", "app_cache"]


ERRORS: list[tuple[str, str, list[str]]] = [
    ("replicas word", "services:\n  web:\n    image: a\n    deploy:\n      replicas: three\n",
     ['stack.yml:5: services.web.deploy.replicas: must be a non-negative integer, got "three"']),
    ("negative replicas", "services:\n  web: {image: a, deploy: {replicas: -1}}\n",
     ["stack.yml:2: services.web.deploy.replicas: must be a non-negative integer, got -1"]),
    ("global with replicas", "services:\n  web:\n    image: a\n    deploy:\n      mode: global\n"
     "      replicas: 2\n",
     ["stack.yml:6: services.web.deploy.replicas: cannot be set with mode: global"]),
    ("missing image", "services:\n  web:\n    command: x\n",
     ["stack.yml:2: services.web: image is required in swarm mode"]),
    ("unknown service key", "services:\n  web:\n    image: a\n    imagee: b\n",
     ['stack.yml:4: services.web.imagee: unknown key (did you mean "image"?)']),
    ("unknown top-level key", "services:\n  web: {image: a}\nservice: {}\n",
     ['stack.yml:3: service: unknown key (did you mean "services"?)']),
    ("no services", "version: '3'\n", ["stack.yml:1: services: a stack needs at least one "
                                       "service"]),
    ("empty file", "", ["stack.yml:1: a stack file is a mapping of services, networks... "
                        "(this one is empty)"]),
    ("not a mapping", "- a\n", ["stack.yml:1: a stack file is a mapping of services, "
                                "networks... (this one is not a mapping)"]),
    ("duplicate key", "services:\n  web: {image: a}\n  web: {image: b}\n",
     ['stack.yml:3: duplicate key "web" (first defined on line 2)']),
    ("bad duration", "services:\n  web:\n    image: a\n    stop_grace_period: 30\n",
     ['stack.yml:4: services.web.stop_grace_period: must be a duration like "30s", "1m30s" '
      'or "500ms", got 30']),
    ("bad size", "services:\n  web:\n    image: a\n    deploy: {resources: {limits: "
     "{memory: lots}}}\n",
     ['stack.yml:4: services.web.deploy.resources.limits.memory: must be a size like "64m", '
      '"1.5g" or a number of bytes, got "lots"']),
    ("bad cpus", "services:\n  web:\n    image: a\n    deploy: {resources: {limits: "
     "{cpus: half}}}\n",
     ['stack.yml:4: services.web.deploy.resources.limits.cpus: must be a number of CPUs like '
      '"0.5", got "half"']),
    ("bad restart condition", "services:\n  web:\n    image: a\n    deploy:\n"
     "      restart_policy: {condition: always}\n",
     ['stack.yml:5: services.web.deploy.restart_policy.condition: must be any, on-failure or '
      'none, got "always"']),
    ("bad constraint", "services:\n  web:\n    image: a\n    deploy:\n      placement:\n"
     "        constraints:\n          - node.role = manager\n          - node.colour == red\n",
     ['stack.yml:7: services.web.deploy.placement.constraints[0]: must be "<attribute> == '
      '<value>" or "<attribute> != <value>", got "node.role = manager"',
      'stack.yml:8: services.web.deploy.placement.constraints[1]: unknown attribute '
      '"node.colour" (expected one of node.id, node.hostname, node.role, node.platform.os, '
      'node.platform.arch, node.labels.<key>, engine.labels.<key>)']),
    ("bad port", "services:\n  web:\n    image: a\n    ports: ['80:http']\n",
     ['stack.yml:4: services.web.ports[0]: must be a port like "8080:80", "8080:80/udp" or '
      '"80", got "80:http"']),
    ("port twice", "services:\n  web:\n    image: a\n    ports:\n      - 80:80\n      - 80:81\n",
     ["stack.yml:6: services.web.ports[1]: port 80/tcp is published twice (first at line 5)"]),
    ("range mismatch", "services:\n  web: {image: a, ports: ['8000-8002:80-81']}\n",
     ["stack.yml:2: services.web.ports[0]: published range 8000-8002 and target range 80-81 "
      "differ in length"]),
    ("undeclared volume", "services:\n  web:\n    image: a\n    volumes: [data:/d]\n",
     ['stack.yml:4: services.web.volumes[0]: volume "data" is not declared in the top-level '
      'volumes']),
    ("relative target", "services:\n  web:\n    image: a\n    volumes: [./x:d]\n",
     ['stack.yml:4: services.web.volumes[0]: the target must be an absolute path, got "d"']),
    ("undeclared network", "services:\n  web:\n    image: a\n    networks: [front]\n",
     ['stack.yml:4: services.web.networks[0]: network "front" is not declared in the '
      'top-level networks']),
    ("undeclared secret", "services:\n  web:\n    image: a\n    secrets: [pw]\n",
     ['stack.yml:4: services.web.secrets[0]: secret "pw" is not declared in the top-level '
      'secrets']),
    ("secret file missing", "services:\n  web: {image: a}\nsecrets:\n  pw:\n"
     "    file: nope.txt\n",
     ["stack.yml:5: secrets.pw.file: cannot read {cwd}/nope.txt: No such file or directory"]),
    ("secret without source", "services:\n  web: {image: a}\nsecrets:\n  pw: {labels: {}}\n",
     ['stack.yml:4: secrets.pw: needs exactly one of "file", "environment" (or external: '
      'true)']),
    ("unknown dependency", "services:\n  web:\n    image: a\n    depends_on: [db]\n",
     ['stack.yml:4: services.web.depends_on[0]: depends on "db", which is not a service of '
      'this stack']),
    ("dependency cycle", "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n"
     "    image: x\n    depends_on: [a]\n",
     ["stack.yml:4: services.a.depends_on: dependency cycle: a -> b -> a"]),
    ("bad healthcheck", "services:\n  web:\n    image: a\n    healthcheck:\n"
     "      test: [curl, x]\n      retries: many\n",
     ['stack.yml:5: services.web.healthcheck.test: a test list starts with "CMD", '
      '"CMD-SHELL" or "NONE", got "curl"',
      'stack.yml:6: services.web.healthcheck.retries: must be an integer from 0 to '
      '2147483647, got "many"']),
    ("dnsrr with ingress", "services:\n  web:\n    image: a\n    ports: ['80:80']\n"
     "    deploy: {endpoint_mode: dnsrr}\n",
     ["stack.yml:4: services.web.ports: ingress-published ports need endpoint_mode: vip (or "
      "mode: host ports)"]),
    ("wrong type", "services:\n  web:\n    image: a\n    environment: 3\n",
     ["stack.yml:4: services.web.environment: must be a mapping or a list, got 3"]),
    ("bad network driver", "services:\n  web: {image: a, networks: [n]}\nnetworks:\n"
     "  n: {driver: bridge}\n",
     ['stack.yml:4: networks.n.driver: only the overlay driver spans a swarm, got "bridge"']),
    ("external conflicts", "services:\n  web: {image: a, networks: [n]}\nnetworks:\n"
     "  n:\n    external: true\n    driver: overlay\n",
     ['stack.yml:6: networks.n.driver: conflicts with "external: true"']),
    ("several errors at once", "services:\n  web:\n    deploy: {replicas: x}\n  api:\n"
     "    image: a\n    bogus: 1\n",
     ["stack.yml:2: services.web: image is required in swarm mode",
      'stack.yml:3: services.web.deploy.replicas: must be a non-negative integer, got "x"',
      "stack.yml:6: services.api.bogus: unknown key"]),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in ERRORS],
                         ids=[i for i, _, _ in ERRORS])
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, expected: list[str]) -> None:
    got = errors_of(tmp_path, text)
    assert got == [e.replace("{cwd}", str(tmp_path)) for e in expected]


def test_stack_invalid_is_all_errors_one_per_line(tmp_path: Path) -> None:
    with pytest.raises(StackInvalid) as info:
        load(tmp_path, "services:\n  a: {}\n  b: {}\n")
    assert str(info.value) == (
        "stack.yml:2: services.a: image is required in swarm mode\n"
        "stack.yml:3: services.b: image is required in swarm mode"
    )


def test_invalid_stack_name(tmp_path: Path) -> None:
    from pyswarm.common.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="invalid stack name"):
        load(tmp_path, "services:\n  a: {image: x}\n", name="bad name")


def test_swarm_ignored_keys_warn_with_line(tmp_path: Path) -> None:
    stack = load(tmp_path, """
        services:
          web:
            image: a
            build: .
            container_name: web
            restart: always
            privileged: true
            links: [db]
            ports: ["127.0.0.1:80:80"]
        """)
    assert stack.warnings == [
        "stack.yml:4: services.web.build: ignored in swarm mode; build the image first and "
        "use image:",
        "stack.yml:5: services.web.container_name: ignored in swarm mode; swarm names each task "
        "itself",
        "stack.yml:6: services.web.restart: ignored in swarm mode; use deploy.restart_policy",
        "stack.yml:7: services.web.privileged: ignored in swarm mode",
        "stack.yml:8: services.web.links: ignored in swarm mode; services on the same network "
        "reach each other by name",
        "stack.yml:9: services.web.ports[0]: host IP 127.0.0.1 ignored: swarm publishes ports "
        "on every address",
    ]
