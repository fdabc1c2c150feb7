"""The provisioned Grafana dashboard queries only what the service exports (no Grafana needed).

The set of exported names is taken from the code: ``stream_monitor.metrics.Metrics``
and prometheus_client's ``ProcessCollector`` registered into one registry.
Every PromQL expression of a panel or a template variable is reduced to its
identifiers; each one must be a PromQL function/keyword or an exported metric
name, and every label it names (in matchers, ``by (…)``, ``label_values``)
must be a label the service exports or one Prometheus adds at scrape time.
"""

import json
import re
from pathlib import Path

import prometheus_client
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from stream_monitor.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "stream-monitor.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PANEL_TYPES = {"timeseries", "stat", "table"}

# Sample suffixes by family type, as the text exposition writes them.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}
# Samples a range function (rate, irate, increase) may be applied to: monotonic ones.
MONOTONIC_SUFFIXES = ("_total", "_bucket", "_sum", "_count")

PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_quantile", "histogram_avg", "histogram_count", "histogram_sum", "histogram_fraction",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time", "ln",
    "log2", "log10", "max_over_time", "min_over_time", "minute", "month", "predict_linear",
    "present_over_time", "quantile_over_time", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc",
    "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "time", "timestamp", "vector", "year",
}
PROMQL_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                       "bottomk", "topk", "quantile"}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                   "offset", "inf", "nan"}
GRAFANA_FUNCTIONS = {"label_values", "label_names", "metrics", "query_result"}
KNOWN_WORDS = PROMQL_FUNCTIONS | PROMQL_AGGREGATIONS | PROMQL_KEYWORDS | GRAFANA_FUNCTIONS
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms",
                    "__dashboard", "__from", "__to"}
# Labels Prometheus attaches at scrape time, and the histogram bucket label.
SCRAPE_LABELS = {"instance", "job", "le", "__name__"}

IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")')
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
VARIABLE = re.compile(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\[\[([A-Za-z0-9_]+)\]\]|\$([A-Za-z0-9_]+)")
NUMBER = re.compile(r"(?<![A-Za-z0-9_:])(?:0x[0-9a-fA-F]+|\d[0-9a-zA-Z_.]*)")
SELECTOR = re.compile(r'\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\}')
RANGE = re.compile(r"\[[^\[\]]*\]")
LABEL_VALUES = re.compile(r"^\s*label_values\s*\((?:(.*),)?\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$", re.S)
RANGE_FUNCTION = re.compile(r"\b(rate|irate|increase|resets)\s*\(\s*([A-Za-z_:][A-Za-z0-9_:]*)")


# --- what the service exports ---------------------------------------------------------


@pytest.fixture(scope="module")
def service_metrics():
    """(registry, Metrics): the service's families and the process collector in one registry."""
    registry = prometheus_client.CollectorRegistry()
    metrics = Metrics(registry)
    prometheus_client.ProcessCollector(registry=registry)
    return registry, metrics


def sample_names(family):
    """Every sample name a family can expose; labelled families have no samples until a
    child exists, so the names are derived from the type as well."""
    return ({family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
            | {sample.name for sample in family.samples})


@pytest.fixture(scope="module")
def exported(service_metrics):
    """Every family and sample name a scrape of the service can show."""
    registry, _ = service_metrics
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names |= sample_names(family)
    return names


@pytest.fixture(scope="module")
def monotonic(service_metrics):
    """Sample names a range function (rate, increase …) may be applied to."""
    registry, _ = service_metrics
    return {name for family in registry.collect() if family.type in ("counter", "histogram", "summary")
            for name in sample_names(family) if name.endswith(MONOTONIC_SUFFIXES)}


@pytest.fixture(scope="module")
def labels(service_metrics):
    """Label names the service's families carry, plus those added at scrape time."""
    _, metrics = service_metrics
    out = set(SCRAPE_LABELS)
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            out.update(value._labelnames)
    for family in metrics.partitions.describe():  # the families derived at scrape time
        out.update(family._labelnames)
    return out


def test_exported_set_is_built_from_the_code(exported, labels):
    """Guard against an empty or wrong allow-list making every other test vacuous."""
    assert "stream_monitor_events_consumed_total" in exported
    assert "stream_monitor_checkpoint_seconds_bucket" in exported
    assert "process_cpu_seconds_total" in exported
    assert "process_resident_memory_bytes" in exported
    assert "stream_monitor_events_consumed" in exported  # the family name itself
    assert not any(name.startswith("python_") for name in exported)
    assert {"topic", "reason", "model", "signal", "detector", "severity", "partition", "le"} <= labels


# --- the dashboard ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def datasource_uid():
    sources = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    prometheus = [s for s in sources if s["type"] == "prometheus"]
    assert len(prometheus) == 1
    return prometheus[0]["uid"]


def all_panels(dashboard):
    """Every panel, including those nested in (collapsed) rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def data_panels(dashboard):
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def variables(dashboard):
    return dashboard.get("templating", {}).get("list", [])


def variable_queries(variable):
    """The query text(s) of a query variable (string or the Prometheus editor's object form)."""
    query = variable.get("query")
    texts = []
    if isinstance(query, dict):
        texts.append(query.get("query", ""))
    elif isinstance(query, str):
        texts.append(query)
    if variable.get("definition"):
        texts.append(variable["definition"])
    return [t for t in texts if t.strip()]


def expressions(dashboard):
    """(where, PromQL) for every panel target and query variable."""
    out = []
    for panel in data_panels(dashboard):
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} target {target.get('refId')}", target["expr"]))
    for variable in variables(dashboard):
        if variable.get("type") == "query":
            out.extend((f"variable {variable['name']!r}", text) for text in variable_queries(variable))
    return out


def analyse(expr):
    """(identifiers, label names, variables) of one PromQL expression or Grafana variable query."""
    found_vars = {next(g for g in m.groups() if g) for m in VARIABLE.finditer(expr)}
    text = VARIABLE.sub(" ", expr)
    label_names = set()
    match = LABEL_VALUES.match(text)
    if match:  # label_values([selector,] label)
        label_names.add(match.group(2))
        text = match.group(1) or ""
    for block in SELECTOR.findall(text):
        label_names.update(name for name, _ in MATCHER.findall(block))
        rest = MATCHER.sub("", block[1:-1]).replace(",", "").strip()
        assert not rest, f"unparsed label matcher text {rest!r} in {expr!r}"
    text = SELECTOR.sub(" ", text)
    for _, names in GROUPING.findall(text):
        label_names.update(n.strip() for n in names.split(",") if n.strip())
    text = GROUPING.sub(r" \1 ", text)
    text = STRING.sub(" ", text)
    text = RANGE.sub(" ", text)
    text = NUMBER.sub(" ", text)
    return set(IDENTIFIER.findall(text)), label_names, found_vars


def is_metric_name(identifier):
    return "_" in identifier and identifier.startswith(("stream_monitor_", "process_"))


def test_analyse_reduces_promql_to_names():
    idents, label_names, found = analyse(
        'histogram_quantile(0.95, sum by (le, instance) (rate(stream_monitor_x_bucket{instance=~"$instance"}'
        '[$__rate_interval]))) > 1e-3')
    assert idents == {"histogram_quantile", "sum", "by", "rate", "stream_monitor_x_bucket"}
    assert label_names == {"le", "instance"}
    assert found == {"instance", "__rate_interval"}
    idents, label_names, _ = analyse('label_values(stream_monitor_y{model="$model"}, signal)')
    assert idents == {"stream_monitor_y"} and label_names == {"model", "signal"}
    idents, _, _ = analyse("60 * sum(rate(foo_bar[5m])) offset 1h")
    assert idents == {"sum", "rate", "foo_bar", "offset"}


def test_dashboard_identity(dashboard):
    assert dashboard["uid"] and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert dashboard["title"]
    assert "__inputs" not in dashboard, "provisioned dashboards must not need an import step"
    assert dashboard["schemaVersion"] >= 36


def test_every_panel_has_a_title_and_a_query(dashboard):
    panels = data_panels(dashboard)
    assert len(panels) >= 12
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["type"]
        assert panel.get("title", "").strip(), panel
        targets = panel.get("targets", [])
        assert targets, f"panel {panel['title']!r} has no target"
        for target in targets:
            assert target.get("expr", "").strip(), f"panel {panel['title']!r}: empty expr"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    for row in all_panels(dashboard):
        if row["type"] == "row":
            assert row.get("title", "").strip()


def test_panel_ids_are_unique_and_every_panel_is_placed(dashboard):
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]


def test_every_expression_names_only_exported_metrics(dashboard, exported):
    exprs = expressions(dashboard)
    assert exprs
    for where, expr in exprs:
        identifiers, _, _ = analyse(expr)
        for identifier in identifiers:
            if identifier in KNOWN_WORDS:
                continue
            assert is_metric_name(identifier), f"{where}: unknown identifier {identifier!r} in {expr!r}"
            assert identifier in exported, f"{where}: {identifier!r} is not exported by the service"


def test_every_label_is_one_the_service_exports(dashboard, labels):
    for where, expr in expressions(dashboard):
        _, names, _ = analyse(expr)
        unknown = names - labels
        assert not unknown, f"{where}: labels {sorted(unknown)} are not exported ({expr!r})"


def test_rates_only_of_counters_and_histograms(dashboard, monotonic):
    for where, expr in expressions(dashboard):
        for function, name in RANGE_FUNCTION.findall(expr):
            assert name in monotonic, f"{where}: {function}() of {name!r}, which is not a counter or bucket"


def test_quantiles_aggregate_buckets_by_le(dashboard):
    found = 0
    for where, expr in expressions(dashboard):
        if "histogram_quantile" not in expr:
            continue
        found += 1
        assert "_bucket" in expr, where
        groups = [g for _, g in GROUPING.findall(expr)]
        assert any("le" in [n.strip() for n in g.split(",")] for g in groups), f"{where}: buckets not kept by le"
    assert found >= 2


def test_variables_used_are_defined(dashboard):
    defined = {v["name"] for v in variables(dashboard)} | GRAFANA_BUILTINS
    texts = [expr for _, expr in expressions(dashboard)]
    texts += [p.get("title", "") for p in all_panels(dashboard)]
    for text in texts:
        used = {next(g for g in m.groups() if g) for m in VARIABLE.finditer(text)}
        assert used <= defined, f"undefined variables {sorted(used - defined)} in {text!r}"


def test_detector_variables(dashboard):
    by_name = {v["name"]: v for v in variables(dashboard)}
    for name in ("model", "signal", "detector"):
        assert name in by_name, name
        variable = by_name[name]
        assert variable["type"] == "query"
        for text in variable_queries(variable):
            match = LABEL_VALUES.match(text)
            assert match, text
            assert match.group(2) == name
            assert match.group(1).strip().startswith("stream_monitor_detector_statistic")


def test_variable_editor_fields_match_the_query(dashboard):
    """Grafana runs ``query.query``; its variable editor shows label/metric/labelFilters. Keep them equal."""
    for variable in variables(dashboard):
        query = variable.get("query")
        if not isinstance(query, dict) or query.get("qryType") != 1:
            continue
        filters = ", ".join(f'{f["label"]}{f["op"]}"{f["value"]}"' for f in query.get("labelFilters", []))
        rebuilt = f'label_values({query["metric"]}{"{" + filters + "}" if filters else ""}, {query["label"]})'
        for text in variable_queries(variable):
            assert re.sub(r"\s", "", text) == re.sub(r"\s", "", rebuilt), variable["name"]


def test_required_views_are_present(dashboard):
    """The families an ML-ops team needs are all on the dashboard."""
    used = set()
    for _, expr in expressions(dashboard):
        used |= analyse(expr)[0]
    for name in ("stream_monitor_events_consumed_total", "stream_monitor_dead_letters_total",
                 "stream_monitor_alerts_total", "stream_monitor_episodes_firing",
                 "stream_monitor_detector_statistic", "stream_monitor_detector_threshold",
                 "stream_monitor_consumer_lag", "stream_monitor_checkpoint_seconds_bucket",
                 "stream_monitor_redis_seconds_bucket", "stream_monitor_assigned_partitions",
                 "process_cpu_seconds_total", "process_resident_memory_bytes"):
        assert name in used, name


def datasource_refs(dashboard):
    """(where, datasource) of every panel, target and variable that names one."""
    out = []
    for panel in data_panels(dashboard):
        out.append((f"panel {panel['title']!r}", panel.get("datasource")))
        out.extend((f"panel {panel['title']!r} target {t.get('refId')}", t.get("datasource"))
                   for t in panel["targets"] if "datasource" in t)
    out.extend((f"variable {v['name']!r}", v.get("datasource")) for v in variables(dashboard) if v["type"] == "query")
    return out


def test_panels_take_their_datasource_from_the_datasource_variable(dashboard, datasource_uid):
    """No hard-coded uid: a `datasource` variable lists the Prometheus datasources (the provisioned one is the
    default), and every panel, target and query variable refers to it, so the dashboard works when imported
    into a Grafana whose Prometheus has another uid."""
    assert datasource_uid == "prometheus"
    (chooser,) = [v for v in variables(dashboard) if v.get("type") == "datasource"]
    assert chooser["name"] == "datasource" and chooser["query"] == "prometheus"
    refs = datasource_refs(dashboard)
    assert refs
    for where, ref in refs:
        assert isinstance(ref, dict), f"{where}: datasource must be an explicit {{type, uid}} reference, got {ref!r}"
        assert ref == {"type": "prometheus", "uid": "${datasource}"}, where
    text = DASHBOARD.read_text(encoding="utf-8")
    assert "${DS_" not in text, "import-time datasource placeholders do not resolve when provisioned"


def test_every_selector_is_scoped_to_the_job_variable(dashboard):
    """The scrape job is a variable (all jobs exporting stream_monitor_build_info by default), not a hard-coded
    name: every series a panel or a variable reads (except the job variable's own query) filters on it."""
    (job,) = [v for v in variables(dashboard) if v["name"] == "job"]
    assert job["query"]["query"] == "label_values(stream_monitor_build_info, job)"
    assert job["includeAll"] and job["allValue"] == ".+"
    selector = re.compile(r"\b((?:stream_monitor|process)_[a-z0-9_]+)(\{[^}]*\})?")
    texts = [expr for where, expr in expressions(dashboard) if where != "variable 'job'"]
    assert texts
    for text in texts:
        for name, matchers in selector.findall(text):
            assert 'job=~"$job"' in matchers, f"{name} in {text!r} is not scoped to $job"
    assert 'job="stream-monitor"' not in DASHBOARD.read_text(encoding="utf-8")
