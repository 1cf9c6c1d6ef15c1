"""``zcall launch --export kubernetes``: manifests validated against the Kubernetes schemas
(kubernetes-validate), and the exported peers' commands run as local processes with the environment
the manifests give them, probed with their own readiness probe, and called."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
import zmq.auth

import zcall
from helpers.cli_support import TESTS_DIR, zcall_cli
from zcall.security import ClientSecurity
from zcall.testing import free_tcp_endpoint, stop_all
from zcall.tools.launch.kubernetes import CURVE_DIR
from zcall.tools.process import ProcessHandle, start

K8S_VERSION = "1.30"

TOPOLOGY = """
[launch]
cwd = "{tests}"
pythonpath = ["{tests}"]
stop_timeout = 3.0

[[peer]]
name = "calc"
target = "helpers.mesh_services:calc"
restart = "on-failure"
curve_secret = "{keys}/calc.key_secret"
allow_keys = "{keys}"

[[peer]]
name = "gateway"
target = "helpers.mesh_services:gateway"
peers = ["calc"]
restart = "always"
sync_bind = "tcp://127.0.0.1:*"
curve_secret = "{keys}/gateway.key_secret"
allow_keys = "{keys}"

[[peer]]
name = "store"
target = "helpers.mesh_services:store"
restart = "no"
env = {{ STORE_MODE = "memory" }}
"""


@pytest.fixture
def topology_file(tmp_path: Path) -> tuple[Path, Path]:
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("calc", "gateway", "me"):
        zmq.auth.create_certificates(keys, name)
    path = tmp_path / "mesh.toml"
    path.write_text(TOPOLOGY.format(tests=TESTS_DIR, keys=keys))
    return path, keys


def export(path: Path, *extra: str) -> list[dict[str, Any]]:
    r = zcall_cli("launch", "--export", "kubernetes", "--image", "registry.example/mesh:1", *extra, str(path))
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d is not None]


def by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def container_of(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]
    (c,) = spec["containers"]
    return c  # type: ignore[no-any-return]


@pytest.mark.timeout(60)
def test_the_manifests_are_valid_kubernetes_objects(topology_file: tuple[Path, Path]) -> None:
    path, _ = topology_file
    docs = export(path, "--with-secrets")
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any schema violation
    objs = by_kind(docs)
    assert set(objs) == {
        ("Deployment", "zcall-calc"),
        ("Service", "zcall-calc"),
        ("Deployment", "zcall-gateway"),
        ("Service", "zcall-gateway"),
        ("Pod", "zcall-store"),
        ("Service", "zcall-store"),  # restart = "no": a Pod that stays down
        ("Secret", "zcall-calc-curve"),
        ("Secret", "zcall-gateway-curve"),
        *[k for k in objs if k[0] == "ConfigMap"],
    }
    assert len([k for k in objs if k[0] == "ConfigMap"]) == 1  # one public-key directory
    gateway = container_of(objs["Deployment", "zcall-gateway"])
    env = {e["name"]: e["value"] for e in gateway["env"]}
    assert env["ZCALL_PEER_CALC"] == "tcp://zcall-calc:5555"  # peers by service DNS name
    assert "calc=$(ZCALL_PEER_CALC)" in gateway["args"]
    for probe in ("readinessProbe", "livenessProbe"):
        cmd = gateway[probe]["exec"]["command"]
        assert cmd[:5] == ["python", "-m", "zcall", "ping", "--wait"] and cmd[-1] == "tcp://127.0.0.1:5555"
        assert f"{CURVE_DIR}/self/gateway.key_secret" in cmd
    assert objs["Deployment", "zcall-gateway"]["spec"]["template"]["spec"]["restartPolicy"] == "Always"
    assert objs["Pod", "zcall-store"]["spec"]["restartPolicy"] == "Never"
    assert objs["Deployment", "zcall-calc"]["metadata"]["annotations"]["zcall.dev/restart"] == "on-failure"
    ports = {p["name"]: p["port"] for p in objs["Service", "zcall-gateway"]["spec"]["ports"]}
    assert ports == {"zcall": 5555, "zcall-sync": 5556}
    store_env = {e["name"]: e["value"] for e in container_of(objs["Pod", "zcall-store"])["env"]}
    assert store_env["STORE_MODE"] == "memory"


@pytest.mark.timeout(60)
def test_secrets_are_referenced_not_written_unless_asked_and_a_namespace_gives_fqdns(
    topology_file: tuple[Path, Path],
) -> None:
    path, keys = topology_file
    r = zcall_cli("launch", "--export", "kubernetes", "--image", "x:1", "--namespace", "shop", str(path))
    assert r.returncode == 0, r.stderr
    assert (keys / "calc.key_secret").read_text() not in r.stdout
    assert "kubectl create secret generic zcall-calc-curve -n shop" in r.stdout
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert not [d for d in docs if d["kind"] == "Secret"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["metadata"]["namespace"] == "shop"
    gateway = container_of(by_kind(docs)["Deployment", "zcall-gateway"])
    assert {e["name"]: e["value"] for e in gateway["env"]}["ZCALL_PEER_CALC"] == (
        "tcp://zcall-calc.shop.svc.cluster.local:5555"
    )
    missing = zcall_cli("launch", "--export", "kubernetes", str(path))
    assert missing.returncode == 2 and "--image" in missing.stderr


@pytest.mark.timeout(60)
def test_the_validation_catches_a_broken_manifest(topology_file: tuple[Path, Path]) -> None:
    path, _ = topology_file
    docs = export(path)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    container_of(dep)["ports"][0]["containerPort"] = "5555"  # a string where the schema wants an int
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    del container_of(dep)["ports"][0]["containerPort"]
    container_of(dep)["probe"] = {}  # an unknown field: strict mode refuses it
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


class LocalCluster:
    """What the cluster would do for these manifests, on one host: service DNS names resolve to
    loopback ports, mounted Secrets and ConfigMaps become directories, the image's workdir is the
    topology's cwd. Everything else (command, args, env, probes) is taken from the manifests as is."""

    def __init__(self, docs: list[dict[str, Any]], tmp: Path, keys: Path, workdir_host: Path) -> None:
        self.objs = by_kind(docs)
        self.ports = {
            name: free_tcp_endpoint().rsplit(":", 1)[1] for (kind, name) in self.objs if kind == "Service"
        }
        self.sync_ports = {name: free_tcp_endpoint().rsplit(":", 1)[1] for name in self.ports}
        self.tmp, self.keys, self.workdir_host = tmp, keys, workdir_host

    def localize(self, text: str) -> str:
        for svc, port in self.ports.items():
            text = re.sub(rf"tcp://{svc}:5555\b", f"tcp://127.0.0.1:{port}", text)
        return text.replace("/app", str(self.workdir_host))

    def mounts(self, pod: str, c: dict[str, Any], spec: dict[str, Any]) -> dict[str, str]:
        """mountPath -> a local directory with the files the volume would hold."""
        out = {}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for m in c.get("volumeMounts", []):
            local = self.tmp / pod / m["name"]
            local.mkdir(parents=True)
            v = volumes[m["name"]]
            if "configMap" in v:  # what the ConfigMap in the manifests holds
                for fname, content in self.objs["ConfigMap", v["configMap"]["name"]]["data"].items():
                    (local / fname).write_text(content)
            else:  # the Secret the operator creates with the printed kubectl line: the peer's key file
                peer = v["secret"]["secretName"].removeprefix("zcall-").removesuffix("-curve")
                (local / f"{peer}.key_secret").write_bytes((self.keys / f"{peer}.key_secret").read_bytes())
            out[m["mountPath"]] = str(local)
        return out

    def command(self, pod: str) -> tuple[list[str], dict[str, str], list[str]]:
        """The pod's argv, environment and readiness probe, made local."""
        doc = next(d for (k, n), d in self.objs.items() if n == pod and k in ("Deployment", "Pod"))
        spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]
        (c,) = spec["containers"]
        mounts = self.mounts(pod, c, spec)

        def local(text: str) -> str:
            for path, d in mounts.items():
                text = text.replace(path, d)
            return self.localize(text)

        env = {e["name"]: local(e["value"]) for e in c["env"]}
        env["ZCALL_BIND"] = f"tcp://127.0.0.1:{self.ports[pod]}"  # the pod's 0.0.0.0:5555, on this host
        if "ZCALL_SYNC_BIND" in env:
            env["ZCALL_SYNC_BIND"] = f"tcp://127.0.0.1:{self.sync_ports[pod]}"
        args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], local(a)) for a in c["args"]]
        probe = [local(a) for a in c["readinessProbe"]["exec"]["command"]]
        probe = [a.replace("tcp://127.0.0.1:5555", f"tcp://127.0.0.1:{self.ports[pod]}") for a in probe]
        assert c["command"] == ["python"] and probe[0] == "python"
        return [sys.executable, *args], env, [sys.executable, *probe[1:]]


@pytest.mark.timeout(90)
def test_what_the_manifests_run_works_as_local_processes(
    topology_file: tuple[Path, Path], tmp_path: Path
) -> None:
    path, keys = topology_file
    docs = export(path)
    cluster = LocalCluster(docs, tmp_path / "pods", keys, TESTS_DIR)
    started: list[ProcessHandle] = []
    try:
        probes = {}
        for pod in ("zcall-gateway", "zcall-calc", "zcall-store"):  # any order: peers reconnect
            argv, env, probes[pod] = cluster.command(pod)
            started.append(start(argv, env=env, cwd=cluster.localize("/app")))
        for pod, probe in probes.items():
            r = subprocess.run(probe, capture_output=True, text=True, timeout=30, cwd=TESTS_DIR)
            assert r.returncode == 0, (pod, r.stdout, r.stderr)  # the readiness probe passes
            assert "SERVING" in r.stdout
        gw = f"tcp://127.0.0.1:{cluster.ports['zcall-gateway']}"
        me = ClientSecurity(keys / "me.key_secret", keys / "gateway.key")
        with zcall.AsyncClient(gw, timeout=10, security=me) as c:
            assert c.call_async("double_via_calc", 21).result(15) == 42  # gateway -> calc, over CURVE
        sync_gw = f"tcp://127.0.0.1:{cluster.sync_ports['zcall-gateway']}"
        with zcall.SyncClient(sync_gw, timeout=10, security=me) as s:
            assert s.call("double_via_calc_sync", 4) == 8
        with zcall.SyncClient(f"tcp://127.0.0.1:{cluster.ports['zcall-store']}", timeout=10) as s:
            s.call("put", "k", "v")
            assert s.call("get", "k") == "v"
    finally:
        stop_all(started, timeout=5.0)
    for h in started:
        assert h.returncode in (0, -15), h.stderr  # stopped by SIGTERM, cleanly
