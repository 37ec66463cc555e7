"""Consistency checks of deploy/ that no schema can make: run by .ci/validate-deploy with the
tools venv's Python (PyYAML comes with moto there).

The schema validators say each file is well formed; these say the files agree with each other
and with the node: the StatefulSet's probes, secrets and memory against the ConfigMap's
cluster.toml, the Services against the pods, the compose file against deploy/cluster.toml, the
alert rules' and dashboard's structure (their PromQL goes through promtool), the Dockerfile
against the workspace. node/tests/deploy.rs checks the rest against a running node.

Usage: validate_deploy.py --promtool PATH
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
NAMESPACE = "actorhub"
# The longest hand-off a draining node may take after web.shutdown_timeout_ms (the node's
# contract); the pod's grace period must cover both.
HANDOFF_DEADLINE_S_MAX = 20
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
SECRET_ENV = (
    "ACTORHUB_COOKIE_FILE",
    "ACTORHUB_JWT_SECRET_FILE",
    "ACTORHUB_ADMIN_TOKEN_FILE",
    "ACTORHUB_S3_ACCESS_KEY_ID_FILE",
    "ACTORHUB_S3_SECRET_ACCESS_KEY_FILE",
)
# Defaults of the node (runtime/src/config.rs, actors/src/config.rs, web/src/config.rs) for
# keys a config may leave out.
DEFAULT_MEMORY_BYTES_MAX = 2 * 1024**3
DEFAULT_WORKERS = 2
DEFAULT_WORKER_MEMORY_BYTES_MAX = 512 * 1024**2
DEFAULT_SHUTDOWN_TIMEOUT_MS = 5000
SEVERITIES = {"critical", "warning", "info"}
GRID_WIDTH = 24

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
    return condition


def load_docs(path):
    with open(path, encoding="utf-8") as file:
        return [doc for doc in yaml.safe_load_all(file) if doc is not None]


def quantity_bytes(text):
    """A Kubernetes memory quantity ("3Gi", "3221225472", "3G") in bytes."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    if not match:
        raise ValueError(f"unsupported memory quantity {text!r}")
    factor = {
        None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4,
        "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
    }[match.group(2)]
    return int(match.group(1)) * factor


def compose_bytes(text):
    """A compose memory size ("3g", "3072m", "3gb") in bytes."""
    match = re.fullmatch(r"(\d+)\s*([bkmg])?b?", str(text).lower())
    if not match:
        raise ValueError(f"unsupported compose size {text!r}")
    return int(match.group(1)) * {None: 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2)]


def duration_s(text):
    match = re.fullmatch(r"(\d+)(s|m)", str(text))
    if not match:
        raise ValueError(f"unsupported duration {text!r}")
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def memory_budget(config):
    """What one node may use: its own budget plus its converter workers'."""
    limits = config.get("limits", {})
    jobs = config.get("jobs", {})
    return limits.get("memory_bytes_max", DEFAULT_MEMORY_BYTES_MAX) + jobs.get(
        "workers", DEFAULT_WORKERS
    ) * jobs.get("worker_memory_bytes_max", DEFAULT_WORKER_MEMORY_BYTES_MAX)


def grace_needed_s(config):
    shutdown_ms = config.get("web", {}).get("shutdown_timeout_ms", DEFAULT_SHUTDOWN_TIMEOUT_MS)
    return shutdown_ms / 1000 + HANDOFF_DEADLINE_S_MAX


def check_kubernetes():
    k8s = DEPLOY / "k8s"
    manifests = sorted(path for path in k8s.glob("*.yaml") if path.name != "kustomization.yaml")
    kustomization = load_docs(k8s / "kustomization.yaml")[0]
    check(
        sorted(kustomization.get("resources", [])) == sorted(path.name for path in manifests),
        f"k8s/kustomization.yaml resources {kustomization.get('resources')} differ from the "
        f"manifests {[path.name for path in manifests]}",
    )
    objects = {}
    for path in manifests:
        for doc in load_docs(path):
            kind, name = doc["kind"], doc["metadata"]["name"]
            if kind != "Namespace":
                check(
                    doc["metadata"].get("namespace") == NAMESPACE,
                    f"{path.name}: {kind}/{name} is not in namespace {NAMESPACE}",
                )
            objects[(kind, name)] = doc

    config_map = objects[("ConfigMap", "actorhub-config")]
    config = tomllib.loads(config_map["data"]["cluster.toml"])
    check("node" not in config, "the ConfigMap's cluster.toml must not list [[node]]: pods use flags")
    check(
        not config.get("cluster", {}).get("cookie") and not config.get("web", {}).get("jwt_secret"),
        "the ConfigMap's cluster.toml must hold no secrets (cookie, jwt_secret): they come from Secrets",
    )

    statefulset = objects[("StatefulSet", "actorhub")]
    spec = statefulset["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    check(spec.get("podManagementPolicy") == "Parallel", "StatefulSet: podManagementPolicy must be Parallel")
    check(
        spec["selector"]["matchLabels"].items() <= pod_labels.items(),
        "StatefulSet: selector does not match the pod labels",
    )
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(
        grace > grace_needed_s(config),
        f"StatefulSet: terminationGracePeriodSeconds {grace} must exceed the drain deadline "
        f"(web.shutdown_timeout_ms + {HANDOFF_DEADLINE_S_MAX} s hand-off = {grace_needed_s(config)} s)",
    )
    check(pod.get("enableServiceLinks") is False, "StatefulSet: enableServiceLinks must be false (ACTORHUB_* env)")
    (container,) = [c for c in pod["containers"] if c["name"] == "node"]
    port_names = {port["name"] for port in container.get("ports", [])}

    liveness = container.get("livenessProbe", {}).get("httpGet", {})
    readiness = container.get("readinessProbe", {}).get("httpGet", {})
    check(liveness.get("path") == HEALTH_PATH, f"StatefulSet: liveness must GET {HEALTH_PATH}")
    check(readiness.get("path") == READY_PATH, f"StatefulSet: readiness must GET {READY_PATH}")
    for probe in (liveness, readiness):
        check(probe.get("port") in port_names, f"StatefulSet: probe port {probe.get('port')} is not a container port")

    env = {item["name"]: item for item in container.get("env", [])}
    check(
        env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
        "StatefulSet: POD_NAME must come from the downward API (metadata.name)",
    )
    check(
        env.get("POD_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP",
        "StatefulSet: POD_IP must come from the downward API (status.podIP)",
    )
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounts = container.get("volumeMounts", [])
    for name in SECRET_ENV:
        path = env.get(name, {}).get("value")
        if not check(path, f"StatefulSet: {name} is not set"):
            continue
        mount = next((m for m in mounts if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
        check(
            mount is not None and "secret" in volumes.get(mount["name"], {}),
            f"StatefulSet: {name}={path} is not in a mounted Secret",
        )
    tls_dir = config.get("cluster", {}).get("tls", {}).get("dir")
    tls_mount = next((m for m in mounts if m["mountPath"] == tls_dir), None)
    check(
        tls_mount is not None and "secret" in volumes.get(tls_mount["name"], {}),
        f"StatefulSet: [cluster.tls] dir {tls_dir} is not a mounted Secret",
    )
    config_mount = next((m for m in mounts if m.get("subPath") == "cluster.toml"), None)
    check(
        config_mount is not None
        and volumes.get(config_mount["name"], {}).get("configMap", {}).get("name") == "actorhub-config",
        "StatefulSet: cluster.toml is not mounted from the ConfigMap actorhub-config",
    )
    args = container.get("command", []) + container.get("args", [])
    check(
        config_mount is not None and config_mount["mountPath"] in args,
        "StatefulSet: --config does not name the mounted cluster.toml",
    )
    data_dir = config.get("cluster", {}).get("data_dir", "")
    check(
        any(m["mountPath"] == data_dir for m in mounts),
        f"StatefulSet: data_dir {data_dir} is not a volume (the root filesystem is read-only)",
    )

    resources = container.get("resources", {})
    budget = memory_budget(config)
    for kind in ("requests", "limits"):
        memory = resources.get(kind, {}).get("memory")
        check(
            memory is not None and quantity_bytes(memory) == budget,
            f"StatefulSet: memory {kind} {memory} must equal limits.memory_bytes_max + "
            f"jobs.workers * jobs.worker_memory_bytes_max = {budget} bytes",
        )

    headless = objects[("Service", spec["serviceName"])]
    check(headless["spec"].get("clusterIP") == "None", "the StatefulSet's serviceName must be a headless Service")
    check(
        headless["spec"].get("publishNotReadyAddresses") is True,
        "the headless Service must publish not-ready addresses (a joining node is not ready yet)",
    )
    join_host = f"{spec['serviceName']}.{NAMESPACE}.svc.cluster.local"
    joins = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--join"]
    check(
        any(join.startswith(join_host + ":") for join in joins),
        f"StatefulSet: --join must name the headless Service ({join_host}:PORT), got {joins}",
    )
    for (kind, name), doc in objects.items():
        if kind == "Service" and doc["spec"].get("selector", {}).get("app.kubernetes.io/component") == "node":
            check(
                doc["spec"]["selector"].items() <= pod_labels.items(),
                f"Service {name}: selector does not match the nodes' pods",
            )
            for port in doc["spec"]["ports"]:
                check(
                    port.get("targetPort") in port_names,
                    f"Service {name}: targetPort {port.get('targetPort')} is not a container port",
                )
    pdb = objects[("PodDisruptionBudget", "actorhub")]
    check(
        pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(),
        "PodDisruptionBudget: selector does not match the nodes' pods",
    )


def check_compose():
    compose = load_docs(DEPLOY / "compose.yaml")[0]
    with open(DEPLOY / "cluster.toml", "rb") as file:
        config = tomllib.load(file)
    check("node" not in config, "deploy/cluster.toml must not list [[node]]: containers use flags")
    budget = memory_budget(config)
    for name, service in compose["services"].items():
        command = service.get("command", [])
        option = {command[i]: command[i + 1] for i in range(len(command) - 1) if command[i].startswith("--")}
        check(option.get("--id") == name, f"compose {name}: --id must be the service name")
        check(option.get("--config") == "/etc/actorhub/cluster.toml", f"compose {name}: --config")
        address = service["networks"]["actorhub"]["ipv4_address"]
        for flag in ("--cluster-addr", "--http-addr"):
            check(
                option.get(flag, "").rsplit(":", 1)[0] == address,
                f"compose {name}: {flag} must use its ipv4_address {address}",
            )
        check(
            service["environment"].get("ACTORHUB_HEALTH_ADDR") == option.get("--http-addr"),
            f"compose {name}: ACTORHUB_HEALTH_ADDR must be its --http-addr",
        )
        check(
            compose_bytes(service.get("mem_limit", "0")) == budget,
            f"compose {name}: mem_limit must equal the node's budget plus its workers' ({budget} bytes)",
        )
        check(
            duration_s(service.get("stop_grace_period", "10s")) > grace_needed_s(config),
            f"compose {name}: stop_grace_period must exceed the drain deadline",
        )
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                check(
                    source.startswith("./secrets/") or (DEPLOY / source).exists(),
                    f"compose {name}: {source} does not exist",
                )


def check_alerts():
    rules = load_docs(DEPLOY / "prometheus" / "alerts.yaml")[0]
    names = set()
    for group in rules["groups"]:
        check(group.get("name", "").startswith("actorhub."), f"alert group {group.get('name')}: name it actorhub.*")
        for rule in group["rules"]:
            name = rule.get("alert")
            if not check(name, f"group {group['name']}: a rule without `alert` (recording rules belong elsewhere)"):
                continue
            check(name not in names, f"alert {name} is defined twice")
            names.add(name)
            check(rule.get("labels", {}).get("severity") in SEVERITIES, f"alert {name}: severity must be one of {SEVERITIES}")
            annotations = rule.get("annotations", {})
            check(annotations.get("summary") and annotations.get("description"), f"alert {name}: needs a summary and a description")
            check('job="actorhub"' in rule["expr"], f'alert {name}: select job="actorhub"')
    tested = (DEPLOY / "prometheus" / "alerts.test.yaml").read_text(encoding="utf-8")
    for name in names:
        check(f"alertname: {name}" in tested, f"alert {name} has no test in alerts.test.yaml")
    config = load_docs(DEPLOY / "prometheus" / "prometheus.yaml")[0]
    check(
        any(job.get("job_name") == "actorhub" for job in config.get("scrape_configs", [])),
        "prometheus.yaml: no scrape job named actorhub",
    )
    check("alerts.yaml" in config.get("rule_files", []), "prometheus.yaml: rule_files must load alerts.yaml")


def check_dashboard(promtool):
    dashboard = json.loads((DEPLOY / "grafana" / "actorhub.json").read_text(encoding="utf-8"))
    check(dashboard.get("uid") and dashboard.get("title"), "dashboard: needs a uid and a title")
    variables = {variable["name"]: variable for variable in dashboard.get("templating", {}).get("list", [])}
    check(variables.get("datasource", {}).get("type") == "datasource", "dashboard: needs a datasource variable")
    ids = set()
    cells = set()
    expressions = []
    for panel in dashboard["panels"]:
        check(panel["id"] not in ids, f"dashboard: panel id {panel['id']} used twice")
        ids.add(panel["id"])
        grid = panel["gridPos"]
        check(grid["x"] + grid["w"] <= GRID_WIDTH, f"dashboard: panel {panel['title']!r} is wider than the grid")
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                check((x, y) not in cells, f"dashboard: panel {panel['title']!r} overlaps another at {(x, y)}")
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        check(panel.get("datasource", {}).get("uid") == "${datasource}", f"dashboard: panel {panel['title']!r} must use $datasource")
        check(panel.get("targets"), f"dashboard: panel {panel['title']!r} has no query")
        for target in panel.get("targets", []):
            expressions.append((panel["title"], target["expr"]))
    # promtool parses every query as a recording rule, with Grafana's variables given values.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}",
         "expr": expr.replace("$__rate_interval", "5m").replace("$instance", ".*")}
        for index, (_, expr) in enumerate(expressions)
    ]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
        yaml.safe_dump(rules, file)
    outcome = subprocess.run([promtool, "check", "rules", file.name], capture_output=True, text=True)
    pathlib.Path(file.name).unlink()
    check(outcome.returncode == 0, f"dashboard: promtool rejects a query:\n{outcome.stdout}{outcome.stderr}")
    print(f"dashboard: {len(expressions)} queries parse")


def check_dockerfile():
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    with open(ROOT / "Cargo.toml", "rb") as file:
        workspace = tomllib.load(file)
    with open(ROOT / "node" / "Cargo.toml", "rb") as file:
        node = tomllib.load(file)
    binaries = [binary["name"] for binary in node.get("bin", [])]
    check("node" in binaries, f"node/Cargo.toml: no binary named node ({binaries})")
    check("cargo build --release --locked -p node" in dockerfile, "Dockerfile: must build -p node --release --locked")
    rust = workspace["workspace"]["package"]["rust-version"]
    check(f"ARG RUST_VERSION={rust}" in dockerfile, f"Dockerfile: RUST_VERSION must be the workspace's rust-version {rust}")
    for source in re.findall(r"^COPY (?:--chmod=\S+ )?(deploy/\S+) ", dockerfile, re.MULTILINE):
        check((ROOT / source).exists(), f"Dockerfile: COPY {source}: no such file")
    check(re.search(r"^USER 10001", dockerfile, re.MULTILINE), "Dockerfile: must run as the unprivileged user 10001")
    check(re.search(r"^HEALTHCHECK ", dockerfile, re.MULTILINE), "Dockerfile: needs a HEALTHCHECK")
    exposed = set(re.findall(r"^EXPOSE (.+)$", dockerfile, re.MULTILINE)[0].split())
    statefulset = load_docs(DEPLOY / "k8s" / "statefulset.yaml")[0]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    ports = {str(port["containerPort"]) for port in container["ports"]}
    check(ports <= exposed, f"Dockerfile: EXPOSE {exposed} misses the StatefulSet's ports {ports}")
    check('ENTRYPOINT ["node", "run"]' in dockerfile, "Dockerfile: the entrypoint must be `node run`")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--promtool", required=True)
    arguments = parser.parse_args()
    check_kubernetes()
    check_compose()
    check_alerts()
    check_dashboard(arguments.promtool)
    check_dockerfile()
    if failures:
        for failure in failures:
            print(f"FAIL {failure}", file=sys.stderr)
        sys.exit(1)
    print("deploy/ is consistent")


if __name__ == "__main__":
    main()
