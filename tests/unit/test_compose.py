"""Static consistency checks of the deployment files (no Docker needed).

docker-compose.yml, deploy/config.toml, deploy/prometheus.yml, deploy/grafana and
the Dockerfile must agree on topics, addresses, ports and paths.
"""

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from stream_monitor.config import ENV_PREFIX, env_keys
from ..support import dockerfile_env, dockerfile_instructions

ROOT = Path(__file__).resolve().parents[2]
MONITOR_CONFIG_PATH = "/etc/stream-monitor/config.toml"
EXPECTED_SERVICES = {"kafka", "redis", "create-topics", "monitor-1", "monitor-2", "prometheus", "alertmanager",
                     "grafana"}
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


@pytest.fixture(scope="module")
def config():
    with open(ROOT / "deploy" / "config.toml", "rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module")
def prometheus():
    return yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def monitor_services(services):
    """The services that run `stream-monitor run`, by name."""
    return {name: svc for name, svc in services.items() if name.startswith("monitor")}


def env(service):
    """A service's environment as a dict (compose allows a mapping or a KEY=VALUE list)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: str(v) for k, v in raw.items()}


def command_text(service):
    """A service's command (string or list) as one string."""
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else cmd


def host_port(address):
    """('host', port) from 'host:port'."""
    host, _, port = address.rpartition(":")
    return host, int(port)


def container_ports(service, key):
    """Container-side ports listed under `ports` or `expose`."""
    out = set()
    for item in service.get(key, []):
        text = str(item["target"] if isinstance(item, dict) else item).split("/")[0]
        out.add(int(text.rsplit(":", 1)[-1]))
    return out


def dockerfile_instruction(name):
    """The argument text of the last Dockerfile instruction `name`."""
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    found = [line.split(None, 1)[1] for line in lines if line.strip().upper().startswith(name + " ")]
    assert found, f"Dockerfile has no {name}"
    return found[-1].strip()


def test_expected_services_exist(services):
    assert EXPECTED_SERVICES <= set(services)


def test_no_version_key(compose):
    assert "version" not in compose


def test_kafka_is_official_image_in_kraft_mode(services):
    kafka = services["kafka"]
    assert kafka["image"].split(":")[0] == "apache/kafka"
    kenv = env(kafka)
    assert "controller" in kenv["KAFKA_PROCESS_ROLES"].split(",")
    assert "broker" in kenv["KAFKA_PROCESS_ROLES"].split(",")
    assert kenv["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert not any("zookeeper" in name.lower() for name in services)
    assert not any("ZOOKEEPER" in key for key in kenv)
    assert kenv["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_kafka_has_healthcheck_and_published_port(services):
    kafka = services["kafka"]
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])
    assert 9092 in container_ports(kafka, "ports")


def created_topics(service):
    """{topic: partitions} from the kafka-topics.sh --create calls of a service's command."""
    topics = {}
    for line in command_text(service).splitlines():
        args = shlex.split(line)
        if not args or not args[0].endswith("kafka-topics.sh") or "--create" not in args:
            continue
        assert "--if-not-exists" in args, line
        topics[args[args.index("--topic") + 1]] = int(args[args.index("--partitions") + 1])
    return topics


def test_create_topics_creates_every_configured_topic(services, config):
    svc = services["create-topics"]
    topics = created_topics(svc)
    kafka_cfg = config["kafka"]
    wanted = [*kafka_cfg["input_topics"], kafka_cfg["alert_topic"], kafka_cfg["dead_letter_topic"]]
    for topic in wanted:
        assert topic in topics, f"{topic} is not created by create-topics"
    assert svc["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert str(svc.get("restart")) == "no"


def test_input_topics_have_a_partition_per_replica(services, config, monitor_services):
    topics = created_topics(services["create-topics"])
    for topic in config["kafka"]["input_topics"]:
        assert topics[topic] >= len(monitor_services)


def test_create_topics_uses_the_advertised_listener(services):
    advertised = advertised_addresses(services["kafka"])
    for line in command_text(services["create-topics"]).splitlines():
        args = shlex.split(line)
        if "--bootstrap-server" in args:
            assert args[args.index("--bootstrap-server") + 1] in advertised


def advertised_addresses(kafka):
    """host:port of each advertised listener of the kafka service."""
    return {urlsplit(item.strip()).netloc for item in env(kafka)["KAFKA_ADVERTISED_LISTENERS"].split(",")}


def test_at_least_two_monitor_replicas_built_from_dockerfile(monitor_services):
    assert len(monitor_services) >= 2
    for name, svc in monitor_services.items():
        build = svc["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (ROOT / context / dockerfile).is_file(), name


def test_monitor_bootstrap_matches_kafka_and_config(services, monitor_services, config):
    advertised = advertised_addresses(services["kafka"])
    for name, svc in monitor_services.items():
        bootstrap = env(svc)["STREAM_MONITOR_KAFKA_BOOTSTRAP_SERVERS"]
        assert bootstrap in advertised, name
        assert bootstrap == config["kafka"]["bootstrap_servers"], name
        assert host_port(bootstrap)[0] == "kafka"


def test_monitor_redis_url_matches_redis_service(services, monitor_services, config):
    redis_ports = container_ports(services["redis"], "ports") | container_ports(services["redis"], "expose")
    for name, svc in monitor_services.items():
        url = urlsplit(env(svc)["STREAM_MONITOR_REDIS_URL"])
        assert url.scheme == "redis", name
        assert url.hostname == "redis" and "redis" in services, name
        assert (url.port or 6379) in redis_ports, name
        assert env(svc)["STREAM_MONITOR_REDIS_URL"] == config["redis"]["url"], name


def test_monitor_depends_on_topics_and_redis(monitor_services):
    for name, svc in monitor_services.items():
        deps = svc["depends_on"]
        assert deps["create-topics"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name


def test_config_mounted_at_the_path_the_command_reads(monitor_services):
    for name, svc in monitor_services.items():
        cmd = svc["command"]
        assert cmd[0] == "run", name
        config_path = cmd[cmd.index("-c") + 1]
        mounts = {}
        for volume in svc["volumes"]:
            source, target, *_ = volume.split(":")
            mounts[target] = source
        assert config_path in mounts, name
        assert (ROOT / mounts[config_path]).resolve() == (ROOT / "deploy" / "config.toml").resolve(), name
        assert any(v.endswith(":ro") for v in svc["volumes"] if v.split(":")[1] == config_path), name


def test_metrics_port_consistent(config, monitor_services, prometheus):
    port = config["service"]["metrics_port"]
    assert port > 0
    for name, svc in monitor_services.items():
        assert port in container_ports(svc, "expose"), name
    for target in prometheus_targets(prometheus):
        assert host_port(target)[1] == port, target
    assert f"EXPOSE {port}" in (ROOT / "Dockerfile").read_text(encoding="utf-8")


def prometheus_targets(prometheus):
    """All static targets of the stream-monitor scrape job."""
    jobs = [job for job in prometheus["scrape_configs"] if job["job_name"] == "stream-monitor"]
    assert len(jobs) == 1
    return [t for sc in jobs[0]["static_configs"] for t in sc["targets"]]


def test_prometheus_targets_are_exactly_the_monitors(prometheus, monitor_services):
    hosts = [host_port(t)[0] for t in prometheus_targets(prometheus)]
    assert sorted(hosts) == sorted(monitor_services)


def test_prometheus_service_mounts_the_scrape_config(services):
    volumes = services["prometheus"]["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes
    assert (ROOT / "deploy" / "prometheus.yml").is_file()


def test_prometheus_service_mounts_every_rule_file_it_loads(services, prometheus):
    """Each of prometheus.yml's rule_files is a read-only bind mount of a file in the repository, and
    the repository's rules are all loaded (the promtool unit tests of the rules are not)."""
    mounts = bind_mounts(services["prometheus"])
    loaded = prometheus["rule_files"]
    assert loaded
    sources = set()
    for path in loaded:
        assert path in mounts, f"{path} is loaded but not mounted into the prometheus service"
        source, options = mounts[path]
        assert options == ["ro"], path
        assert (ROOT / source).is_file(), source
        sources.add((ROOT / source).resolve())
    assert sources == {p.resolve() for p in (ROOT / "deploy" / "prometheus").glob("*.yml")
                       if not p.name.endswith(".test.yml")}


ENTRYPOINT_SCRIPT = "deploy/entrypoint.sh"


def test_dockerfile_entrypoint_and_default_command():
    # The entrypoint prepares numba's cache on a read-only root filesystem, then execs stream-monitor with
    # the container's arguments: `docker run IMAGE state export …` still runs `stream-monitor state export …`.
    entrypoint = json.loads(dockerfile_instruction("ENTRYPOINT"))
    assert entrypoint == ["stream-monitor-entrypoint"]
    copies = [shlex.split(args) for name, args in dockerfile_instructions() if name == "COPY"]
    assert [ENTRYPOINT_SCRIPT, "/usr/local/bin/stream-monitor-entrypoint"] in copies
    script = (ROOT / ENTRYPOINT_SCRIPT).read_text(encoding="utf-8")
    assert script.startswith("#!/bin/sh\n")
    assert script.rstrip().splitlines()[-1] == 'exec stream-monitor "$@"'
    assert json.loads(dockerfile_instruction("CMD")) == ["run", "-c", MONITOR_CONFIG_PATH]
    assert dockerfile_instruction("FROM").startswith("python:3.11-slim")
    user = dockerfile_instruction("USER")
    assert user not in ("root", "0")


# --- the locked-down image and monitor replicas --------------------------------------


RUNTIME_UID = 10001


def test_dockerfile_runs_as_a_fixed_non_root_uid():
    user = dockerfile_instruction("USER")
    assert user == f"{RUNTIME_UID}:{RUNTIME_UID}", "numeric, so runAsNonRoot and tmpfs uid= can check it"
    runs = " ".join(args for name, args in dockerfile_instructions() if name == "RUN")
    assert f"useradd --system --uid {RUNTIME_UID} --gid {RUNTIME_UID}" in runs
    assert f"groupadd --system --gid {RUNTIME_UID}" in runs
    # USER is the last word: nothing after it runs as root
    names = [name for name, _ in dockerfile_instructions()]
    assert "RUN" not in names[names.index("USER"):]


def test_dockerfile_compiles_the_kernels_into_a_readable_seed():
    cache_dir = dockerfile_env()["NUMBA_CACHE_DIR"]
    script = (ROOT / ENTRYPOINT_SCRIPT).read_text(encoding="utf-8")
    seed = re.search(r"seed=\$\{STREAM_MONITOR_IMAGE_NUMBA_SEED:-([^}]+)\}", script).group(1)
    assert not seed.startswith(cache_dir) and not cache_dir.startswith(seed), "a tmpfs at the cache would hide the seed"
    warm = [args for name, args in dockerfile_instructions() if name == "RUN" and "warm_up()" in args]
    assert len(warm) == 1
    # compiled into the seed, from the installed package (-P: not a copy in the working directory) ...
    assert f"NUMBA_CACHE_DIR={seed} python -P -c" in warm[0]
    assert "from stream_monitor.detectors.compile import warm_up; warm_up()" in warm[0]
    # ... for any CPU of the architecture (numba's cache is keyed by CPU model) ...
    assert dockerfile_env()["NUMBA_CPU_NAME"] == "generic"
    # ... which the runtime user can read but not change
    assert f"chmod -R a+rX,go-w {seed.rsplit('/', 1)[0]}" in warm[0]


def test_monitors_are_locked_down(monitor_services):
    for name, svc in monitor_services.items():
        assert svc["user"] == dockerfile_instruction("USER") == f"{RUNTIME_UID}:{RUNTIME_UID}", name
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name


def tmpfs_mounts(service):
    """{container path: {option: value}} of a service's tmpfs mounts (short syntax 'path:opt=v,opt')."""
    raw = service.get("tmpfs", [])
    out = {}
    for item in [raw] if isinstance(raw, str) else raw:
        path, _, options = item.partition(":")
        out[path] = dict(opt.partition("=")[::2] for opt in options.split(",") if opt)
    return out


def test_monitor_tmpfs_holds_the_numba_cache_and_tmp(monitor_services, config):
    cache_dir = dockerfile_env()["NUMBA_CACHE_DIR"]
    for name, svc in monitor_services.items():
        mounts = tmpfs_mounts(svc)
        assert "/tmp" in mounts, name
        holding = [path for path in mounts if cache_dir == path or cache_dir.startswith(path.rstrip("/") + "/")]
        assert holding, f"{name}: NUMBA_CACHE_DIR={cache_dir} is not on a tmpfs; numba cannot start read-only"
        options = mounts[holding[0]]
        assert options.get("uid") == options.get("gid") == str(RUNTIME_UID), name
        assert "size" in options, name
        for path, opts in mounts.items():
            assert "size" in opts, f"{name}: tmpfs {path} without a size limit"
        # writable places are only these tmpfs mounts; the config is mounted read-only
        assert all(v.endswith(":ro") for v in svc["volumes"]), name


def test_metrics_port_needs_no_capability(config):
    # cap_drop: [ALL] removes CAP_NET_BIND_SERVICE: the port must be unprivileged
    assert config["service"]["metrics_port"] >= 1024


def test_dockerignore_keeps_the_build_context_small():
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for entry in (".venv", ".git", "tests", "__pycache__", "bench", "*.pyc"):
        assert entry in ignored


def test_config_matches_contract_shape(config):
    assert set(config) >= {"kafka", "redis", "service", "models"}
    assert config["kafka"]["consumer"]["partition.assignment.strategy"] == "cooperative-sticky"
    fraud = config["models"]["fraud"]
    assert fraud["reference"] == {"source": "warmup", "events": 5000}
    # thresholds come from the calibration (quiet by default; tests/unit/test_deploy_config.py)
    assert fraud["detectors"] == {"psi": {"window": 5000}}


# --- Alertmanager --------------------------------------------------------------------


ALERTMANAGER_CONFIG = "/etc/alertmanager/alertmanager.yml"
COMPOSE_ALERTMANAGER = ROOT / "deploy" / "alertmanager-compose.yml"


@pytest.fixture(scope="module")
def alertmanager(services):
    return services["alertmanager"]


def alertmanager_ports(services):
    svc = services["alertmanager"]
    return container_ports(svc, "ports") | container_ports(svc, "expose")


def test_alertmanager_image_is_pinned_and_published(alertmanager):
    image, _, tag = alertmanager["image"].partition(":")
    assert image == "prom/alertmanager"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"pin a release tag, got {alertmanager['image']!r}"
    assert 9093 in container_ports(alertmanager, "ports")


def test_alertmanager_reads_the_compose_config_read_only(alertmanager):
    """The production routing needs credential files the stack has not: the service reads the
    compose-specific configuration, mounted read-only where its --config.file points."""
    flags = dict(arg.partition("=")[::2] for arg in alertmanager["command"])
    assert flags["--config.file"] == ALERTMANAGER_CONFIG
    source, options = bind_mounts(alertmanager)[ALERTMANAGER_CONFIG]
    assert (ROOT / source).resolve() == COMPOSE_ALERTMANAGER.resolve()
    assert options == ["ro"]


def test_compose_alertmanager_config_needs_no_credentials():
    text = COMPOSE_ALERTMANAGER.read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    assert not re.search(r"_file\s*:", text), "a credential file the compose stack does not have"
    receivers = {r["name"]: r for r in config["receivers"]}
    assert config["route"]["receiver"] in receivers
    assert all(set(r) == {"name"} for r in receivers.values()), "integrations need credentials"
    # the same grouping and inhibition as the production routing, so the UI shows what on-call would get
    production = yaml.safe_load((ROOT / "deploy" / "alertmanager.yml").read_text(encoding="utf-8"))
    assert config["route"]["group_by"] == production["route"]["group_by"]
    assert config["inhibit_rules"] == production["inhibit_rules"]


def amtool() -> str:
    path = shutil.which("amtool") or ("/usr/bin/amtool" if Path("/usr/bin/amtool").is_file() else None)
    assert path, "amtool is missing: run `make test-setup` (installs Debian's prometheus-alertmanager package)"
    return path


def test_amtool_checks_the_compose_alertmanager_config():
    done = subprocess.run([amtool(), "check-config", str(COMPOSE_ALERTMANAGER)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and "1 receivers" in done.stdout


def test_monitors_post_alerts_to_the_alertmanager_service(services, monitor_services):
    variable = f"{ENV_PREFIX}ALERTMANAGER_URL"
    assert ("alertmanager", "url") in env_keys() and variable == "STREAM_MONITOR_ALERTMANAGER_URL"
    for name, svc in monitor_services.items():
        url = urlsplit(env(svc)[variable])
        assert (url.scheme, url.hostname, url.path) == ("http", "alertmanager", ""), name
        assert url.port in alertmanager_ports(services), name


def test_prometheus_sends_the_rules_alerts_to_the_alertmanager_service(services, prometheus):
    managers = prometheus["alerting"]["alertmanagers"]
    targets = [t for manager in managers for sc in manager["static_configs"] for t in sc["targets"]]
    assert targets
    for target in targets:
        host, port = host_port(target)
        assert host == "alertmanager" and port in alertmanager_ports(services), target
    deps = services["prometheus"]["depends_on"]
    assert "alertmanager" in (deps if isinstance(deps, list) else list(deps))


# --- Grafana -------------------------------------------------------------------------


def bind_mounts(service):
    """{container path: (host path, options)} of a service's short-syntax bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *options = volume.split(":")
        mounts[target] = (source, options)
    return mounts


@pytest.fixture(scope="module")
def grafana(services):
    return services["grafana"]


@pytest.fixture(scope="module")
def grafana_datasources():
    path = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def grafana_providers():
    path = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_grafana_image_port_and_anonymous_viewer(grafana):
    assert grafana["image"] == "grafana/grafana:11.2.0"
    assert 3000 in container_ports(grafana, "ports")
    genv = env(grafana)
    assert genv["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert genv["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_grafana_depends_on_prometheus(grafana):
    deps = grafana["depends_on"]
    assert "prometheus" in (deps if isinstance(deps, list) else list(deps))


def test_grafana_mounts_provisioning_and_dashboards_read_only(grafana, grafana_providers):
    mounts = bind_mounts(grafana)
    assert GRAFANA_PROVISIONING in mounts
    source, options = mounts[GRAFANA_PROVISIONING]
    assert (ROOT / source).resolve() == (ROOT / "deploy" / "grafana" / "provisioning").resolve()
    assert options == ["ro"]
    assert (ROOT / source / "datasources" / "prometheus.yml").is_file()
    assert (ROOT / source / "dashboards" / "dashboards.yml").is_file()
    # the file provider reads the directory the dashboards are mounted at
    paths = [provider["options"]["path"] for provider in grafana_providers["providers"] if provider["type"] == "file"]
    assert paths == ["/var/lib/grafana/dashboards"]
    assert paths[0] in mounts
    source, options = mounts[paths[0]]
    assert (ROOT / source).resolve() == (ROOT / "deploy" / "grafana" / "dashboards").resolve()
    assert options == ["ro"]
    dashboards = sorted((ROOT / source).glob("*.json"))
    assert [d.name for d in dashboards] == ["stream-monitor.json"]
    for dashboard in dashboards:
        json.loads(dashboard.read_text(encoding="utf-8"))


def test_grafana_datasource_points_at_the_prometheus_service(services, grafana_datasources):
    sources = grafana_datasources["datasources"]
    assert len(sources) == 1
    source = sources[0]
    assert source["type"] == "prometheus"
    assert source["uid"] == "prometheus"
    url = urlsplit(source["url"])
    assert (url.scheme, url.hostname, url.port) == ("http", "prometheus", 9090)
    assert url.hostname in services
    prometheus_ports = container_ports(services["prometheus"], "ports") | container_ports(services["prometheus"], "expose")
    assert url.port in prometheus_ports


def test_grafana_datasource_interval_matches_the_scrape_interval(grafana_datasources, prometheus):
    source = grafana_datasources["datasources"][0]
    job = next(job for job in prometheus["scrape_configs"] if job["job_name"] == "stream-monitor")
    assert source["jsonData"]["timeInterval"] == job.get("scrape_interval", prometheus["global"]["scrape_interval"])


def dashboard_exprs():
    """Every PromQL expression of the provisioned dashboard's panels."""
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "stream-monitor.json").read_text(encoding="utf-8"))
    panels = list(dashboard["panels"])
    for panel in panels:
        panels.extend(panel.get("panels", []))
        yield from (target["expr"] for target in panel.get("targets", []) if "expr" in target)


def test_dashboard_job_variable_finds_the_scrape_job(prometheus):
    """Panels select the job through the `job` variable, whose values come from the scraped
    stream_monitor_build_info: the compose Prometheus scrapes the service under one job, which the variable
    then lists (no job name is hard-coded in the dashboard)."""
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    assert "stream-monitor" in jobs
    selected = {job for expr in dashboard_exprs() for job in re.findall(r'\bjob\s*=~?\s*"([^"]*)"', expr)}
    assert selected == {"$job"}
