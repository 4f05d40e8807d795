//! A newcomer's path: the README's "From zero to a production setup" block,
//! run verbatim with bash from the repository's root, in an environment like
//! a newcomer's (no build directory on `PATH`, none of the gateway's
//! variables set), on free ports; then its Postgres variant, where a server
//! answers.

use std::process::Command;

fn block(readme: &str, marker: &str) -> String {
    readme
        .split(&format!("<!-- {marker}:begin -->"))
        .nth(1)
        .and_then(|rest| rest.split(&format!("<!-- {marker}:end -->")).next())
        .and_then(|b| b.trim().strip_prefix("```sh"))
        .and_then(|b| b.strip_suffix("```"))
        .unwrap_or_else(|| panic!("the README marks a sh block {marker}"))
        .to_string()
}

/// Drops the walk-through's Postgres database (a fresh one each run).
fn drop_walkthrough_db(name: &str) {
    let base = crate::common::postgres_base();
    let _ = Command::new("psql")
        .args([
            &format!("{base}/postgres"),
            "-qc",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        ])
        .output();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn readme_production_section_runs_verbatim() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README");
    block_stops_when_its_gateway_cannot_start(root, &readme).await;
    let mut script = block(&readme, "newcomer");
    let postgres =
        crate::common::postgres_or_skip("readme_production_section_runs_verbatim (Postgres block)")
            .await;
    let db_name = "refunds_walkthrough";
    if postgres {
        // A fresh database each run: drop what an earlier run left.
        drop_walkthrough_db(db_name);
        script.push_str(&block(&readme, "newcomer-postgres"));
    }
    script.push_str("\necho \"work=$WORK\"\n");
    // PATH as a newcomer has it: the system's and cargo's, no build directory.
    let path: Vec<String> = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.contains("/target/"))
        .map(str::to_string)
        .collect();
    let mut cmd = Command::new("timeout");
    cmd.args(["300", "bash", "-euo", "pipefail", "-c", &script])
        .current_dir(root)
        .env_clear()
        .env("PATH", path.join(":"))
        .env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
        )
        .env("PROD_GW", format!("127.0.0.1:{}", free_port()))
        .env("PROD_SB", format!("127.0.0.1:{}", free_port()))
        .env("RUST_LOG", "warn");
    for keep in ["CARGO_HOME", "RUSTUP_HOME", "CARGO_TARGET_DIR", "TMPDIR"] {
        if let Ok(v) = std::env::var(keep) {
            cmd.env(keep, v);
        }
    }
    if postgres {
        cmd.env("PG_URL", crate::common::postgres_base());
    }
    let out = cmd.output().expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the README block failed:\n{stdout}\n{stderr}"
    );
    let work = stdout
        .lines()
        .find_map(|l| l.strip_prefix("work="))
        .expect("the block names its folder")
        .to_string();
    let refund: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{work}/refund.json")).unwrap())
            .unwrap_or_else(|e| panic!("refund.json: {e}\n{stdout}\n{stderr}"));
    assert_eq!(refund["status"], "succeeded", "{refund}");
    assert_eq!(refund["livemode"], false, "sandbox accounts are test money");
    let summary = std::fs::read_to_string(format!("{work}/gateway.txt")).unwrap();
    if postgres {
        assert!(summary.contains(db_name), "{summary}");
        drop_walkthrough_db(db_name);
    } else {
        assert!(summary.contains("/ipn/pockyt/pockyt-sandbox"), "{summary}");
    }
    assert!(summary.contains("store-1: "), "{summary}");
    assert!(summary.contains("operators (operator keys"), "{summary}");
    assert!(
        stdout.contains("\"data\":[]") || stdout.contains("\"data\": []"),
        "the empty review queue: {stdout}"
    );
    let _ = std::fs::remove_dir_all(&work);
}

/// The block gives up with a message when the gateway cannot start (its
/// port is taken by another process), rather than waiting forever or
/// talking to the other process. Run first by the test above, so that the
/// block's `cargo build` (a build of its own: `cargo test` compiles with
/// the dev-dependencies' features) happens once, under a generous bound.
async fn block_stops_when_its_gateway_cannot_start(root: &'static str, readme: &str) {
    let script = block(readme, "newcomer");
    // Something else answers on the gateway's port (as the demo would).
    let other = axum::Router::new().route("/readyz", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taken = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, other).await.unwrap() });
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["900", "bash", "-euo", "pipefail", "-c", &script])
            .current_dir(root)
            .env("PROD_GW", &taken)
            .env("PROD_SB", format!("127.0.0.1:{}", free_port()))
            .env_remove("REFUND_GATEWAY_CONFIG")
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .output()
            .expect("bash runs")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it must not carry on: {stderr}");
    assert_ne!(
        out.status.code(),
        Some(124),
        "it gave up by itself, not by the timeout"
    );
    assert!(stderr.contains("it exited"), "{stderr}");
}

/// The README cites nothing outside the repository: every relative link
/// resolves to a file of the clone.
#[test]
fn readme_links_resolve_inside_the_repository() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for doc in [
        "README.md",
        "docs/api.md",
        "docs/providers.md",
        "tests/fixtures/README.md",
    ] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        assert!(!text.contains("../shared"), "{doc} cites ../shared");
        for part in text.split("](").skip(1) {
            let target = part.split(')').next().unwrap_or("");
            if target.starts_with("http") || target.starts_with('#') || target.is_empty() {
                continue;
            }
            let path = target.split('#').next().unwrap_or(target);
            let base = root.join(doc).parent().unwrap().to_path_buf();
            assert!(base.join(path).exists(), "{doc}: dead link {target}");
        }
    }
}
