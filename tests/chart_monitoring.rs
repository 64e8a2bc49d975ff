//! The chart's monitoring: the Grafana dashboard queries only metrics that real poolcast
//! processes expose, and ships in a ConfigMap the Grafana sidecar finds; the pods carry scrape
//! annotations for their own /metrics port; the Prometheus Operator monitors are rendered only
//! when asked and select the Services and pods the chart runs.
//!
//! ```text
//!   chart/dashboards/poolcast.json --PromQL exprs--> metric names
//!   registry <- mirror <- agent, scheduler (real processes, one pull) --/metrics--> exposed names
//!   every dashboard name in the exposed names
//! ```

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod chart_support;
mod common;

use chart_support::*;
use common::p2p::{BedSpec, P2pBed};
use std::collections::BTreeSet;

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("chart/dashboards/poolcast.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every `expr` of every panel target, rows' nested panels included.
fn exprs(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push(target["expr"].as_str().unwrap().to_string());
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The `poolcast_...` metric names in PromQL text.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("poolcast_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The series names a scrape answer exposes: each sample's name, and for each `# TYPE` line the
/// names its type gives samples (a labelled family with no samples yet still counts).
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[test]
fn every_metric_the_dashboard_queries_is_exposed_by_a_real_component() {
    let mut bed = P2pBed::start(BedSpec {
        seed: 71,
        ..BedSpec::default()
    });
    let a = bed.add_agent("pool-a", &[]);
    // One pull, so labelled families have samples too.
    bed.pull(a);
    let mut available = exposed(&bed.fx.mirror.metrics_text());
    available.extend(exposed(&bed.scheduler().metrics_text()));
    available.extend(exposed(&bed.agents[a].metrics_text()));
    assert!(
        available.contains("poolcast_agent_served_bytes_total"),
        "scrapes read wrong: {available:?}"
    );

    let exprs = exprs(&dashboard());
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let mut queried = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "a query on no poolcast metric: {expr}");
        queried.extend(names);
    }
    let missing: Vec<_> = queried.difference(&available).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no component exposes: {missing:?}"
    );
    // Each component has a part of the dashboard.
    for component in ["mirror", "agent", "scheduler"] {
        assert!(
            queried
                .iter()
                .any(|n| n.starts_with(&format!("poolcast_{component}_"))),
            "nothing about the {component}"
        );
    }
}

#[test]
fn the_metric_name_reader_catches_a_name_that_is_not_exposed() {
    let text =
        "# HELP poolcast_agent_peer_bytes Piece bytes\n# TYPE poolcast_agent_peer_bytes counter\n\
                # TYPE poolcast_mirror_cache_bytes gauge\npoolcast_mirror_cache_bytes 5\n# EOF\n";
    let available = exposed(text);
    let expr = "sum(rate(poolcast_agent_peer_bytes_total{direction=\"in\"}[5m])) / poolcast_mirror_cache_bytes + poolcast_agent_peer_bytes";
    let queried = metric_names(expr);
    let missing: Vec<_> = queried.difference(&available).collect();
    // A counter is queried as `_total`: its bare name is not a series.
    assert_eq!(missing, ["poolcast_agent_peer_bytes"]);
}

#[test]
fn the_dashboard_ships_in_a_configmap_the_grafana_sidecar_picks_up() {
    let objs = objects(&render(&["--set", "edgeNodePool.id=a"]).unwrap());
    let cm = objs
        .iter()
        .find(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["labels"]["app.kubernetes.io/component"] == "grafana-dashboard"
        })
        .expect("the dashboard ConfigMap, on by default");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: serde_json::Value =
        serde_json::from_str(str_of(&cm["data"]["poolcast.json"])).unwrap();
    assert_eq!(shipped, dashboard());

    let objs = objects(
        &render(&[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "grafanaDashboard.namespace=monitoring",
            "--set",
            "grafanaDashboard.folder=Edge",
        ])
        .unwrap(),
    );
    let cm = objs
        .iter()
        .find(|o| o["metadata"]["labels"]["app.kubernetes.io/component"] == "grafana-dashboard")
        .unwrap();
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Edge");

    let off = render(&[
        "--set",
        "edgeNodePool.id=a",
        "--set",
        "grafanaDashboard.enabled=false",
    ])
    .unwrap();
    assert!(!off.contains("grafana_dashboard"));
}

/// The container port a pod template's first container names `port` (by number).
fn named_port(workload: &serde_yaml::Value, name: &str) -> Option<u64> {
    workload["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_sequence()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
}

#[test]
fn pods_are_annotated_for_scraping_on_the_port_that_serves_their_metrics() {
    let objs = objects(&render(&["--set-json", &pools_json(2)]).unwrap());
    let mut seen = 0;
    for (kind, component, port) in [
        ("Deployment", "mirror", "http"),
        ("Deployment", "scheduler", "http"),
        ("DaemonSet", "agent", "registry"),
    ] {
        for w in of_kind(&objs, kind, component) {
            let ann = &w["spec"]["template"]["metadata"]["annotations"];
            assert_eq!(ann["prometheus.io/scrape"], "true", "{component}");
            assert_eq!(ann["prometheus.io/path"], "/metrics", "{component}");
            let annotated: u64 = str_of(&ann["prometheus.io/port"]).parse().unwrap();
            assert_eq!(Some(annotated), named_port(w, port), "{component}");
            seen += 1;
        }
    }
    assert_eq!(seen, 2 + 1 + 2);
    let off = render(&[
        "--set",
        "edgeNodePool.id=a",
        "--set",
        "metrics.scrapeAnnotations=false",
    ])
    .unwrap();
    assert!(!off.contains("prometheus.io/"));
}

#[test]
fn monitors_render_only_when_asked_and_select_what_the_chart_runs() {
    let plain = objects(&render(&["--set", "edgeNodePool.id=a"]).unwrap());
    assert!(!plain
        .iter()
        .any(|o| o["apiVersion"] == "monitoring.coreos.com/v1"));

    let manifest = render(&[
        "--set-json",
        &pools_json(2),
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "serviceMonitor.labels.release=kps",
    ])
    .unwrap();
    let objs = objects(&manifest);
    let monitor = |kind: &str| {
        objs.iter()
            .find(|o| o["kind"] == kind && o["apiVersion"] == "monitoring.coreos.com/v1")
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let sm = monitor("ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "kps");
    // The ServiceMonitor's selector picks exactly the mirror and scheduler Services, each of
    // which has the port it scrapes.
    let selected: Vec<&serde_yaml::Value> = objs
        .iter()
        .filter(|o| o["kind"] == "Service")
        .filter(|s| {
            let labels = &s["metadata"]["labels"];
            labels["app.kubernetes.io/instance"] == "pc"
                && ["mirror", "scheduler"]
                    .contains(&labels["app.kubernetes.io/component"].as_str().unwrap_or(""))
        })
        .collect();
    assert_eq!(selected.len(), 2 + 1);
    let endpoint_port = str_of(&sm["spec"]["endpoints"][0]["port"]);
    for svc in &selected {
        assert!(
            svc["spec"]["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|p| p["name"] == endpoint_port),
            "{svc:?}"
        );
    }
    let pm = monitor("PodMonitor");
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "agent"
    );
    let pod_port = str_of(&pm["spec"]["podMetricsEndpoints"][0]["port"]);
    for agent in of_kind(&objs, "DaemonSet", "agent") {
        assert!(named_port(agent, pod_port).is_some());
    }

    // Everything but the Prometheus Operator's own kinds (CRDs, which kubernetes-validate has
    // no schema for) passes strict validation.
    let dir = tempfile::tempdir().unwrap();
    let core: Vec<String> = manifest
        .split("\n---")
        .filter(|doc| !doc.contains("apiVersion: monitoring.coreos.com/v1"))
        .map(str::to_string)
        .collect();
    let path = dir.path().join("core.yaml");
    std::fs::write(&path, core.join("\n---")).unwrap();
    assert_strictly_valid(&[path]);
}

#[test]
fn an_otlp_endpoint_reaches_every_component_and_none_goes_by_default() {
    let url = "http://otel-collector.monitoring:4318";
    let with = objects(
        &render(&[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            &format!("tracing.otlp.endpoint={url}"),
        ])
        .unwrap(),
    );
    let mut seen = Vec::new();
    for w in with
        .iter()
        .filter(|o| o["kind"] == "Deployment" || o["kind"] == "DaemonSet")
    {
        let containers = w["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap();
        let main = containers
            .iter()
            .find(|c| c["name"] != "hosts-watch")
            .unwrap();
        let args = strings(&main["args"]);
        assert_eq!(args[args.len() - 2..], ["--otlp-endpoint", url], "{args:?}");
        seen.push(args[0].clone());
    }
    seen.sort();
    assert_eq!(seen, ["agent", "mirror", "scheduler", "webhook"]);
    assert!(!render(&["--set", "edgeNodePool.id=a"])
        .unwrap()
        .contains("--otlp-endpoint"));
    assert_rejected(
        &[
            "--set",
            "edgeNodePool.id=a",
            "--set",
            "tracing.otlp.endpoint=otel:4318",
        ],
        "tracing.otlp.endpoint",
    );
}
