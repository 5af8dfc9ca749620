"""deploy/: the manifests parse, validate, and agree with each other and with the code.

No Docker engine or cluster is needed. Kubernetes manifests are rendered the way
``kubectl apply -k`` would (with ``kubectl kustomize`` when it is installed, else with the
small renderer below, and the two are compared when both are there), validated against the
Kubernetes JSON schemas bundled by ``kubernetes-validate`` (offline, strict: a misspelt field
fails), then cross-checked: names that are referenced exist, ports/probes/Services agree, the
commands are real ``msvlm-node`` subcommands, every ``MSVLM_NODE_*`` variable is a settings
key, and each container's config file plus environment loads with ``load_settings``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from node.cli import build_parser
from node.config import CONFIG_ENV, ENV_PREFIX, NodeSection, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", "cpu-demo": K8S / "overlays" / "cpu-demo"}
#: the oldest Kubernetes we support and the newest schema kubernetes-validate bundles
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
NODE_IMAGE = "msvlm-node"
#: [api] keys the deployment sets while node/api.py may not have added [api] to Settings yet;
#: once Settings has the table, its real fields are checked instead
PENDING_TABLES = {"api": {"host", "port", "tokens"}}
DEFAULT_API_PORT = 8080

Doc = dict[str, Any]


# --- YAML ------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """Safe YAML plus compose's merge tags (``!reset``, ``!override``)."""


class Reset:
    """compose's ``!reset``: drop the value inherited from earlier files."""


def _compose_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if suffix == "reset":
        return Reset()
    if suffix == "override":
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)  # type: ignore[arg-type]
    raise yaml.constructor.ConstructorError(None, None, f"unknown tag !{suffix}", node.start_mark)


_Loader.add_multi_constructor("!", _compose_tag)


def load_yaml(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.load_all(handle, Loader=_Loader) if doc is not None]


def load_one(path: Path) -> Any:
    docs = load_yaml(path)
    assert len(docs) == 1, f"{path}: expected one YAML document"
    return docs[0]


# --- a small kustomize: resources, configMapGenerator, strategic-merge patches, transformers ----

#: list fields merged item by item in a strategic merge patch (Kubernetes' patchMergeKey);
#: every other list is replaced whole, as Kubernetes does for e.g. tolerations and accessModes
_MERGE_KEYS = {
    "containers": ("name",),
    "initContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
}


def _identity(field: str, item: Any) -> tuple[Any, ...] | None:
    if not isinstance(item, dict):
        return None
    if field == "ports":  # container ports by containerPort, Service ports by (port, protocol)
        if "containerPort" in item:
            return (item["containerPort"], item.get("protocol", "TCP"))
        return (item.get("port"), item.get("protocol", "TCP"))
    keys = _MERGE_KEYS.get(field)
    return tuple(item.get(k) for k in keys) if keys else None


def _without_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_directives(v) for k, v in value.items() if k != "$patch"}
    if isinstance(value, list):
        return [_without_directives(v) for v in value]
    return value


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            if key == "$patch":
                continue
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = _without_directives(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and patch and _identity(field, patch[0]):
        items = copy.deepcopy(base)
        for item in patch:
            ident = _identity(field, item)
            match = next((i for i, old in enumerate(items) if _identity(field, old) == ident), None)
            if item.get("$patch") == "delete":
                assert match is not None, f"patch deletes {field} item {ident}, which is not there"
                del items[match]
            elif match is not None:
                items[match] = strategic_merge(items[match], item, field)
            else:
                items.append(_without_directives(item))
        return items
    return _without_directives(patch)


def _find(docs: list[Doc], kind: str, name: str) -> Doc | None:
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)


def render_builtin(directory: Path) -> list[Doc]:
    """What ``kubectl kustomize`` gives, minus the ConfigMap hash suffixes."""
    kustomization = load_one(directory / "kustomization.yaml")
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        docs += render_builtin(path) if path.is_dir() else load_yaml(path)
    for generator in kustomization.get("configMapGenerator", []):
        data = {Path(f).name: (directory / f).read_text(encoding="utf-8") for f in generator.get("files", [])}
        existing = _find(docs, "ConfigMap", generator["name"])
        behavior = generator.get("behavior", "create")
        if behavior == "create":
            assert existing is None, f"ConfigMap {generator['name']} generated twice"
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": generator["name"]},
                    "data": data,
                }
            )
        else:
            assert existing is not None, f"behavior {behavior}: no ConfigMap {generator['name']} to change"
            existing["data"] = data if behavior == "replace" else {**existing.get("data", {}), **data}
    for entry in kustomization.get("patches", []):
        patch = load_one(directory / entry["path"])
        kind, name = patch["kind"], patch["metadata"]["name"]
        target = _find(docs, kind, name)
        assert target is not None, f"{entry['path']}: no {kind} {name} to patch"
        index = docs.index(target)
        if patch.get("$patch") == "delete":
            del docs[index]
        else:
            docs[index] = strategic_merge(target, patch)
    namespace = kustomization.get("namespace")
    for doc in docs:
        meta = doc["metadata"]
        if namespace and doc["kind"] != "Namespace":
            meta["namespace"] = namespace
        for label in kustomization.get("labels", []):
            meta.setdefault("labels", {}).update(label["pairs"])
        for image in kustomization.get("images", []):
            for container in all_containers(doc):
                repository, tag = split_image(container["image"])
                if repository == image["name"]:
                    new_tag = image.get("newTag", tag)
                    container["image"] = image.get("newName", repository) + (f":{new_tag}" if new_tag else "")
    return docs


def render_kubectl(directory: Path) -> list[Doc] | None:
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(directory)]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", str(directory)]
    else:
        return None
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"
    docs = [d for d in yaml.safe_load_all(result.stdout) if d is not None]
    generated = {
        g["name"]
        for k in KUSTOMIZATIONS.values()
        for g in load_one(k / "kustomization.yaml").get("configMapGenerator", [])
    }
    names = "|".join(map(re.escape, sorted(generated)))
    pattern = re.compile(rf"^({names})-[a-z0-9]{{10}}$")

    def unhash(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: unhash(v) for k, v in value.items()}
        if isinstance(value, list):
            return [unhash(v) for v in value]
        if isinstance(value, str) and (match := pattern.match(value)):
            return match.group(1)
        return value

    return [unhash(d) for d in docs]


def split_image(image: str) -> tuple[str, str]:
    repository, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    return repository, tag


def pod_spec(doc: Doc) -> Doc | None:
    if doc["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return None


def all_containers(doc: Doc) -> list[Doc]:
    spec = pod_spec(doc)
    return [] if spec is None else spec.get("initContainers", []) + spec.get("containers", [])


def is_node_container(container: Doc) -> bool:
    return split_image(container["image"])[0].rsplit("/", 1)[-1] == NODE_IMAGE


_RENDERED: dict[tuple[str, str], list[Doc] | None] = {}


def rendered(name: str, renderer: str) -> list[Doc]:
    key = (name, renderer)
    if key not in _RENDERED:
        directory = KUSTOMIZATIONS[name]
        _RENDERED[key] = render_builtin(directory) if renderer == "builtin" else render_kubectl(directory)
    docs = _RENDERED[key]
    if docs is None:
        pytest.skip("neither kubectl nor kustomize is installed")
    return copy.deepcopy(docs)


@pytest.fixture(
    params=[(n, r) for n in KUSTOMIZATIONS for r in ("builtin", "kubectl")], ids=lambda p: f"{p[0]}-{p[1]}"
)
def manifests(request: pytest.FixtureRequest) -> list[Doc]:
    return rendered(*request.param)


# --- settings and the CLI ------------------------------------------------------------------


def check_env_name(name: str) -> None:
    """``MSVLM_NODE_<TABLE>__<KEY>`` must name a field of Settings (or a pending [api] key)."""
    if name == CONFIG_ENV:
        return
    assert name.startswith(ENV_PREFIX), f"{name}: not {ENV_PREFIX}<TABLE>__<KEY>"
    table, sep, key = name.removeprefix(ENV_PREFIX).lower().partition("__")
    assert sep and table and key, f"{name}: not {ENV_PREFIX}<TABLE>__<KEY> (two underscores)"
    fields = Settings.model_fields
    if table not in fields:
        assert key in PENDING_TABLES.get(table, set()), f"{name}: Settings has no [{table}] table"
        return
    section = fields[table].annotation
    assert key.split("__")[0] in section.model_fields, f"{name}: [{table}] has no key {key!r}"  # type: ignore[union-attr]


def check_node_args(args: list[str], where: str) -> None:
    """The arguments parse as an ``msvlm-node`` command line, with valid roles."""
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"{where}: `msvlm-node {' '.join(args)}` does not parse") from exc
    assert parsed.command in ("serve", "worker", "db"), f"{where}: {parsed.command} is not a service command"
    if getattr(parsed, "roles", None):
        NodeSection(roles=tuple(r.strip() for r in parsed.roles.split(",")))  # raises on a bad role


def settings_with(config: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """What a process with this config file and environment would load."""
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(ENV_PREFIX):
                patch.delenv(name)
        for name, value in env.items():
            if name.startswith(ENV_PREFIX) and name != CONFIG_ENV:
                patch.setenv(name, value)
        return load_settings(config)


def api_port(settings: Settings, env: dict[str, str]) -> int:
    api = getattr(settings, "api", None)
    return int(api.port) if api is not None else int(env.get("MSVLM_NODE_API__PORT", DEFAULT_API_PORT))


def api_host(settings: Settings, env: dict[str, str]) -> str:
    api = getattr(settings, "api", None)
    return str(api.host) if api is not None else env.get("MSVLM_NODE_API__HOST", "127.0.0.1")


def is_under(path: Path | str, root: str) -> bool:
    return Path(path) == Path(root) or Path(root) in Path(path).parents


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, comments skipped, one level of quotes removed (dotenv and systemd alike)."""
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = shlex.split(value)[0] if value.strip() else ""
    return env


# --- every file --------------------------------------------------------------------------------


def test_every_yaml_and_json_file_in_deploy_parses() -> None:
    yaml_files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(yaml_files) >= 10
    for path in yaml_files:
        assert load_yaml(path), f"{path} is empty"
    for path in DEPLOY.rglob("*.json"):
        json.loads(path.read_text(encoding="utf-8"))


def test_every_toml_file_in_deploy_loads_as_settings() -> None:
    tomls = sorted(DEPLOY.rglob("*.toml"))
    assert {p.relative_to(DEPLOY).as_posix() for p in tomls} >= {
        "config/container.toml",
        "config/production.toml",
        "k8s/base/node.toml",
        "k8s/overlays/cpu-demo/node.toml",
    }
    for path in tomls:
        load_settings(path)  # unknown keys (an [api] table before Settings has one) fail here


# --- Kubernetes --------------------------------------------------------------------------------


def test_kustomizations_list_only_files_that_exist() -> None:
    for directory in KUSTOMIZATIONS.values():
        kustomization = load_one(directory / "kustomization.yaml")
        listed = list(kustomization.get("resources", []))
        listed += [p["path"] for p in kustomization.get("patches", [])]
        listed += [f for g in kustomization.get("configMapGenerator", []) for f in g.get("files", [])]
        for entry in listed:
            assert (directory / entry).exists(), f"{directory}/kustomization.yaml lists missing {entry}"
        here = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
        assert here <= set(kustomization.get("resources", [])), f"{directory}: not in kustomization: {here}"


def _canonical(value: Any, field: str = "") -> Any:
    """Merged lists in a stable order: kustomize moves patched items, which changes no meaning."""
    if isinstance(value, dict):
        return {k: _canonical(v, k) for k, v in value.items()}
    if isinstance(value, list):
        items = [_canonical(v, field) for v in value]
        if field in _MERGE_KEYS:
            items.sort(key=lambda item: repr(_identity(field, item)))
        return items
    return value


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_builtin_renderer_agrees_with_kubectl_kustomize(name: str) -> None:
    ours = {(d["kind"], d["metadata"]["name"]): _canonical(d) for d in rendered(name, "builtin")}
    theirs = {(d["kind"], d["metadata"]["name"]): _canonical(d) for d in rendered(name, "kubectl")}
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key] == theirs[key], f"{name}: {key} renders differently"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_schema(manifests: list[Doc], version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in manifests:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} at {path}: {exc.message}") from exc


def test_names_are_unique_and_references_resolve(manifests: list[Doc]) -> None:
    names: dict[str, set[str]] = {}
    for doc in manifests:
        kind, name = doc["kind"], doc["metadata"]["name"]
        assert name not in names.setdefault(kind, set()), f"two {kind}s named {name}"
        names[kind].add(name)
    for doc in manifests:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        spec = pod_spec(doc)
        if spec is None:
            continue
        if "serviceAccountName" in spec:
            assert spec["serviceAccountName"] in names.get("ServiceAccount", set()), where
        if doc["kind"] == "StatefulSet":
            assert doc["spec"]["serviceName"] in names["Service"], where
        claims = names.get("PersistentVolumeClaim", set()) | {
            t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])
        }
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        volumes.update({t["metadata"]["name"]: t for t in doc["spec"].get("volumeClaimTemplates", [])})
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in names.get("ConfigMap", set()), where
            if "secret" in volume:
                assert volume["secret"]["secretName"] in names.get("Secret", set()), where
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, where
        for container in all_containers(doc):
            mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
            assert len(mounts) == len(set(mounts)), f"{where}: a path mounted twice"
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}: mounts undeclared volume {mount['name']}"
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in names["Secret"], where
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in names["ConfigMap"], where
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] in names["Secret"], where
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["name"] in names["ConfigMap"], where


def test_probes_and_services_point_at_declared_ports(manifests: list[Doc]) -> None:
    workloads = [d for d in manifests if pod_spec(d) is not None]
    for doc in workloads:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        template_labels = doc["spec"]["template"]["metadata"]["labels"]
        if doc["kind"] != "Job":
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector.items() <= template_labels.items(), f"{where}: selector does not match its pods"
        for container in all_containers(doc):
            ports = container.get("ports", [])
            declared = {p["containerPort"] for p in ports} | {p["name"] for p in ports if "name" in p}
            assert len(ports) == len({p["containerPort"] for p in ports}), f"{where}: duplicate port"
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                action = container.get(probe, {})
                for kind in ("httpGet", "tcpSocket", "grpc"):
                    if kind in action:
                        port = action[kind]["port"]
                        assert port in declared, f"{where} {probe}: port {port} is not declared"
    for service in (d for d in manifests if d["kind"] == "Service"):
        selector = service["spec"]["selector"].items()
        selected = [d for d in workloads if selector <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert selected, f"Service {service['metadata']['name']} selects no pods"
        for workload in selected:
            containers = workload["spec"]["template"]["spec"]["containers"]
            ports = [p for c in containers for p in c.get("ports", [])]
            targets = {p["containerPort"] for p in ports} | {p.get("name") for p in ports}
            for port in service["spec"]["ports"]:
                assert port.get("targetPort", port["port"]) in targets, (
                    f"Service {service['metadata']['name']}: targetPort {port.get('targetPort')} "
                    f"not on {workload['metadata']['name']}"
                )


def test_pods_meet_the_restricted_pod_security_profile(manifests: list[Doc]) -> None:
    namespace = next(d for d in manifests if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in manifests:
        spec = pod_spec(doc)
        if spec is None:
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"].get("runAsUser", 1) != 0, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        for container in all_containers(doc):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert context["readOnlyRootFilesystem"] is True, where
            assert "limits" in container["resources"] and "requests" in container["resources"], where
            if is_node_container(container):
                assert spec["securityContext"]["runAsUser"] == 10001, f"{where}: the image's uid"
                mounted = {m["mountPath"] for m in container["volumeMounts"]}
                assert "/tmp" in mounted, f"{where}: no writable /tmp for a read-only root"


def test_secret_template_is_marked_and_consistent(manifests: list[Doc]) -> None:
    secrets = {d["metadata"]["name"]: d for d in manifests if d["kind"] == "Secret"}
    for secret in secrets.values():
        assert secret["metadata"]["annotations"]["msvlm-node/template"].startswith("TEMPLATE")
        assert any("CHANGE-ME" in v for v in secret["stringData"].values()), "placeholders only"
    node = secrets["msvlm-node-secrets"]["stringData"]
    for name in node:
        check_env_name(name)
    assert isinstance(json.loads(node["MSVLM_NODE_API__TOKENS"]), list)
    url = re.fullmatch(
        r"postgresql\+psycopg://([^:]+):([^@]+)@([^:/]+):(\d+)/(\w+)", node["MSVLM_NODE_DATABASE__URL"]
    )
    assert url, "the node's database URL is not postgresql+psycopg://user:password@host:port/db"
    postgres = secrets["msvlm-postgres"]["stringData"]
    assert url.groups()[:2] == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"])
    assert url.group(5) == postgres["POSTGRES_DB"]
    service = next(d for d in manifests if d["kind"] == "Service" and d["metadata"]["name"] == url.group(3))
    assert int(url.group(4)) in {p["port"] for p in service["spec"]["ports"]}


def _container_env(container: Doc, secrets: dict[str, Doc]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(secrets[source["secretRef"]["name"]]["stringData"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = "pod-name"
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]]["stringData"][ref["key"]]
    return env


def _node_pods(manifests: list[Doc]) -> Iterator[tuple[Doc, Doc, Doc]]:
    for doc in manifests:
        for container in all_containers(doc):
            if is_node_container(container):
                yield doc, pod_spec(doc) or {}, container


def test_node_containers_run_msvlm_node_with_valid_settings(
    manifests: list[Doc], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {d["metadata"]["name"]: d for d in manifests if d["kind"] == "Secret"}
    config_maps = {d["metadata"]["name"]: d for d in manifests if d["kind"] == "ConfigMap"}
    claims = {d["metadata"]["name"]: d for d in manifests if d["kind"] == "PersistentVolumeClaim"}
    seen: set[str] = set()
    for doc, spec, container in _node_pods(manifests):
        where = f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}"
        assert "command" not in container, f"{where}: keep the image's ENTRYPOINT (msvlm-node)"
        check_node_args(container["args"], where)
        env = _container_env(container, secrets)
        for name in env:
            if name.startswith("MSVLM"):
                check_env_name(name)
        # the config file is the ConfigMap key mounted where MSVLM_NODE_CONFIG points
        config_path = Path(env[CONFIG_ENV])
        mount = next(m for m in container["volumeMounts"] if is_under(config_path, m["mountPath"]))
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        data = config_maps[volume["configMap"]["name"]]["data"]
        local = tmp_path / f"{len(seen)}.toml"
        local.write_text(data[config_path.relative_to(mount["mountPath"]).as_posix()], encoding="utf-8")
        settings = settings_with(local, env, monkeypatch)
        seen.add(container["args"][0])

        assert settings.database.url.startswith("postgresql"), f"{where}: pods share one PostgreSQL"
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        # a long-running container's settings agree with its pod: grace period, ports, probes,
        # storage and model mounts
        if container in spec["containers"] and doc["kind"] != "Job":
            grace = spec["terminationGracePeriodSeconds"]
            assert grace > settings.node.drain_seconds + settings.delivery.timeout_seconds, where
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports["api"] == api_port(settings, env), f"{where}: API port"
            assert api_host(settings, env) == "0.0.0.0", f"{where}: kubelet probes cannot reach loopback"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", where
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
            if container["args"][0] == "serve":
                assert ports["dicom"] == settings.node.port, f"{where}: DICOM port"
            storage = next(m for m in mounts.values() if is_under(settings.storage.path, m["mountPath"]))
            claim = volumes[storage["name"]]["persistentVolumeClaim"]["claimName"]
            assert claim in claims and not storage.get("readOnly"), f"{where}: storage is not writable"
            if settings.model.path is not None:
                model = next(m for m in mounts.values() if is_under(settings.model.path, m["mountPath"]))
                assert model.get("readOnly") is True, f"{where}: mount the model read-only"
    assert seen >= {"serve", "worker", "db"}


def test_receivers_and_workers_share_one_storage_claim(manifests: list[Doc]) -> None:
    claims: dict[str, set[tuple[str, str]]] = {}
    for doc, spec, container in _node_pods(manifests):
        if container in spec["containers"] and doc["kind"] == "Deployment":
            volumes = {v["name"]: v for v in spec["volumes"]}
            for mount in container["volumeMounts"]:
                claim = volumes[mount["name"]].get("persistentVolumeClaim", {}).get("claimName")
                if claim and not mount.get("readOnly"):
                    claims.setdefault(claim, set()).add((container["args"][0], mount["mountPath"]))
    assert list(claims) == ["msvlm-storage"], claims
    assert {role for role, _ in claims["msvlm-storage"]} == {"serve", "worker"}
    assert len({path for _, path in claims["msvlm-storage"]}) == 1, "mounted at different paths"


def test_base_runs_gpu_workers_on_shared_claims() -> None:
    docs = rendered("base", "builtin")
    worker = _find(docs, "Deployment", "msvlm-node-worker")
    assert worker is not None
    spec = worker["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {t["key"] for t in spec["tolerations"]} == {"nvidia.com/gpu"} and spec["nodeSelector"]
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0, "a rollout must not need a spare GPU"
    assert {e["name"]: e.get("value") for e in container["env"]}["MSVLM_NODE_MODEL__DEVICE"] == "cuda"
    storage = _find(docs, "PersistentVolumeClaim", "msvlm-storage")
    assert storage is not None and storage["spec"]["accessModes"] == ["ReadWriteMany"]
    assert _find(docs, "PersistentVolumeClaim", "msvlm-models") is not None
    dicom = _find(docs, "Service", "msvlm-node-dicom")
    assert dicom is not None and dicom["spec"]["externalTrafficPolicy"] == "Local", "keep callers' addresses"


def test_cpu_demo_needs_no_gpu_and_no_model_claim() -> None:
    docs = rendered("cpu-demo", "builtin")
    assert "nvidia.com" not in json.dumps(docs)
    assert "msvlm-models" not in json.dumps(docs)
    worker = _find(docs, "Deployment", "msvlm-node-worker")
    assert worker is not None
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e.get("value") for e in container["env"]}["MSVLM_NODE_MODEL__DEVICE"] == "cpu"
    images = {c["image"] for d in docs for c in all_containers(d) if is_node_container(c)}
    assert images == {"msvlm-node:0.1.0-cpu"}


def optional_kubernetes_validate() -> Any | None:
    try:
        import kubernetes_validate
    except ImportError:
        return None
    return kubernetes_validate


def readme_snippets() -> list[Any]:
    """The YAML in deploy/README.md: ```yaml blocks and heredocs inside ```bash blocks."""
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    found = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        found += [yaml.safe_load(b) for b in re.findall(r"<<'EOF'\n(.*?)\nEOF\n", block, re.S)]
    return found


def test_readme_snippets_and_paths_are_real(monkeypatch: pytest.MonkeyPatch) -> None:
    snippets = readme_snippets()
    pods = [s for s in snippets if isinstance(s, dict) and s.get("kind") == "Pod"]
    overrides = [s for s in snippets if isinstance(s, dict) and "services" in s]
    assert pods and overrides
    validator = optional_kubernetes_validate()
    for pod in pods:
        if validator is not None:
            validator.validate(pod, KUBERNETES_VERSIONS[0], strict=True)
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]}
        assert claims <= {
            d["metadata"]["name"] for d in rendered("base", "builtin") if d["kind"] == "PersistentVolumeClaim"
        }
    services = compose_file()["services"]
    for override in overrides:
        for name, service in override["services"].items():
            assert name in services
            for key in service.get("environment", {}):
                check_env_name(key)
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for path in re.findall(r"\bdeploy/[\w.@/-]*[\w@]", text):
        if not path.endswith(("/.env", "compose.override.yaml")):  # made by the reader
            assert (REPO / path).exists(), f"deploy/README.md names {path}, which does not exist"


# --- compose -----------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """compose's ${VAR}, ${VAR:-default}, ${VAR:?error} with the variables of deploy/.env."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if name in variables and (variables[name] or not (op or "").startswith(":")):
            return variables[name]
        assert not (op or "").endswith("?"), f"${{{name}}} is required and env.example does not set it"
        return arg if op else ""

    return _INTERPOLATION.sub(one, value)


def compose_file() -> Doc:
    return load_one(DEPLOY / "compose.yaml")  # type: ignore[no-any-return]


def node_services(compose: Doc) -> dict[str, Doc]:
    return {n: s for n, s in compose["services"].items() if s.get("image", "").startswith(NODE_IMAGE + ":")}


def test_compose_services_depend_on_services_that_exist() -> None:
    compose = compose_file()
    services = compose["services"]
    assert {"db", "migrate", "receiver", "worker", "orthanc"} <= services.keys()
    for name, service in services.items():
        depends = service.get("depends_on", {})
        if isinstance(depends, list):  # the short form
            depends = {d: {} for d in depends}
        for target, condition in depends.items():
            assert target in services, f"{name} depends on unknown service {target}"
            wanted = condition.get("condition", "service_started")
            assert wanted in ("service_started", "service_healthy", "service_completed_successfully"), name
            if wanted == "service_healthy":
                assert "test" in services[target].get("healthcheck", {}), f"{target} has no healthcheck"
        assert isinstance(service.get("restart", "no"), str), f"{name}: quote restart values"
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: quote ports (YAML 1.1 reads 22:22 as a number)"
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for name in ("receiver", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_compose_volumes_are_declared_and_bind_mounts_exist() -> None:
    compose = compose_file()
    declared = set(compose.get("volumes", {}))
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert target.startswith("/"), f"{name}: {volume}"
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: bind mount source {source} is missing"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"
    storage = {
        name: volume
        for name, service in node_services(compose).items()
        for volume in service["volumes"]
        if volume.startswith("storage:")
    }
    assert storage.keys() >= {"receiver", "worker"} and len(set(storage.values())) == 1


def test_compose_node_services_load_their_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = compose_file()
    variables = read_env_file(DEPLOY / "env.example")
    nodes = node_services(compose)
    assert nodes.keys() == {"migrate", "receiver", "worker"}
    for name, service in nodes.items():
        assert service["build"]["dockerfile"] == "deploy/Dockerfile" and service["build"]["context"] == ".."
        check_node_args(service["command"], name)
        env = {k: interpolate(str(v), variables) for k, v in service["environment"].items()}
        for key in env:
            if key.startswith("MSVLM"):
                check_env_name(key)
        binds = dict(reversed(v.split(":")[:2]) for v in service["volumes"])  # type: ignore[misc]
        settings = settings_with(DEPLOY / binds[env[CONFIG_ENV]], env, monkeypatch)
        assert settings.database.url.startswith("postgresql+psycopg://msvlm:")
        assert "@db:5432/" in settings.database.url
        grace = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
        assert grace and int(grace[1]) > settings.node.drain_seconds + settings.delivery.timeout_seconds
        mount = next(v.split(":")[1] for v in service["volumes"] if v.startswith("storage:"))
        assert is_under(settings.storage.path, mount), f"{name}: storage.path is not on the storage volume"
        if name == "receiver":
            published = {p.split(":")[-1]: p for p in service["ports"]}
            assert str(settings.node.port) in published
            assert str(api_port(settings, env)) in published
            assert published[str(api_port(settings, env))].startswith("127.0.0.1:"), "API on loopback only"
            assert api_host(settings, env) == "0.0.0.0", "a published API must leave the container's loopback"
            assert service["command"][service["command"].index("--roles") + 1] == "receiver,scheduler"


def test_compose_worker_reserves_a_gpu_and_the_cpu_override_drops_it() -> None:
    worker = compose_file()["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert worker["environment"]["MSVLM_NODE_MODEL__DEVICE"] == "cuda"
    override = load_one(DEPLOY / "compose.cpu.yaml")
    assert override["services"].keys() <= compose_file()["services"].keys()
    cpu = override["services"]["worker"]
    assert isinstance(cpu["deploy"], Reset)
    assert cpu["environment"] == {"MSVLM_NODE_MODEL__DEVICE": "cpu"}


def test_env_example_sets_every_required_compose_variable() -> None:
    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    referenced = {m["name"] for m in _INTERPOLATION.finditer(text)}
    required = {m["name"] for m in _INTERPOLATION.finditer(text) if (m["op"] or "").endswith("?")}
    example = read_env_file(DEPLOY / "env.example")
    assert required <= example.keys()
    assert example.keys() <= referenced, f"unused in compose.yaml: {example.keys() - referenced}"
    assert isinstance(json.loads(example["MSVLM_API_TOKENS"]), list)
    assert ".env" in (DEPLOY / ".gitignore").read_text(encoding="utf-8").split()


def test_orthanc_and_the_node_know_each_other() -> None:
    orthanc = json.loads((DEPLOY / "orthanc" / "orthanc.json").read_text(encoding="utf-8"))
    settings = load_settings(DEPLOY / "config" / "production.toml")
    (msvlm,) = [m for m in orthanc["DicomModalities"].values() if m["AET"] == settings.node.ae_title]
    assert msvlm["Host"] == "receiver" and msvlm["Port"] == settings.node.port
    assert msvlm["AllowStore"] is True
    assert orthanc["DicomAlwaysAllowStore"] is False, "C-STORE (our SRs) only from known modalities"
    assert orthanc["DicomAet"] in {p.ae_title for p in settings.security.peers}
    (destination,) = [d for d in settings.delivery.destinations if d.host == "orthanc"]
    assert (destination.ae_title, destination.port) == (orthanc["DicomAet"], orthanc["DicomPort"])
    service = compose_file()["services"]["orthanc"]
    assert any(v.endswith(":/etc/orthanc/msvlm-demo.json:ro") for v in service["volumes"])
    assert service["environment"]["TCP_NODELAY"] == "1"


# --- systemd -----------------------------------------------------------------------------------

SYSTEMD = DEPLOY / "systemd"
UNITS = ("msvlm-node-receiver.service", "msvlm-node-worker@.service")


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "min" else 1)


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_unit_is_hardened_and_runs_msvlm_node(unit: str, monkeypatch: pytest.MonkeyPatch) -> None:
    service = parse_unit(SYSTEMD / unit)["Service"]
    one = {k: v[-1] for k, v in service.items()}
    assert one["User"] not in ("root", "0") and one["Restart"] == "on-failure"
    assert "/etc/msvlm-node/env" in service["EnvironmentFile"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "KillSignal": "SIGTERM",
        "ProtectHome": "yes",
    }.items():
        assert one[key] == value, f"{unit}: {key}"
    env: dict[str, str] = {}
    for line in service["Environment"]:
        for item in shlex.split(line.replace("%i", "0").replace("%H", "host")):
            name, _, value = item.partition("=")
            env[name] = value
    env.update(read_env_file(SYSTEMD / "env.example"))
    for name in env:
        if name.startswith("MSVLM"):
            check_env_name(name)
    settings = settings_with(DEPLOY / "config" / "production.toml", env, monkeypatch)
    assert _seconds(one["TimeoutStopSec"]) > settings.node.drain_seconds + settings.delivery.timeout_seconds
    writable = " ".join(service["ReadWritePaths"]).split()
    assert any(is_under(settings.storage.path, p) for p in writable), f"{unit}: storage path is read-only"
    for command in service.get("ExecStartPre", []) + service["ExecStart"]:
        program, *args = shlex.split(command)
        assert Path(program).name == "msvlm-node"
        check_node_args(args, unit)
    if unit.startswith("msvlm-node-receiver"):
        assert shlex.split(service["ExecStartPre"][0])[1:] == ["db", "check"]
    else:
        assert "%i" in " ".join(service["Environment"]), "the instance (GPU index) must mean something"


def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    for unit in UNITS:
        # verify also checks that ExecStart exists, which the installed venv would provide
        text = (SYSTEMD / unit).read_text(encoding="utf-8")
        text = text.replace("/opt/msvlm-node/venv/bin/msvlm-node", "/bin/true")
        (tmp_path / unit.replace("@.", "@0.")).write_text(text, encoding="utf-8")
    units = [str(tmp_path / u.replace("@.", "@0.")) for u in UNITS]
    result = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60, check=False
    )
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "msvlm-node" in line]
    assert not complaints, "\n".join(complaints)


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    lines = [
        line
        for line in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip() if " " in line.strip() else "")
        for line in joined.splitlines()
        if line.strip()
    ]


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins, and a pattern matching a parent counts."""
    excluded = False
    for raw in (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_dockerfile_builds_a_non_root_image_with_both_torch_variants() -> None:
    instructions = dockerfile_instructions()
    final = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    stage = instructions[final:]
    args = {a.partition("=")[0]: a.partition("=")[2] for op, a in instructions if op == "ARG"}
    assert args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    assert args["VARIANT"] == "cpu"
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"\bcpu\)", text) and re.search(r"\bcuda\)", text), "both VARIANT values handled"
    torch = next(
        d
        for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        if d.startswith("torch")
    )
    assert Version(args["TORCH_VERSION"]) in SpecifierSet(torch.removeprefix("torch"))
    run = " ".join(a for op, a in stage if op == "RUN")
    assert "dcmtk" in run and "dicom3tools" in run and "--no-install-recommends" in run
    users = [a for op, a in stage if op == "USER"]
    assert users and users[-1].split(":")[0] == "10001", "run as the non-root uid 10001"
    (healthcheck,) = [a for op, a in stage if op == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "urllib" in healthcheck and "curl" not in healthcheck
    exposed = {p for op, a in stage if op == "EXPOSE" for p in a.split()}
    assert exposed == {"11112", "8080"}
    volumes = {v for op, a in stage if op == "VOLUME" for v in json.loads(a)}
    assert volumes == {"/data", "/models"}
    (entrypoint,) = [json.loads(a) for op, a in stage if op == "ENTRYPOINT"]
    (cmd,) = [json.loads(a) for op, a in stage if op == "CMD"]
    assert entrypoint == [NODE_IMAGE] and cmd == ["serve"]
    check_node_args(cmd, "Dockerfile CMD")
    env = " ".join(a for op, a in stage if op == "ENV")
    assert f"{CONFIG_ENV}=/etc/msvlm-node/node.toml" in env
    assert not re.search(r"MSVLM_NODE_(?!CONFIG)\w+=", env), "MSVLM_NODE_* in an image beats the config"
    assert "COPY deploy/config/container.toml /etc/msvlm-node/node.toml" in [f"{op} {a}" for op, a in stage]
    assert is_under(load_settings(DEPLOY / "config" / "container.toml").storage.path, "/data")


def test_dockerignore_sends_what_the_image_copies_and_nothing_else() -> None:
    copies = [a.split() for op, a in dockerfile_instructions() if op == "COPY" and not a.startswith("--from")]
    sources = [source for words in copies for source in words[:-1]]
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not dockerignore_excludes(source), f"COPY {source}: excluded by Dockerfile.dockerignore"
    for kept in ("node/cli.py", "migrations/env.py", "models/__init__.py", "models/weights/demo/config.json"):
        assert not dockerignore_excludes(kept), kept
    for left_out in (
        "tests/conftest.py",
        "var/msvlm-node.db",
        "bench/x.py",
        ".git/HEAD",
        ".venv/bin/python",
        "node/__pycache__/cli.cpython-311.pyc",
        "models/weights/big/model.safetensors",
    ):
        assert dockerignore_excludes(left_out), left_out
