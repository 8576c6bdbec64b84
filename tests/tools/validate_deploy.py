#!/usr/bin/env python3
"""Offline checks of deploy/ and the Dockerfile (no cluster, no Docker engine here).

- Kubernetes core resources (deploy/kubernetes/*.yaml): kubernetes-validate's strict schemas
  (unknown fields refused) for every Kubernetes version in K8S_VERSIONS.
- KServe resources (deploy/kserve/*.yaml): built into the KServe SDK's own models (PyPI kserve),
  refusing any field the models do not know, so a typo or a wrong type fails.
- The ServiceMonitor: validated by node with @kubernetes-models/prometheus-operator
  (tests/tools/deploy-validate/, its package-lock.json pins it).
- What schemas cannot know, read across files: the ConfigMap carries the image's tessera.toml;
  the kustomization lists every manifest; probes, ports and metric names are ones the server has
  (checked against `--probe-paths`/`--metrics`, what the real server answered, when given);
  terminationGracePeriodSeconds covers preStop + shutdown_grace_ms; the Dockerfile's stages,
  user, copied files and guest paths agree with the config.

Prints one line per check; exits 1 on the first failure, naming it.

    .venv/bin/python tests/tools/validate_deploy.py [--metrics FILE] [--served-paths a,b,...]
"""
from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSIONS = ["1.30.0", "1.37.0"]
NODE_TOOLS = ROOT / "tests" / "tools" / "deploy-validate"


def fail(message: str) -> None:
    print(f"FAIL {message}")
    sys.exit(1)


def ok(message: str) -> None:
    print(f"ok   {message}")


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --- KServe: the SDK's generated models, without importing the SDK's server side ---------------

def sdk_models():
    """kserve's and kubernetes' model classes. Both packages' __init__ import their servers and
    clients (fastapi, google-auth, ...), which validation does not need: the packages are entered
    as bare namespaces so only the model modules (and their configuration) load."""
    # Where each top-level package is, found before any of them is entered as a bare module
    # (a bare module has no spec to find).
    bases = {}
    for top in ["kserve", "kubernetes"]:
        spec = importlib.util.find_spec(top) if top not in sys.modules else sys.modules[top].__spec__
        if spec is None and top in sys.modules:
            bases[top] = Path(sys.modules[top].__path__[0])
            continue
        if spec is None:
            fail(f"python package {top} is not installed (./run installs it)")
        bases[top] = Path(spec.origin).parent
    for name in ["kserve", "kubernetes", "kubernetes.client"]:
        if name in sys.modules:
            continue
        base = bases[name.split(".")[0]]
        module = types.ModuleType(name)
        module.__path__ = [str(base / Path(*name.split(".")[1:]))]
        sys.modules[name] = module
    kserve_models = importlib.import_module("kserve.models")
    k8s_models = importlib.import_module("kubernetes.client.models")
    return kserve_models, k8s_models


PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}


def build(type_name: str, value, where: str, models):
    """`value` (parsed YAML) as an instance of the OpenAPI type `type_name`, strictly."""
    if value is None:
        return None
    if type_name in PRIMITIVES:
        if not isinstance(value, PRIMITIVES[type_name]) or (type_name == "int" and isinstance(value, bool)):
            fail(f"{where}: {value!r} is not a {type_name}")
        return value
    if m := re.fullmatch(r"list\[(.+)\]", type_name):
        if not isinstance(value, list):
            fail(f"{where}: expected a list")
        return [build(m[1], v, f"{where}[{i}]", models) for i, v in enumerate(value)]
    if m := re.fullmatch(r"dict\(str, (.+)\)", type_name):
        if not isinstance(value, dict):
            fail(f"{where}: expected a map")
        return {k: build(m[1], v, f"{where}.{k}", models) for k, v in value.items()}
    cls = next((getattr(mod, type_name) for mod in models if hasattr(mod, type_name)), None)
    if cls is None:
        fail(f"{where}: no model named {type_name}")
    if not isinstance(value, dict):
        fail(f"{where}: expected a {type_name} object")
    by_key = {v: k for k, v in cls.attribute_map.items()}
    kwargs = {}
    for key, v in value.items():
        if key not in by_key:
            fail(f"{where}: {type_name} has no field {key!r}")
        attr = by_key[key]
        kwargs[attr] = build(cls.openapi_types[attr], v, f"{where}.{key}", models)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        fail(f"{where}: {type_name}: {e}")


def check_kserve(path: Path, doc: dict, models) -> None:
    kinds = {("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
             ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService"}
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in kinds:
        fail(f"{path.name}: {key} is not a KServe kind this check knows")
    build(kinds[key], doc, f"{path.name}:{doc['kind']}", models)
    ok(f"{path.relative_to(ROOT)}: {doc['kind']} {doc['metadata']['name']} fits kserve's models")


# --- the checks -----------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--metrics", type=Path, help="a /metrics scrape of the real server")
    ap.add_argument("--served-paths", default="", help="paths the real server answered 200, comma-separated")
    args = ap.parse_args()

    k8s_dir = DEPLOY / "kubernetes"
    manifests = sorted(p for p in k8s_dir.glob("*.yaml") if p.name != "kustomization.yaml")
    by_file: dict[str, dict] = {}
    for path in manifests:
        for doc in docs(path):
            kind = doc["kind"]
            by_file[path.name] = doc
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                continue
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    fail(f"{path.relative_to(ROOT)} ({kind}) against Kubernetes {version}: {e.message} at "
                         f"{'/'.join(str(p) for p in e.path)}")
            ok(f"{path.relative_to(ROOT)}: {kind} valid (strict) for Kubernetes {', '.join(K8S_VERSIONS)}")

    # The ServiceMonitor against the Prometheus Operator's schema (node).
    monitor = k8s_dir / "servicemonitor.yaml"
    run = subprocess.run(["node", str(NODE_TOOLS / "validate.mjs"), str(monitor)], capture_output=True, text=True)
    if run.returncode != 0:
        fail(f"{monitor.relative_to(ROOT)}: {run.stdout.strip()} {run.stderr.strip()}")
    ok(f"{monitor.relative_to(ROOT)}: {run.stdout.strip()}")

    kustomization = docs(k8s_dir / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    if listed != {p.name for p in manifests}:
        fail(f"kustomization.yaml lists {sorted(listed)}, the directory has {sorted(p.name for p in manifests)}")
    ok("kustomization.yaml lists every manifest")

    kserve_models, k8s_models = sdk_models()
    for path in sorted((DEPLOY / "kserve").glob("*.yaml")):
        for doc in docs(path):
            check_kserve(path, doc, (kserve_models, k8s_models))

    # Across files.
    container_toml = (DEPLOY / "tessera.container.toml").read_text()
    config = tomllib.loads(container_toml)
    if by_file["configmap.yaml"]["data"]["tessera.toml"].strip() != container_toml.strip():
        fail("deploy/kubernetes/configmap.yaml's tessera.toml differs from deploy/tessera.container.toml")
    ok("the ConfigMap carries the image's tessera.toml")

    deployment = by_file["deployment.yaml"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pre_stop_s = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace_s = config["limits"]["shutdown_grace_ms"] / 1000
    if pod["terminationGracePeriodSeconds"] < pre_stop_s + grace_s:
        fail(f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} < preStop {pre_stop_s} s + "
             f"shutdown_grace_ms {grace_s} s")
    ok(f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} s covers preStop {pre_stop_s} s + "
       f"drain {grace_s:g} s")

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listen = {"http": int(config["addr"].rsplit(":", 1)[1]), "grpc": int(config["grpc_addr"].rsplit(":", 1)[1])}
    if ports != listen:
        fail(f"container ports {ports} are not the config's listeners {listen}")
    service_ports = {p["targetPort"] for p in by_file["service.yaml"]["spec"]["ports"]}
    monitor_ports = {e["port"] for e in by_file["servicemonitor.yaml"]["spec"]["endpoints"]}
    if not service_ports <= set(ports) or not monitor_ports <= {p["name"] for p in by_file["service.yaml"]["spec"]["ports"]}:
        fail(f"Service targets {service_ports}, ServiceMonitor scrapes {monitor_ports}; the pod has {set(ports)}")
    selector = by_file["service.yaml"]["spec"]["selector"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for name, sel in [("Service", selector), ("PodDisruptionBudget", by_file["pdb.yaml"]["spec"]["selector"]["matchLabels"])]:
        if any(labels.get(k) != v for k, v in sel.items()):
            fail(f"the {name}'s selector {sel} does not select the pods {labels}")
    ok("ports, selectors and scrape endpoints line up")

    probes = {container[p]["httpGet"]["path"] for p in ["startupProbe", "livenessProbe", "readinessProbe"]}
    runtime = docs(DEPLOY / "kserve" / "clusterservingruntime.yaml")[0]["spec"]["containers"][0]
    probes |= {runtime[p]["httpGet"]["path"] for p in ["livenessProbe", "readinessProbe"]}
    probes.add(by_file["servicemonitor.yaml"]["spec"]["endpoints"][0]["path"])
    if args.served_paths:
        served = set(args.served_paths.split(","))
        if not probes <= served:
            fail(f"probe and scrape paths {sorted(probes - served)} were not answered 200 by the server")
        ok(f"the server answered every probe and scrape path: {sorted(probes)}")

    hpa_metric = by_file["hpa.yaml"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    adapter = yaml.safe_load(by_file["prometheus-adapter-rules.yaml"]["data"]["config.yaml"])
    rule = adapter["rules"][0]
    series = re.match(r"[a-z_]+", rule["seriesQuery"])[0]
    if rule["name"]["as"] != hpa_metric:
        fail(f"the adapter exposes {rule['name']['as']}, the HPA scales on {hpa_metric}")
    if args.metrics:
        scraped = args.metrics.read_text()
        if not re.search(rf"^{series}(\{{| )", scraped, re.M):
            fail(f"the adapter's series {series} is not in the server's /metrics")
        ok(f"the HPA's metric {hpa_metric} is the server's {series}")

    # The Dockerfile: checked, not built.
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", dockerfile, re.M)
    if len(stages) < 2:
        fail("the Dockerfile is not multi-stage")
    runtime_part = dockerfile[dockerfile.rindex("\nFROM "):]
    user = re.findall(r"^USER\s+(\S+)", runtime_part, re.M)
    if not user or user[-1].split(":")[0] in ("root", "0"):
        fail("the runtime stage does not switch to a non-root user")
    if str(pod["securityContext"]["runAsUser"]) != user[-1].split(":")[0]:
        fail(f"the pod runs as {pod['securityContext']['runAsUser']}, the image's USER is {user[-1]}")
    for src in re.findall(r"^COPY\s+(?!--from)(\S+)\s", runtime_part, re.M):
        if not (ROOT / src).exists():
            fail(f"the Dockerfile copies {src}, which is not in the repository")
    guests = [config["guests"]["preprocess"], config["guests"]["postprocess"]] + [r["path"] for r in config["guests"]["rules"]]
    for g in guests:
        name = Path(g).stem
        if not re.search(rf"\b{re.escape(name)}\b", dockerfile) or not g.startswith("/opt/tessera/guests/"):
            fail(f"the config's guest {g} is not one the Dockerfile precompiles into /opt/tessera/guests")
    if config["models_dir"] != "/models" or "/models" not in dockerfile:
        fail("the image's models are not where the config reads them")
    ok(f"Dockerfile: {len(stages)} stages, runs as {user[-1]}, copies what exists, precompiles the configured guests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
