"""Export a launch topology to Kubernetes manifests: ``zcall launch --export kubernetes topology.toml``.

``zcall launch`` supervises a mesh on one host; on a cluster, Kubernetes does the supervising. Per peer:

- a **Deployment** ``zcall-<name>`` (one replica) running the same ``python -m zcall serve`` command the
  launcher runs, bound to ``tcp://0.0.0.0:<port>`` in its pod, and a **Service** ``zcall-<name>`` in front
  of it. Peers address each other by service DNS name: ``--peer pricing=tcp://zcall-pricing:5555``
  (``zcall-pricing.<namespace>.svc.cluster.local`` with ``--namespace``). Endpoints go through the
  container's environment (``ZCALL_BIND``, ``ZCALL_PEER_<NAME>``), expanded by Kubernetes in ``args``;
- **readiness and liveness probes** that exec ``python -m zcall ping --wait S tcp://127.0.0.1:<port>``
  in the container: ready once ``zcall.health`` says SERVING (a peer that sets ``service.serving =
  False`` leaves the Service's endpoints until it is back), restarted when it stops answering;
- **restart policy** from the topology: ``always`` and ``on-failure`` are a Deployment (whose pods
  restart whenever the container exits: Kubernetes has no on-failure for a Deployment, so a clean exit
  of an ``on-failure`` peer is restarted too; the topology's policy is kept as an annotation);
  ``no`` is a bare Pod with ``restartPolicy: Never`` instead, since "stays down once it exits" is what
  a Deployment cannot express;
- **CURVE**: a peer's secret key comes from the Secret ``zcall-<name>-curve`` (key ``<name>.key_secret``),
  mounted at ``/var/run/zcall/curve/self``; the public keys of an ``allow_keys`` or ``peer_keys``
  directory are a ConfigMap mounted read-only. The Secrets are referenced, not written, unless
  ``with_secrets=True`` (``--with-secrets``): keep secret keys out of files that get committed, and
  create them with the ``kubectl create secret`` lines the export prints in its header.

The image must hold your code and zcall (``--image``); the topology's ``cwd`` maps to ``--workdir``
(default ``/app``) and its ``pythonpath`` to paths under it. The output is YAML (strings double-quoted,
JSON-style), one document per object, with no YAML library needed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .topology import Topology, TopologyError

__all__ = ["CURVE_DIR", "DEFAULT_PORT", "export_kubernetes", "k8s_name", "to_yaml"]

DEFAULT_PORT = 5555
"""The port every peer listens on inside its pod (each pod has its own address)."""
SYNC_PORT_OFFSET = 1
CURVE_DIR = "/var/run/zcall/curve"
LABEL = "app.kubernetes.io/name"
PART_OF = "app.kubernetes.io/part-of"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def k8s_name(*parts: str) -> str:
    """A DNS-1123 label from ``parts`` (``"zcall", "order_db"`` -> ``"zcall-order-db"``), or TopologyError."""
    name = "-".join(re.sub(r"[^a-z0-9-]+", "-", p.lower()).strip("-") for p in parts if p)
    if len(name) > 63 or not _DNS_LABEL.match(name):
        raise TopologyError(f"cannot make a Kubernetes name from {parts!r} (got {name!r}): rename the peer")
    return name


def _env_key(peer: str) -> str:
    return "ZCALL_PEER_" + re.sub(r"[^A-Za-z0-9]", "_", peer).upper()


def _probe(port: int, wait: float, security: list[str]) -> list[str]:
    return ["python", "-m", "zcall", "ping", "--wait", f"{wait:g}", *security, f"tcp://127.0.0.1:{port}"]


def export_kubernetes(
    topology: Topology,
    *,
    image: str,
    name: str = "zcall-mesh",
    namespace: str | None = None,
    port: int = DEFAULT_PORT,
    workdir: str = "/app",
    with_secrets: bool = False,
) -> list[dict[str, Any]]:
    """The manifests for ``topology``: per peer a Deployment (or a Pod, for ``restart = "no"``) and a
    Service, plus a ConfigMap per public-key directory and, with ``with_secrets``, the CURVE Secrets."""
    part_of = k8s_name(name)
    services = {p.name: k8s_name("zcall", p.name) for p in topology.peers}
    if len(set(services.values())) != len(services):
        raise TopologyError(f"{topology.source}: two peers map to one Kubernetes name: {services}")
    host = (lambda svc: svc) if namespace is None else (lambda svc: f"{svc}.{namespace}.svc.cluster.local")
    key_maps: dict[str, str] = {}  # public-key directory -> ConfigMap name
    out: list[dict[str, Any]] = []
    for d in sorted({d for p in topology.peers for d in (p.allow_keys, p.peer_keys) if d}):
        cm = k8s_name("zcall-keys", Path(d).name[:30], hashlib.sha256(d.encode()).hexdigest()[:8])
        key_maps[d] = cm
        data = {f.name: f.read_text(encoding="utf-8") for f in sorted(Path(d).glob("*.key"))}
        out.append(_meta("v1", "ConfigMap", cm, namespace, part_of, None) | {"data": data})
    for spec in topology.peers:
        svc = services[spec.name]
        labels = {LABEL: svc, PART_OF: part_of}
        env = [{"name": "ZCALL_BIND", "value": f"tcp://0.0.0.0:{port}"}]
        args = ["-m", "zcall", "serve", spec.target, "--bind", "$(ZCALL_BIND)", "--name", spec.name]
        for other in spec.peers:
            env.append({"name": _env_key(other), "value": f"tcp://{host(services[other])}:{port}"})
            args += ["--peer", f"{other}=$({_env_key(other)})"]
        ports = [{"name": "zcall", "containerPort": port, "protocol": "TCP"}]
        if spec.sync_bind is not None:
            sync_port = port + SYNC_PORT_OFFSET
            env.append({"name": "ZCALL_SYNC_BIND", "value": f"tcp://0.0.0.0:{sync_port}"})
            args += ["--sync-bind", "$(ZCALL_SYNC_BIND)"]
            ports.append({"name": "zcall-sync", "containerPort": sync_port, "protocol": "TCP"})
        volumes: list[dict[str, Any]] = []
        mounts: list[dict[str, Any]] = []
        probe_security: list[str] = []
        if spec.curve_secret is not None:
            secret = k8s_name("zcall", spec.name, "curve")
            key_file = f"{spec.name}.key_secret"
            volumes.append({"name": "curve-self", "secret": {"secretName": secret, "defaultMode": 0o400}})
            mounts.append({"name": "curve-self", "mountPath": f"{CURVE_DIR}/self", "readOnly": True})
            own = f"{CURVE_DIR}/self/{key_file}"
            args += ["--curve-secret", own]
            probe_security = ["--curve-secret", own, "--server-key", own]  # as the launcher pings it
            dirs = (("--allow-keys", spec.allow_keys, "allow"), ("--peer-keys", spec.peer_keys, "peers"))
            for flag, keys_dir, mount in dirs:
                if keys_dir is None:
                    continue
                volumes.append({"name": f"curve-{mount}", "configMap": {"name": key_maps[keys_dir]}})
                path = f"{CURVE_DIR}/{mount}"
                mounts.append({"name": f"curve-{mount}", "mountPath": path, "readOnly": True})
                args += [flag, path]
            for ip in spec.allow_ips:
                args += ["--allow-ip", ip]
            if with_secrets:
                encoded = base64.b64encode(Path(spec.curve_secret).read_bytes()).decode("ascii")
                out.append(
                    _meta("v1", "Secret", secret, namespace, part_of, None)
                    | {"type": "Opaque", "data": {key_file: encoded}}
                )
        pythonpath = [_in_container(p, topology.cwd, workdir) for p in topology.pythonpath]
        if pythonpath:
            env.append({"name": "PYTHONPATH", "value": os.pathsep.join(pythonpath)})
        env += [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
        env.append({"name": "PYTHONUNBUFFERED", "value": "1"})
        container: dict[str, Any] = {
            "name": "peer",
            "image": image,
            "command": ["python"],
            "args": args,
            "workingDir": workdir,
            "env": env,
            "ports": ports,
            "readinessProbe": {
                "exec": {"command": _probe(port, 2, probe_security)},
                "periodSeconds": 5,
                "timeoutSeconds": 4,
                "failureThreshold": 1,
            },
            "livenessProbe": {
                "exec": {"command": _probe(port, 3, probe_security)},
                "initialDelaySeconds": max(5, int(topology.startup_timeout)),
                "periodSeconds": 10,
                "timeoutSeconds": 5,
                "failureThreshold": 3,
            },
        }
        if mounts:
            container["volumeMounts"] = mounts
        pod_spec: dict[str, Any] = {
            "containers": [container],
            "terminationGracePeriodSeconds": max(1, round(topology.stop_timeout)) + 1,
        }
        if volumes:
            pod_spec["volumes"] = volumes
        annotations = {"zcall.dev/restart": spec.restart, "zcall.dev/target": spec.target}
        if spec.restart == "no":
            pod = _meta("v1", "Pod", svc, namespace, part_of, labels, annotations)
            pod["spec"] = pod_spec | {"restartPolicy": "Never"}
            out.append(pod)
        else:
            dep = _meta("apps/v1", "Deployment", svc, namespace, part_of, labels, annotations)
            dep["spec"] = {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels, "annotations": annotations},
                    "spec": pod_spec | {"restartPolicy": "Always"},
                },
            }
            out.append(dep)
        service_ports = [
            {"name": p["name"], "port": p["containerPort"], "targetPort": p["name"], "protocol": "TCP"}
            for p in ports
        ]
        service = _meta("v1", "Service", svc, namespace, part_of, labels)
        service["spec"] = {"type": "ClusterIP", "selector": labels, "ports": service_ports}
        out.append(service)
    return out


def _in_container(path: str, cwd: str | None, workdir: str) -> str:
    """A host path of the topology as the image would have it: relative to ``cwd``, under ``workdir``."""
    if cwd is not None:
        rel = os.path.relpath(path, cwd)
        if not rel.startswith(".."):
            return workdir.rstrip("/") + ("" if rel == "." else "/" + rel)
    return path


def _meta(
    api: str,
    kind: str,
    name: str,
    namespace: str | None,
    part_of: str,
    labels: dict[str, str] | None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels or {PART_OF: part_of}}
    if namespace is not None:
        meta["namespace"] = namespace
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": api, "kind": kind, "metadata": meta}


def secret_commands(topology: Topology, namespace: str | None = None) -> list[str]:
    """The ``kubectl create secret`` lines for the CURVE Secrets the manifests reference."""
    ns = f" -n {namespace}" if namespace else ""
    return [
        f"kubectl create secret generic {k8s_name('zcall', p.name, 'curve')}{ns} "
        f"--from-file={p.name}.key_secret={p.curve_secret}"
        for p in topology.peers
        if p.curve_secret is not None
    ]


# -- YAML without a YAML library: block style, every string JSON-quoted (valid YAML) ---------------------


def _scalar(v: Any) -> str:
    if isinstance(v, dict | list):
        return "{}" if isinstance(v, dict) else "[]"  # only ever empty here: the others are blocks
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return json.dumps(v)
    return json.dumps(str(v), ensure_ascii=False)


def _lines(value: Any, indent: int) -> Iterable[str]:
    pad = " " * indent
    if isinstance(value, dict):
        for k, v in value.items():
            key = _scalar(k) if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-/]*", str(k)) else str(k)
            if isinstance(v, dict | list) and v:
                yield f"{pad}{key}:"
                yield from _lines(v, indent + 2)
            else:
                yield f"{pad}{key}: {_scalar(v)}"
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                inner = list(_lines(item, indent + 2))
                yield f"{pad}- {inner[0].lstrip()}"
                yield from inner[1:]
            else:
                yield f"{pad}- {_scalar(item)}"
    else:
        yield pad + _scalar(value)


def to_yaml(manifests: Iterable[dict[str, Any]], header: Iterable[str] = ()) -> str:
    """A multi-document YAML stream of ``manifests``, with ``header`` lines as comments on top."""
    docs = ["\n".join(f"# {line}" for line in header)] if header else []
    for m in manifests:
        docs.append("---\n" + "\n".join(_lines(m, 0)))
    return "\n".join(d for d in docs if d) + "\n"


def export_text(
    topology: Topology,
    *,
    image: str,
    name: str,
    namespace: str | None = None,
    port: int = DEFAULT_PORT,
    workdir: str = "/app",
    with_secrets: bool = False,
) -> str:
    """What ``zcall launch --export kubernetes`` prints: a header, then the manifests."""
    manifests = export_kubernetes(
        topology,
        image=image,
        name=name,
        namespace=namespace,
        port=port,
        workdir=workdir,
        with_secrets=with_secrets,
    )
    header = [
        f"zcall launch --export kubernetes {topology.source}: {len(topology.peers)} peers, image {image}",
        "apply with: kubectl apply -f THIS_FILE" + (f" -n {namespace}" if namespace else ""),
    ]
    commands = [] if with_secrets else secret_commands(topology, namespace)
    if commands:
        header += ["first create the CURVE secrets the peers mount (never written here):", *commands]
    return to_yaml(manifests, header)


# -- the command line: zcall launch --export kubernetes ------------------------------------------------


def add_export_arguments(p: Any) -> None:
    """The ``--export`` options of ``zcall launch`` (kept here, beside what they drive)."""
    g = p.add_argument_group("export (instead of launching)")
    g.add_argument(
        "--export", choices=["kubernetes"], default=None, help="write manifests for an orchestrator"
    )
    g.add_argument("--image", default=None, metavar="IMAGE", help="image with your code and zcall (required)")
    g.add_argument(
        "--name",
        dest="export_name",
        default=None,
        metavar="NAME",
        help="app.kubernetes.io/part-of label (default: the topology file's name)",
    )
    g.add_argument("--namespace", default=None, metavar="NS", help="namespace (peers then use FQDNs)")
    g.add_argument(
        "--port", type=int, default=DEFAULT_PORT, metavar="N", help=f"peer port in its pod ({DEFAULT_PORT})"
    )
    g.add_argument("--workdir", default="/app", metavar="DIR", help="the topology's cwd in the image (/app)")
    g.add_argument("--with-secrets", action="store_true", help="write the CURVE secret keys into Secrets too")
    g.add_argument("--out", "-o", default=None, metavar="FILE", help="write there instead of stdout")


def export_command(topology: Topology, ns: Any) -> int:
    """``zcall launch --export kubernetes TOPOLOGY``: print (or write) the manifests; exit code."""
    from ..cli.common import EXIT_OK, UsageError

    if not ns.image:
        raise UsageError("--export kubernetes needs --image: an image holding your code and zcall")
    name = ns.export_name or Path(topology.source).stem or "zcall-mesh"
    text = export_text(
        topology,
        image=ns.image,
        name=name,
        namespace=ns.namespace,
        port=ns.port,
        workdir=ns.workdir,
        with_secrets=ns.with_secrets,
    )
    if ns.out:
        Path(ns.out).write_text(text, encoding="utf-8")
    else:
        print(text, end="", flush=True)
    return EXIT_OK
