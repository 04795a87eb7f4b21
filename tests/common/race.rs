//! Many requests released at once against one server, or against the
//! instances of one deployment in turn, and what came back: the machinery
//! of the concurrency tests (`tests/concurrency.rs`, `tests/postgres_ha.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::load::{self, Request, slug};
use super::server::SignetServer;

/// What one race produced.
pub struct Race {
    /// Per attempt, in the order given: status and body, or the transport
    /// error (a timeout among them).
    pub answers: Vec<Result<(u16, Value), String>>,
    pub elapsed: Duration,
    /// The most attempts that were in flight (sent, not yet answered) at
    /// the same moment.
    pub peak: usize,
}

impl Race {
    /// Status and slug ("" for a success) with how often each came; the
    /// transport errors under "error".
    pub fn histogram(&self) -> BTreeMap<String, usize> {
        let mut h = BTreeMap::new();
        for a in &self.answers {
            let key = match a {
                Ok((status, body)) if (200..300).contains(status) => format!("{status}"),
                Ok((status, body)) => format!("{status} {}", slug(body)),
                Err(e) => format!("error {e}"),
            };
            *h.entry(key).or_insert(0) += 1;
        }
        h
    }

    /// The one success's index and body; None unless exactly one.
    pub fn winner(&self) -> Option<(usize, &Value)> {
        let wins: Vec<(usize, &Value)> = self
            .answers
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match a {
                Ok((s, body)) if (200..300).contains(s) => Some((i, body)),
                _ => None,
            })
            .collect();
        (wins.len() == 1).then(|| wins[0])
    }

    /// Exactly one success and every other answer `409 refused`; the line
    /// to print, or what went wrong.
    pub fn judge(&self, kind: &str, success: &str, refused: &str) -> Result<String, String> {
        let h = self.histogram();
        let ok = self
            .answers
            .iter()
            .filter(|a| matches!(a, Ok((s, _)) if (200..300).contains(s)))
            .count();
        let right = self
            .answers
            .iter()
            .filter(|a| matches!(a, Ok((409, body)) if slug(body) == refused))
            .count();
        let line = format!(
            "concurrency: {kind}: {} attempts, {ok} {success}, {right} refused {refused}, \
             peak {} in flight, in {:.2} s",
            self.answers.len(),
            self.peak,
            self.elapsed.as_secs_f64()
        );
        if ok == 1 && right == self.answers.len() - 1 {
            Ok(line)
        } else {
            // Show one body of each unexpected kind.
            let mut examples = BTreeMap::new();
            for a in &self.answers {
                match a {
                    Ok((s, _)) if (200..300).contains(s) => {}
                    Ok((409, body)) if slug(body) == refused => {}
                    Ok((s, body)) => {
                        examples
                            .entry(format!("{s} {}", slug(body)))
                            .or_insert_with(|| body.to_string());
                    }
                    Err(e) => {
                        examples.entry("error".into()).or_insert_with(|| e.clone());
                    }
                }
            }
            Err(format!(
                "{line}\n  {kind}: want exactly one success and {} x 409 {refused}; \
                 got {h:?}\n  examples: {examples:#?}",
                self.answers.len() - 1
            ))
        }
    }
}

/// Sends all `requests` at once, request `i` to `servers[i % n]` (one
/// server, or the instances of one deployment taking turns), each server
/// through a new client of its own: first as many GETs of `warm` at once,
/// so the pools hold that many open connections, then the requests
/// themselves, each task waiting at a barrier until all are ready.
pub fn race(
    rt: &tokio::runtime::Runtime,
    servers: &[&SignetServer],
    warm: &str,
    requests: Vec<Request>,
) -> Race {
    let n = requests.len();
    let targets: Vec<(String, reqwest::Client)> = servers
        .iter()
        .map(|server| {
            // A fresh pool per race: connections left idle since the last
            // one may have met the server's keep-alive limit.
            let share = n.div_ceil(servers.len());
            (
                server.base_url(),
                load::async_client(server, "rp", share + 16),
            )
        })
        .collect();
    let targets = &targets;
    rt.block_on(async {
        let mut warmup = tokio::task::JoinSet::new();
        for i in 0..n {
            let (base, client) = &targets[i % targets.len()];
            let (client, url) = (client.clone(), format!("{base}{warm}"));
            warmup.spawn(async move { client.get(url).send().await.map(|r| r.status()) });
        }
        while let Some(done) = warmup.join_next().await {
            let status = done.expect("warm-up task").expect("warm-up request");
            assert!(status.is_success(), "warm-up answered {status}");
        }

        let barrier = Arc::new(tokio::sync::Barrier::new(n));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, r) in requests.into_iter().enumerate() {
            let (base, client) = &targets[i % targets.len()];
            let (client, barrier) = (client.clone(), barrier.clone());
            let url = format!("{base}{}", r.path);
            tasks.spawn(async move {
                barrier.wait().await;
                let sent = Instant::now();
                let mut b = client.post(url);
                for (name, value) in &r.headers {
                    b = b.header(*name, value);
                }
                if let Some(body) = &r.body {
                    b = b.json(body);
                }
                let answer = match b.send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        match resp.text().await {
                            Ok(text) => {
                                Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
                            }
                            Err(e) => Err(format!("{e:?}")),
                        }
                    }
                    Err(e) => Err(format!("{e:?}")),
                };
                (i, sent, Instant::now(), answer)
            });
        }
        let mut answers: Vec<Option<Result<(u16, Value), String>>> = vec![None; n];
        let mut spans = Vec::with_capacity(n);
        while let Some(done) = tasks.join_next().await {
            let (i, sent, answered, answer) = done.expect("attempt task");
            answers[i] = Some(answer);
            spans.push((sent, answered));
        }
        let first = spans.iter().map(|s| s.0).min().expect("attempts");
        let last = spans.iter().map(|s| s.1).max().expect("attempts");
        Race {
            answers: answers.into_iter().map(|a| a.expect("answer")).collect(),
            elapsed: last - first,
            peak: peak(&spans),
        }
    })
}

/// The most intervals open at one instant.
pub fn peak(spans: &[(Instant, Instant)]) -> usize {
    let mut edges: Vec<(Instant, i64)> =
        spans.iter().flat_map(|&(a, b)| [(a, 1), (b, -1)]).collect();
    // At a tie, close before opening: touching intervals do not overlap.
    edges.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.cmp(&y.1)));
    let (mut now, mut most) = (0i64, 0i64);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}
