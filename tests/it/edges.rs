//! The edges a hostile network reaches: bytes the database refuses, odd
//! headers, slow and idle connections, a connection cap.

use std::io::{Read, Write};
use std::time::Duration;

use crate::common::*;

/// NUL and other bytes Postgres refuses in text, over-long ids and cursors:
/// 4xx problems, never 500 (both backends).
async fn bytes_the_database_refuses_are_client_errors(db: Db) {
    let app = spawn_app(&fresh_db(db).await).await;
    let long = "x".repeat(5000);
    let cases = [
        ("/v1/refunds/%00".to_string(), 404),
        ("/v1/refunds/%00/receipt".to_string(), 404),
        ("/v1/refunds/rf_%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00".to_string(), 404),
        (format!("/v1/refunds/{long}"), 404),
        ("/v1/refunds?transaction_no=a%00b".to_string(), 400),
        ("/v1/refunds?reference=%01".to_string(), 400),
        ("/v1/refunds?refund_reference=%00".to_string(), 400),
        ("/v1/refunds?starting_after=%00".to_string(), 400),
        (format!("/v1/refunds?starting_after={long}"), 400),
        (format!("/v1/refunds?transaction_no={long}"), 400),
        ("/v1/refunds/rf_01J000000000000000000000?sync=maybe".to_string(), 400),
    ];
    for (path, want) in cases {
        let r = app.get(&path).await;
        assert_eq!(r.status, want, "{path}: {}", r.text);
        assert_eq!(
            r.headers["content-type"], "application/problem+json",
            "{path}"
        );
        assert!(r.body["code"].is_string(), "{path}: {}", r.text);
    }
    app.stop().await;
}

both_backends!(bytes_the_database_refuses_are_client_errors);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_scheme_is_case_insensitive() {
    let app = spawn_app(&fresh_db(Db::Sqlite).await).await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = app
            .send(
                app.http
                    .get(format!("{}/v1/refunds", app.base))
                    .header("authorization", format!("{scheme} {KEY}")),
            )
            .await;
        assert_eq!(r.status, 200, "{scheme}");
    }
    let r = app
        .send(
            app.http
                .get(format!("{}/v1/refunds", app.base))
                .header("authorization", format!("Basic {KEY}")),
        )
        .await;
    assert_eq!(r.status, 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_bounded() {
    let app = spawn_app(&fresh_db(Db::Sqlite).await).await;
    let get = |id: String| {
        app.send(
            app.http
                .get(format!("{}/healthz", app.base))
                .header("x-request-id", id),
        )
    };
    let r = get("pos-7.req-0042".into()).await;
    assert_eq!(
        r.headers["x-request-id"], "pos-7.req-0042",
        "a short token is kept"
    );
    for bad in ["x".repeat(8192), "a b".into(), "<script>".into()] {
        let r = get(bad.clone()).await;
        let echoed = r.headers["x-request-id"].to_str().unwrap().to_string();
        assert_ne!(echoed, bad);
        assert!(echoed.len() <= 128 && !echoed.is_empty(), "{echoed}");
    }
    app.stop().await;
}

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_string()
}

/// Reads until the peer closes (or `limit` passes); true if it closed.
fn closed_within(stream: &mut std::net::TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A connection that sends half a header, or nothing, is closed after the
/// header-read timeout; one that keeps sending complete requests is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed() {
    let mut c = test_config(&fresh_db(Db::Sqlite).await);
    c.conn_limits.header_read_timeout = Duration::from_millis(300);
    let app = spawn_with(c).await;
    let a = addr(&app);
    let handle = tokio::task::spawn_blocking(move || {
        let mut idle = std::net::TcpStream::connect(&a).unwrap();
        let mut slow = std::net::TcpStream::connect(&a).unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        assert!(closed_within(&mut idle, Duration::from_secs(5)), "idle");
        assert!(
            closed_within(&mut slow, Duration::from_secs(5)),
            "slow header"
        );
    });
    handle.await.unwrap();
    app.stop().await;
}

/// At the cap, a new client gets in by closing the oldest idle connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_the_oldest_idle_connection_makes_room() {
    let mut c = test_config(&fresh_db(Db::Sqlite).await);
    c.conn_limits.max_connections = 3;
    let app = spawn_with(c).await;
    let a = addr(&app);
    let mut held = vec![];
    for _ in 0..3 {
        held.push(std::net::TcpStream::connect(&a).unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = fresh
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .expect("answers at the cap");
    assert_eq!(r.status().as_u16(), 200);
    let first = held.remove(0);
    let closed = tokio::task::spawn_blocking(move || {
        let mut first = first;
        closed_within(&mut first, Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert!(closed, "the oldest idle connection was closed to make room");
    app.stop().await;
}

/// Answers hyper gives before any of our code runs: the status is right and
/// the connection is closed (they carry no problem body: documented).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_before_the_handler() {
    let app = spawn_app(&fresh_db(Db::Sqlite).await).await;
    let a = addr(&app);
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let cases: Vec<(String, &str)> = vec![
        (huge_header, "431"),
        (
            "POST /v1/refunds HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".into(),
            "400",
        ),
        ("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Del: a\x7fb\r\n\r\n".into(), "400"),
        (
            format!("GET /healthz?{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)),
            "414",
        ),
    ];
    tokio::task::spawn_blocking(move || {
        for (raw, want) in cases {
            let mut s = std::net::TcpStream::connect(&a).unwrap();
            let _ = s.write_all(raw.as_bytes());
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            let text = String::from_utf8_lossy(&out);
            assert!(
                text.starts_with(&format!("HTTP/1.1 {want}")),
                "{want}: {text}"
            );
        }
    })
    .await
    .unwrap();
    app.stop().await;
}
