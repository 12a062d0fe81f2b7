//! Top-K exceptions and exception details against a brute-force count over the same entries:
//! many services and hours, Zipf-skewed exception frequencies (so ties in the tail), random
//! k, windows, filters and modes. Every answer must be identical to the oracle's.

use std::collections::HashMap;

use serde_json::{json, Value};
use veil_chaos_tests::Rng;
use veil_shard::exceptions::exception_id_string;

use crate::harness::Veil;

#[derive(Clone)]
struct Sent {
    log_id: String,
    ts_us: i64,
    service: String,
    exception: String,
    environment: String,
    region: String,
    level: String,
    host: String,
    user: String,
}

/// (exception_id, count, first_seen, last_seen, samples, (hosts, regions, affected users)).
type Expected = (
    String,
    u64,
    i64,
    i64,
    Vec<String>,
    (Vec<String>, Vec<String>, usize),
);

fn rfc3339(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn us_of(s: &str) -> i64 {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap();
    (t.unix_timestamp_nanos() / 1000) as i64
}

/// The oracle: counts, first/last seen and the three greatest log_ids per (service, type),
/// ranked by count, then last_seen (latest first), then exception_id.
fn brute_force(sent: &[&Sent], k: usize) -> Vec<Expected> {
    type Group = (
        u64,
        i64,
        i64,
        Vec<String>,
        [std::collections::BTreeSet<String>; 3],
    );
    let mut groups: HashMap<String, Group> = HashMap::new();
    for s in sent {
        let id = exception_id_string(&s.exception, &s.service);
        let g = groups
            .entry(id)
            .or_insert_with(|| (0, i64::MAX, i64::MIN, Vec::new(), Default::default()));
        g.0 += 1;
        g.1 = g.1.min(s.ts_us);
        g.2 = g.2.max(s.ts_us);
        g.3.push(s.log_id.clone());
        g.4[0].insert(s.host.clone());
        g.4[1].insert(s.region.clone());
        g.4[2].insert(s.user.clone());
    }
    let mut v: Vec<Expected> = groups
        .into_iter()
        .map(|(id, (n, first, last, mut ids, [hosts, regions, users]))| {
            ids.sort_by(|a, b| b.cmp(a));
            ids.truncate(3);
            let meta = (
                hosts.into_iter().take(8).collect(),
                regions.into_iter().take(8).collect(),
                users.len().min(256),
            );
            (id, n, first, last, ids, meta)
        })
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(b.3.cmp(&a.3)).then(a.0.cmp(&b.0)));
    v.truncate(k);
    v
}

/// The counts of a details answer's trend, added up.
fn trend_sum(d: &Value) -> u64 {
    d["trend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn get(veil: &Veil, path: &str) -> (u16, Value) {
    let resp = reqwest::blocking::get(veil.url(path)).expect("http");
    let status = resp.status().as_u16();
    (status, resp.json().expect("json"))
}

#[test]
fn top_k_and_details_match_a_brute_force_count() {
    let seed = std::env::var("VEIL_TOPK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261125u64);
    eprintln!("seed {seed} (VEIL_TOPK_SEED replays)");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut veil = Veil::start(dir.path(), &[]);

    let now_us = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
    let services = ["payments", "search", "auth", "cart", "mail", "geo"];
    let types: Vec<String> = (0..14)
        .map(|i| format!("com.acme.Fault{i}Exception"))
        .collect();
    // Zipf-like weights: type i drawn with weight 1/(i+1).
    let weights: Vec<f64> = (0..types.len()).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let total_w: f64 = weights.iter().sum();
    let pick_type = |rng: &mut Rng| {
        let mut x = (rng.below(1_000_000) as f64 / 1_000_000.0) * total_w;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        types.len() - 1
    };
    // Sends `n` entries stamped within the last 5 hours; records the ones with an exception.
    let send = |rng: &mut Rng, batch: usize, n: usize, sent: &mut Vec<Sent>| {
        let mut body = String::new();
        let mut planned = Vec::new();
        for i in 0..n {
            let ts_us =
                now_us - rng.below(5 * 3600) as i64 * 1_000_000 - rng.below(1_000_000) as i64;
            let service = services[rng.below(services.len() as u64) as usize];
            let environment = ["prod", "staging"][rng.below(2) as usize];
            let region = ["us", "eu"][rng.below(2) as usize];
            let level = ["ERROR", "WARN", "FATAL"][rng.below(3) as usize];
            let has_exception = rng.below(10) < 7;
            let host = format!("h{}", rng.below(12));
            let user = format!("u{}", rng.below(40));
            // Later batches bring exceptions no earlier question saw.
            let ty = if batch >= 3 && rng.below(10) == 0 {
                format!("com.acme.Late{batch}Exception")
            } else {
                types[pick_type(rng)].clone()
            };
            let mut entry = json!({
                "timestamp": rfc3339(ts_us), "service": service, "environment": environment,
                "metadata": {"region": region, "host": host}, "level": level,
                "fields": {"user_id": user},
                "message": format!("event {batch}-{i}"),
            });
            if has_exception {
                entry["exception"] = json!({"type": ty, "message": "boom"});
            }
            body.push_str(&entry.to_string());
            body.push('\n');
            planned.push((
                has_exception,
                ts_us,
                service,
                ty,
                environment,
                region,
                level,
                host,
                user,
            ));
        }
        let (status, answer) = veil.post("/api/v1/logs", "application/x-ndjson", body);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["accepted"], n);
        for (r, p) in answer["results"].as_array().unwrap().iter().zip(planned) {
            if p.0 {
                sent.push(Sent {
                    log_id: r["log_id"].as_str().unwrap().to_string(),
                    ts_us: p.1,
                    service: p.2.to_string(),
                    exception: p.3,
                    environment: p.4.to_string(),
                    region: p.5.to_string(),
                    level: p.6.to_string(),
                    host: p.7,
                    user: p.8,
                });
            }
        }
    };
    let mut sent: Vec<Sent> = Vec::new();
    for batch in 0..3 {
        send(&mut rng, batch, 1000, &mut sent);
    }

    let check = |path: &str, expected: Vec<Expected>| {
        let (status, answer) = get(&veil, path);
        assert_eq!(status, 200, "{path}: {answer}");
        let got: Vec<_> = answer["exceptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["exception_id"].as_str().unwrap().to_string(),
                    e["count"].as_u64().unwrap(),
                    us_of(e["first_seen"].as_str().unwrap()),
                    us_of(e["last_seen"].as_str().unwrap()),
                    e["sample_log_ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_str().unwrap().to_string())
                        .collect::<Vec<_>>(),
                    (
                        strings(&e["metadata"]["hosts"]),
                        strings(&e["metadata"]["regions"]),
                        e["metadata"]["affected_users"].as_u64().unwrap() as usize,
                    ),
                )
            })
            .collect();
        assert_eq!(got, expected, "{path}");
    };

    let minute = |us: i64| us.div_euclid(60_000_000);
    for round in 0..60 {
        let k = 1 + rng.below(15) as usize;
        let a = now_us - rng.below(5 * 3600 + 600) as i64 * 1_000_000;
        let b = now_us - rng.below(5 * 3600 + 600) as i64 * 1_000_000;
        let (start, end) = (a.min(b), a.max(b));
        let mut query = format!(
            "/api/v1/exceptions/top-k?k={k}&start={}&end={}",
            rfc3339(start).replace('+', "%2B"),
            rfc3339(end).replace('+', "%2B")
        );
        let service = (rng.below(3) == 0).then(|| services[rng.below(6) as usize]);
        let env = (rng.below(3) == 0).then(|| ["prod", "staging"][rng.below(2) as usize]);
        let region = (rng.below(4) == 0).then(|| ["us", "eu"][rng.below(2) as usize]);
        let level = (rng.below(4) == 0).then(|| ["ERROR", "FATAL"][rng.below(2) as usize]);
        for (name, v) in [
            ("service", service),
            ("environment", env),
            ("region", region),
            ("level", level),
        ] {
            if let Some(v) = v {
                query.push_str(&format!("&{name}={v}"));
            }
        }
        let matching: Vec<&Sent> = sent
            .iter()
            .filter(|s| minute(s.ts_us) >= minute(start) && minute(s.ts_us) <= minute(end))
            .filter(|s| service.is_none_or(|v| s.service == v))
            .filter(|s| env.is_none_or(|v| s.environment == v))
            .filter(|s| region.is_none_or(|v| s.region == v))
            .filter(|s| level.is_none_or(|v| s.level == v))
            .collect();
        check(&query, brute_force(&matching, k));
        if round == 0 {
            eprintln!("first query: {query} → {} matching", matching.len());
        }
    }

    // Answers kept between questions (each shard's whole-hour spans and the coordinator's sum
    // of them, the shards' services of exceptions) must take later writes into the hours they
    // cover: ask unfiltered and service-filtered windows of several whole hours, write into
    // those hours (new exceptions too), ask again.
    let windows: Vec<(i64, i64)> = (0..4)
        .map(|_| {
            let end = now_us - rng.below(1800) as i64 * 1_000_000;
            (end - (2 + rng.below(3) as i64) * 3_600_000_000, end)
        })
        .collect();
    for batch in 3..6 {
        for &(start, end) in &windows {
            let path = format!(
                "/api/v1/exceptions/top-k?k=20&start={}&end={}",
                rfc3339(start).replace('+', "%2B"),
                rfc3339(end).replace('+', "%2B")
            );
            let matching: Vec<&Sent> = sent
                .iter()
                .filter(|s| minute(s.ts_us) >= minute(start) && minute(s.ts_us) <= minute(end))
                .collect();
            check(&path, brute_force(&matching, 20));
            for service in ["payments", "geo,mail"] {
                let wanted: Vec<&str> = service.split(',').collect();
                let of_service: Vec<&Sent> = matching
                    .iter()
                    .filter(|s| wanted.contains(&s.service.as_str()))
                    .copied()
                    .collect();
                check(
                    &format!("{path}&service={service}"),
                    brute_force(&of_service, 20),
                );
            }
            for (filter, level, env) in [
                ("&level=ERROR", "ERROR", None),
                ("&environment=prod&level=WARN,FATAL", "", Some("prod")),
            ] {
                let passing: Vec<&Sent> = matching
                    .iter()
                    .filter(|s| {
                        if level.is_empty() {
                            s.level != "ERROR"
                        } else {
                            s.level == level
                        }
                    })
                    .filter(|s| env.is_none_or(|e| s.environment == e))
                    .copied()
                    .collect();
                check(&format!("{path}{filter}"), brute_force(&passing, 20));
            }
        }
        send(&mut rng, batch, 300, &mut sent);
    }

    // Sliding: 6h covers every entry whatever minute it is now.
    let all: Vec<&Sent> = sent.iter().collect();
    check(
        "/api/v1/exceptions/top-k?k=1000&window=6h",
        brute_force(&all, 1000),
    );
    // Tumbling: the UTC hour containing `at`.
    let at = now_us - 2 * 3600 * 1_000_000;
    let hour_start = at.div_euclid(3_600_000_000) * 3_600_000_000;
    let in_hour: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.ts_us >= hour_start && s.ts_us < hour_start + 3_600_000_000)
        .collect();
    check(
        &format!(
            "/api/v1/exceptions/top-k?k=50&window=1h&mode=tumbling&at={}",
            rfc3339(at).replace('+', "%2B")
        ),
        brute_force(&in_hour, 50),
    );

    // Details of the most frequent exception over 24h.
    let top = &brute_force(&all, 1)[0];
    let (status, d) = get(&veil, &format!("/api/v1/exceptions/{}?window=24h", top.0));
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["count"].as_u64().unwrap(), top.1);
    assert_eq!(trend_sum(&d), top.1, "the trend adds up to the count");
    assert_eq!(d["is_new"], true);
    assert_eq!(d["sample_logs"].as_array().unwrap().len(), 3);
    assert_eq!(d["sample_logs"][0]["log_id"].as_str().unwrap(), top.4[0]);
    // A later window of the same exception: not new, counted over that window only; with a
    // dimension filter the answer comes from the other path and must agree with the oracle too.
    let from = now_us - 3600 * 1_000_000;
    for filter in ["", "&level=ERROR"] {
        let path = format!(
            "/api/v1/exceptions/{}?start={}&end={}{filter}",
            top.0,
            rfc3339(from).replace('+', "%2B"),
            rfc3339(now_us).replace('+', "%2B")
        );
        let (status, d) = get(&veil, &path);
        assert_eq!(status, 200, "{d}");
        let want = sent
            .iter()
            .filter(|s| exception_id_string(&s.exception, &s.service) == top.0)
            .filter(|s| minute(s.ts_us) >= minute(from) && minute(s.ts_us) <= minute(now_us))
            .filter(|s| filter.is_empty() || s.level == "ERROR")
            .count() as u64;
        assert_eq!(d["count"].as_u64().unwrap_or(0), want, "{path}");
        assert_eq!(d["is_new"], false, "{path}");
    }

    // Details under each kind of filter against the oracle: count, first and last seen, the
    // trend, the samples, `is_new` (the first sighting under the filter), and 404 when nothing
    // ever matched the filter.
    let ranked = brute_force(&all, 6);
    for round in 0..30 {
        let id = ranked[round % ranked.len()].0.clone();
        let of_id: Vec<&Sent> = sent
            .iter()
            .filter(|s| exception_id_string(&s.exception, &s.service) == id)
            .collect();
        let service = of_id[0].service.clone();
        let a = now_us - rng.below(5 * 3600 + 600) as i64 * 1_000_000;
        let b = now_us - rng.below(5 * 3600 + 600) as i64 * 1_000_000;
        let (start, end) = (a.min(b), a.max(b));
        type Keep = Box<dyn Fn(&Sent) -> bool>;
        let (filter, keep): (String, Keep) = match round % 6 {
            0 => (format!("&service={service}"), Box::new(|_| true)),
            1 => ("&service=nosuchservice".into(), Box::new(|_| false)),
            2 => ("&level=FATAL".into(), Box::new(|s| s.level == "FATAL")),
            3 => (
                "&environment=staging&region=eu".into(),
                Box::new(|s| s.environment == "staging" && s.region == "eu"),
            ),
            4 => (
                format!("&service={service},geo&level=WARN"),
                Box::new(|s| s.level == "WARN"),
            ),
            _ => ("&region=us".into(), Box::new(|s| s.region == "us")),
        };
        let path = format!(
            "/api/v1/exceptions/{id}?start={}&end={}{filter}",
            rfc3339(start).replace('+', "%2B"),
            rfc3339(end).replace('+', "%2B")
        );
        let ever: Vec<&Sent> = of_id.iter().copied().filter(|s| keep(s)).collect();
        let (status, d) = get(&veil, &path);
        if ever.is_empty() {
            assert_eq!(status, 404, "{path}: {d}");
            continue;
        }
        assert_eq!(status, 200, "{path}: {d}");
        let mut inside: Vec<&Sent> = ever
            .iter()
            .copied()
            .filter(|s| minute(s.ts_us) >= minute(start) && minute(s.ts_us) <= minute(end))
            .collect();
        assert_eq!(d["count"].as_u64().unwrap(), inside.len() as u64, "{path}");
        let first_ever = ever.iter().map(|s| s.ts_us).min().unwrap();
        assert_eq!(
            d["is_new"],
            !inside.is_empty() && first_ever >= minute(start) * 60_000_000,
            "{path}"
        );
        if inside.is_empty() {
            continue;
        }
        let first = inside.iter().map(|s| s.ts_us).min().unwrap();
        let last = inside.iter().map(|s| s.ts_us).max().unwrap();
        assert_eq!(us_of(d["first_seen"].as_str().unwrap()), first, "{path}");
        assert_eq!(us_of(d["last_seen"].as_str().unwrap()), last, "{path}");
        assert_eq!(trend_sum(&d), inside.len() as u64, "{path}");
        inside.sort_by(|a, b| b.log_id.cmp(&a.log_id));
        let samples: Vec<&str> = d["sample_logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["log_id"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = inside.iter().take(3).map(|s| s.log_id.as_str()).collect();
        assert_eq!(samples, want, "{path}");
    }

    // The first sighting under a filter is not the exception's first sighting: an exception
    // first seen in eu, then in us, then in us again inside the window is not new in us.
    let t0 = now_us - 4 * 3600 * 1_000_000;
    let body: String = [(0, "eu"), (10, "us"), (180, "us")]
        .iter()
        .map(|(minutes, region)| {
            json!({
                "timestamp": rfc3339(t0 + minutes * 60_000_000), "service": "auth",
                "level": "ERROR", "message": "sighting", "metadata": {"region": region},
                "exception": {"type": "com.acme.FirstSightingException", "message": "x"},
            })
            .to_string()
                + "\n"
        })
        .collect();
    let (status, answer) = veil.post("/api/v1/logs", "application/x-ndjson", body);
    assert_eq!(status, 200, "{answer}");
    let id = exception_id_string("com.acme.FirstSightingException", "auth");
    let window = |from_minute: i64, filter: &str| {
        format!(
            "/api/v1/exceptions/{id}?start={}&end={}{filter}",
            rfc3339(t0 + from_minute * 60_000_000).replace('+', "%2B"),
            rfc3339(now_us).replace('+', "%2B")
        )
    };
    let (status, d) = get(&veil, &window(120, "&region=us"));
    assert_eq!(
        (status, d["count"].as_u64(), &d["is_new"]),
        (200, Some(1), &json!(false)),
        "{d}"
    );
    let (status, d) = get(&veil, &window(5, "&region=us"));
    assert_eq!(
        (status, d["count"].as_u64(), &d["is_new"]),
        (200, Some(2), &json!(true)),
        "{d}"
    );
    let (status, d) = get(&veil, &window(120, "&level=FATAL"));
    assert_eq!(status, 404, "{d}");

    // The same over gRPC.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use veil_proto::v1::veil_client::VeilClient;
        use veil_proto::v1::{ExceptionDetailsRequest, ExceptionWindow, TopExceptionsRequest};
        let mut client = VeilClient::connect(format!("http://{}", veil.grpc))
            .await
            .unwrap();
        let window = ExceptionWindow {
            window: "6h".into(),
            ..Default::default()
        };
        let top = client
            .top_exceptions(TopExceptionsRequest {
                k: 5,
                window: Some(window.clone()),
            })
            .await
            .unwrap()
            .into_inner();
        let got: Vec<(String, u64)> = top
            .exceptions
            .iter()
            .map(|e| (e.exception_id.clone(), e.count))
            .collect();
        let want: Vec<(String, u64)> = brute_force(&all, 5)
            .into_iter()
            .map(|(id, n, ..)| (id, n))
            .collect();
        assert_eq!(got, want);
        let details = client
            .exception_details(ExceptionDetailsRequest {
                exception_id: top.exceptions[0].exception_id.clone(),
                window: Some(window),
                bucket: "1h".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(details.exception.unwrap().count, top.exceptions[0].count);
        assert_eq!(details.bucket_minutes, 60);
        assert_eq!(
            details.trend.iter().map(|b| b.count).sum::<u64>(),
            top.exceptions[0].count
        );
    });

    let (status, _) = get(&veil, "/api/v1/exceptions/00000000000000ff?window=24h");
    assert_eq!(status, 404);
    let (status, e) = get(&veil, "/api/v1/exceptions/top-k?window=forever");
    assert_eq!(status, 400, "{e}");
    veil.stop();
}
