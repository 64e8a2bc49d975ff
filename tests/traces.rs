//! Traces over OTLP: a real agent and mirror, both given `--otlp-endpoint`, export their spans
//! to a small OTLP/HTTP receiver in this test (the protobuf `ExportTraceServiceRequest` a
//! collector takes on `/v1/traces`), and a pull through the agent makes traces in which the
//! mirror's spans are children of the agent's, the mirror's upstream fetch among them. Through
//! P2P agents, each piece source is a `pieces` span in the pull's trace: a mirror range (its
//! request to the mirror below it) or a piece from a peer.
//!
//! ```text
//!   skopeo --> agent --traceparent--> mirror --traceparent--> registry
//!                \                      \
//!                 +--OTLP/HTTP-----------+--> receiver (this test)
//! ```

#![allow(clippy::unwrap_used)] // in a test, a panic is the failure report

mod common;

use common::agent::{Agent, AgentOpts};
use common::fixture::{Fixture, REPO, TAG};
use common::p2p::SMALL_IMAGE;
use common::{assert_eventually, skopeo_pull, verify_pulled, Scheduler};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One exported span, as the receiver keeps it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    /// Attributes, their values as text.
    attrs: Vec<(String, String)>,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// An OTLP/HTTP receiver: answers each POST with an empty success and keeps its spans.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || serve(conn, &kept));
            }
        });
        Receiver { url, spans }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

/// Reads HTTP/1.1 requests off `conn` (the exporter keeps it alive) until it closes.
fn serve(conn: TcpStream, kept: &Mutex<Vec<Span>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        assert!(line.starts_with("POST /v1/traces "), "{line}");
        let mut len = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    len = value.trim().parse().unwrap();
                }
                if name.eq_ignore_ascii_case("content-type") {
                    assert_eq!(value.trim(), "application/x-protobuf");
                }
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let request = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        let mut spans = kept.lock().unwrap();
        for rs in request.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let attrs = s
                        .attributes
                        .iter()
                        .filter_map(|a| {
                            let text = match a.value.as_ref()?.value.as_ref()? {
                                Value::StringValue(v) => v.clone(),
                                Value::IntValue(v) => v.to_string(),
                                Value::BoolValue(v) => v.to_string(),
                                Value::DoubleValue(v) => v.to_string(),
                                _ => return None,
                            };
                            Some((a.key.clone(), text))
                        })
                        .collect();
                    spans.push(Span {
                        service: service.clone(),
                        name: s.name,
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        parent: s.parent_span_id,
                        attrs,
                    });
                }
            }
        }
        drop(spans);
        let reply =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if conn.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn a_pull_through_the_agent_is_one_trace_across_agent_mirror_and_upstream() {
    let receiver = Receiver::start();
    let otlp = ["--otlp-endpoint", receiver.url.as_str()];
    let fx = Fixture::new(SMALL_IMAGE, 81, &otlp);
    let agent = Agent::start(AgentOpts {
        ip: "127.0.0.2".into(),
        mirror_url: fx.mirror.url().to_owned(),
        scheduler_url: None,
        node: "node-1".into(),
        pool: "pool-a".into(),
        secret: None,
        cache_dir: fx.fresh_dir("node-1-cache"),
        extra_args: otlp.iter().map(|s| s.to_string()).collect(),
    });
    let out = fx.fresh_dir("pull");
    let source = format!("{}/{REPO}:{TAG}", agent.host());
    let output = skopeo_pull(&source, &out, None).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    verify_pulled(&out, &fx.image).unwrap();

    // The exporters batch: wait for a mirror request whose parent is an agent span, and the
    // mirror's upstream fetch in the same trace.
    let joined = |spans: &[Span]| -> Option<Vec<u8>> {
        spans
            .iter()
            .filter(|m| m.service == "poolcast-mirror" && m.name == "request")
            .find(|m| {
                let parent_is_agent = spans
                    .iter()
                    .any(|a| a.service == "poolcast-agent" && a.span_id == m.parent);
                let upstream_under_it = spans.iter().any(|u| {
                    u.service == "poolcast-mirror"
                        && u.name == "upstream"
                        && u.trace_id == m.trace_id
                });
                parent_is_agent && upstream_under_it
            })
            .map(|m| m.trace_id.clone())
    };
    assert_eventually(
        Duration::from_secs(30),
        "agent and mirror spans of one pull in one trace",
        || joined(&receiver.spans()).is_some(),
    );
    let spans = receiver.spans();
    let trace = joined(&spans).unwrap();
    let in_trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace).collect();
    // The agent's request span is the trace's root: the runtime sent no traceparent.
    let roots: Vec<&&Span> = in_trace.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "{in_trace:#?}");
    assert_eq!(roots[0].service, "poolcast-agent");
    assert_eq!(roots[0].name, "request");
}

const AGENT: &str = "poolcast-agent";
const MIRROR: &str = "poolcast-mirror";

/// The span `s`'s parent is, among `spans`.
fn parent_of<'a>(spans: &'a [Span], s: &Span) -> Option<&'a Span> {
    spans
        .iter()
        .find(|p| p.span_id == s.parent && p.trace_id == s.trace_id)
}

/// `s` is a `pieces` span of `source` whose parent is an agent's `request` span that is its
/// trace's root: the pull's trace.
fn in_a_pull(spans: &[Span], s: &Span, source: &str) -> bool {
    s.service == AGENT
        && s.name == "pieces"
        && s.attr("piece.source") == Some(source)
        && parent_of(spans, s)
            .is_some_and(|p| p.service == AGENT && p.name == "request" && p.parent.is_empty())
}

#[test]
fn a_p2p_pull_has_a_span_per_piece_source_in_the_pull_trace() {
    let receiver = Receiver::start();
    let otlp = ["--otlp-endpoint", receiver.url.as_str()];
    let fx = Fixture::new(SMALL_IMAGE, 82, &otlp);
    let scheduler = Scheduler::start(&[]);
    let agent = |n: usize| {
        Agent::start(AgentOpts {
            ip: format!("127.0.0.{}", n + 1),
            mirror_url: fx.mirror.url().to_owned(),
            scheduler_url: Some(scheduler.url().to_owned()),
            node: format!("node-{n}"),
            pool: "pool-a".into(),
            secret: None,
            cache_dir: fx.fresh_dir(&format!("node-{n}-cache")),
            extra_args: otlp.iter().map(|s| s.to_string()).collect(),
        })
    };
    let pull = |a: &Agent| {
        let out = fx.fresh_dir(&format!("pull-{}", a.node()));
        let source = format!("{}/{REPO}:{TAG}", a.host());
        let output = skopeo_pull(&source, &out, None).unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        verify_pulled(&out, &fx.image).unwrap();
    };
    // The first agent's pieces come from the mirror; the second's, mostly from the first.
    let first = agent(1);
    pull(&first);
    let second = agent(2);
    pull(&second);
    assert!(
        second.peer_bytes("in") > 0.0,
        "the second pull took nothing from the first agent: no peer pieces to trace"
    );

    // A mirror range in a pull's trace, with the mirror's request for it below it (the range
    // GET carried the range span's traceparent).
    let mirror_range = |spans: &[Span]| {
        spans.iter().any(|r| {
            in_a_pull(spans, r, "mirror")
                && r.attr("digest").is_some_and(|d| d.starts_with("sha256:"))
                && r.attr("piece.reason").is_some_and(|w| !w.is_empty())
                && r.attr("piece.outcome") == Some("ok")
                && spans.iter().any(|m| {
                    m.service == MIRROR
                        && m.name == "request"
                        && m.parent == r.span_id
                        && m.trace_id == r.trace_id
                })
        })
    };
    // A piece from the first agent, in the second's pull's trace.
    let peer_piece = |spans: &[Span]| {
        spans.iter().any(|p| {
            in_a_pull(spans, p, "peer")
                && p.attr("peer.name") == Some("node-1")
                && p.attr("piece.outcome") == Some("received")
        })
    };
    // The piece digests' long-poll carries the pull's traceparent too.
    let layout = |spans: &[Span]| {
        spans.iter().any(|m| {
            m.service == MIRROR
                && m.name == "request"
                && m.attr("url.path").is_some_and(|p| p.contains("/pieces/"))
                && parent_of(spans, m).is_some_and(|a| a.service == AGENT && a.name == "request")
        })
    };
    assert_eventually(
        Duration::from_secs(30),
        "a mirror range, a peer piece and the piece digests' request in pulls' traces",
        || {
            let spans = receiver.spans();
            mirror_range(&spans) && peer_piece(&spans) && layout(&spans)
        },
    );
    // No mirror request of the pulls makes a trace of its own: each is below an agent span.
    let spans = receiver.spans();
    let orphans: Vec<&Span> = spans
        .iter()
        .filter(|m| m.service == MIRROR && m.name == "request" && m.parent.is_empty())
        .collect();
    assert!(
        orphans.is_empty(),
        "mirror requests outside a pull's trace: {orphans:#?}"
    );
}
