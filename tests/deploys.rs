//! Replicas on one Redis behind a round-robin balancer, as real processes: a deploy (SIGTERM) moves
//! every running answer to another replica without loss, a killed replica's answers end with
//! `upstream_lost`, and a restarted replica gives back everything that reached Redis.

mod common;

use common::balancer::Balancer;
use common::follow::{follow, Followed};
use common::process::{json_lines, redis_config, ProxyProcess};
use common::redis_server::RedisServer;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

/// Answer `n`'s tokens: `count` of them, distinct per answer.
fn tokens(n: usize, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("a{n}.t{i} ")).collect()
}

/// An upstream answering `/s/<n>` with `count` tokens `gap` apart.
async fn upstream(count: usize, gap: Duration) -> MockUpstream {
    MockUpstream::start(move |parts, _| {
        let n: usize = parts.uri.path().trim_start_matches("/s/").parse().unwrap_or(0);
        Reply::sse(answer(&tokens(n, count), gap))
    })
    .await
}

/// Starts answer `n` on `addr`: its response, once its first `k` events have arrived.
async fn start(addr: std::net::SocketAddr, n: usize, k: usize) -> (Events, Vec<Ev>) {
    let resp = get(&format!("http://{addr}/s/{n}"), &[]).await;
    assert_eq!(resp.status(), 200);
    let mut evs = Events::new(resp);
    let seen = evs.take(k).await;
    assert_eq!(seen.len(), k, "answer {n} is running");
    (evs, seen)
}

/// Each upstream path asked for exactly once, `n` paths in all.
fn assert_one_request_each(up: &MockUpstream, n: usize) {
    let mut per_path: HashMap<String, usize> = HashMap::new();
    for uri in seen_uris(&up.seen) {
        *per_path.entry(uri).or_default() += 1;
    }
    assert_eq!(per_path.len(), n, "{per_path:?}");
    assert!(
        per_path.values().all(|&c| c == 1),
        "an answer was asked for twice: {per_path:?}"
    );
}

/// The `code` and `recoverable` of an `error` event.
fn error_of(e: &Ev) -> (String, bool) {
    assert_eq!(e.event, "error", "{e:?}");
    let v = e.json();
    (
        v["code"].as_str().expect("code").to_owned(),
        v["recoverable"].as_bool().expect("recoverable"),
    )
}

/// Each event's id and data, to compare what two clients saw.
fn ids_and_data(events: &[Ev]) -> Vec<(Option<String>, String)> {
    events.iter().map(|e| (e.id.clone(), e.data.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_moves_every_running_answer_to_another_replica_without_loss() {
    const ANSWERS: usize = 50;
    const TOKENS: usize = 160;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let up = upstream(TOKENS, Duration::from_millis(25)).await;
    let cfg = redis_config(up.addr, &redis.url(), "30s", "1s");
    let a = ProxyProcess::start(&["--config", cfg.path(), "--log-format", "json"]).await;
    let b = ProxyProcess::start(&["--config", cfg.path()]).await;
    let lb = Balancer::start(&[a.addr, b.addr]).await;

    // Every answer starts on A; its client comes back through the balancer when it is sent away.
    let reconnect: Vec<String> = (0..ANSWERS)
        .map(|n| format!("http://{}/s/{n}", lb.addr))
        .collect();
    let mut clients = Vec::new();
    for (n, url) in reconnect.into_iter().enumerate() {
        let (evs, seen) = start(a.addr, n, 2).await;
        clients.push(tokio::spawn(async move { follow(evs, seen, &url).await }));
    }
    // Answer 50 on A with a second tab on B following it from its first event since before the
    // SIGTERM: B goes on tailing it from Redis while A drains.
    let (on_a, first) = start(a.addr, ANSWERS, 1).await;
    let id = first[0].id.clone().expect("id");
    let mut on_b = Events::new(
        get(
            &format!("http://{}/s/{ANSWERS}", b.addr),
            &[("last-event-id", &id)],
        )
        .await,
    );
    let mut tab = on_b.take(1).await;
    assert_eq!(tab.len(), 1, "B tails answer {ANSWERS} of A");
    let tab_task = tokio::spawn(async move {
        tab.extend(on_b.all().await);
        tab
    });
    a.sigterm();

    let mut outcomes: Vec<Followed> = Vec::new();
    for c in clients {
        outcomes.push(
            c.await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
        );
    }
    for (n, out) in outcomes.iter().enumerate() {
        assert_gapless(&out.events, 1);
        assert_eq!(text_of(&out.events), tokens(n, TOKENS).concat(), "answer {n}");
        assert_thinking_then_done(&out.events);
        assert!(
            out.responses.len() >= 2,
            "answer {n}: its client was not sent to another replica"
        );
        for r in &out.responses {
            wire::assert_every_client_reads(r, Some(1000));
        }
        let first = String::from_utf8_lossy(&out.responses[0]);
        assert!(
            first.ends_with("retry: 250\n"),
            "answer {n}: A's response ends by asking to come back soon: {first:?}"
        );
    }
    let mut pauses: Vec<Duration> = outcomes.iter().flat_map(|o| o.pauses.clone()).collect();
    pauses.sort();
    println!(
        "hand-off: {} reconnections; pause between events across one: median {:?}, max {:?}",
        pauses.len(),
        pauses[pauses.len() / 2],
        pauses[pauses.len() - 1]
    );
    let mut tab = first;
    tab.extend(tab_task.await.expect("the tab on B"));
    assert_gapless(&tab, 1);
    assert_eq!(text_of(&tab), tokens(ANSWERS, TOKENS).concat(), "the tab on B");
    assert_thinking_then_done(&tab);
    drop(on_a);
    assert_eq!(up.requests(), ANSWERS + 1, "one upstream request per answer");
    assert_one_request_each(&up, ANSWERS + 1);
    assert!(lb.served(b.addr) >= ANSWERS, "the clients resumed on B");

    // A read every upstream to its end, then exited cleanly.
    let (status, log) = a.exit().await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}; log:\n{log}"
    );
    assert_eq!(up.closed_early(), 0, "no upstream was cut short");
    let completed = json_lines(&log)
        .iter()
        .filter(|l| l["message"] == "stream finished" && l["outcome"] == "completed")
        .count();
    assert_eq!(completed, ANSWERS + 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_ends_followers_elsewhere_with_upstream_lost_after_what_reached_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let all = tokens(0, 400).concat();
    let up = upstream(400, Duration::from_millis(50)).await;
    let cfg = redis_config(up.addr, &redis.url(), "5s", "1s");
    let a = ProxyProcess::start(&["--config", cfg.path()]).await;
    let b = ProxyProcess::start(&["--config", cfg.path()]).await;
    let lb = Balancer::start(&[a.addr, b.addr]).await;

    let (on_a, seen) = start(a.addr, 0, 3).await;
    let first = seen[0].id.clone().expect("id");
    let third = seen[2].id.clone().expect("id");
    // A second tab following from the start, and a resume from the third event, both on B.
    let url = format!("http://{}/s/0", b.addr);
    let mut follower = Events::new(get(&url, &[("last-event-id", &first)]).await);
    let mut resumed = Events::new(get(&url, &[("last-event-id", &third)]).await);
    let mut f_events = follower.take(3).await;
    let mut r_events = resumed.take(1).await;
    assert_eq!(f_events.len(), 3, "the follower on B tails A's answer");

    a.sigkill();
    let killed = std::time::Instant::now();
    drop(on_a);
    f_events.extend(follower.all().await);
    let lost_after = killed.elapsed();
    r_events.extend(resumed.all().await);

    let last = f_events.last().expect("events");
    assert_eq!(error_of(last), ("upstream_lost".to_owned(), false));
    assert_gapless(&f_events, 2);
    let text = text_of(&f_events);
    assert!(all.starts_with(&text), "the follower's text is the answer's");
    assert_eq!(
        ids_and_data(&r_events),
        ids_and_data(&f_events[2..]),
        "both clients on B saw the same"
    );
    println!(
        "upstream_lost {:.2} s after SIGKILL (lease 1 s)",
        lost_after.as_secs_f64()
    );

    // A later resume, through the balancer, replays what reached Redis and ends the same way.
    let later = get(&format!("http://{}/s/0", lb.addr), &[("last-event-id", &first)]).await;
    assert_eq!(later.status(), 200);
    let replayed = Events::new(later).all().await;
    assert_eq!(ids_and_data(&replayed), ids_and_data(&f_events));
    assert_eq!(up.requests(), 1, "one upstream request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_gives_back_finished_answers_and_what_reached_redis_of_running_ones() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let all = tokens(1, 400).concat();
    // Answer 0 is quick, answer 1 runs for 20 s: longer than the 1 s shutdown grace.
    let up = MockUpstream::start(move |parts, _| {
        let quick = parts.uri.path() == "/s/0";
        let (n, gap) = if quick {
            (0, Duration::ZERO)
        } else {
            (1, Duration::from_millis(50))
        };
        Reply::sse(answer(&tokens(n, 400), gap))
    })
    .await;
    let cfg = redis_config(up.addr, &redis.url(), "1s", "1s");
    let a = ProxyProcess::start(&["--config", cfg.path()]).await;
    let lb = Balancer::start(&[a.addr]).await;

    let finished = Events::new(get(&format!("http://{}/s/0", lb.addr), &[]).await)
        .all()
        .await;
    assert_thinking_then_done(&finished);
    let (running, seen) = start(lb.addr, 1, 3).await;
    let url = format!("http://{}/s/1", lb.addr);
    let client = tokio::spawn(async move { follow(running, seen, &url).await });

    // systemd's restart: stop, wait for the exit, start again on the same Redis.
    a.sigterm();
    let (status, log) = a.exit().await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}; log:\n{log}"
    );
    let a2 = ProxyProcess::start(&["--config", cfg.path()]).await;
    lb.add(a2.addr);

    let out = client
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert_gapless(&out.events, 1);
    assert!(all.starts_with(&text_of(&out.events)));
    let last = out.last().expect("events");
    assert_eq!(error_of(last), ("shutdown".to_owned(), true), "the grace ran out");
    // Everything that reached Redis of the running answer, from its first event.
    let first = out.events[0].id.clone().expect("id");
    let again = Events::new(get(&format!("http://{}/s/1", a2.addr), &[("last-event-id", &first)]).await)
        .all()
        .await;
    assert_eq!(ids_and_data(&again), ids_and_data(&out.events[1..]));

    // The finished answer, resumed from its first event, exactly.
    let first = finished[0].id.clone().expect("id");
    let resp = get(&format!("http://{}/s/0", lb.addr), &[("last-event-id", &first)]).await;
    assert_eq!(resp.status(), 200);
    let rest = Events::new(resp).all().await;
    assert_eq!(ids_and_data(&rest), ids_and_data(&finished[1..]));
    assert_eq!(text_of(&rest), tokens(0, 400).concat());
    assert_eq!(up.requests(), 2, "one upstream request per answer");
}
