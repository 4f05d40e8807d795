//! The database outage drill against a real Postgres restart. It stops the
//! shared server, so it is `#[ignore]`d in `cargo test` (where other tests
//! use the server at the same time) and `.ci/run` runs it on its own after
//! the suite. The same drill runs in the suite through a cuttable proxy
//! (`tests/reliability.rs`).

use std::process::Command;
use std::sync::Arc;

use crate::common::*;

fn cluster_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .expect("a Debian Postgres cluster (/etc/postgresql)")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .expect("a cluster version")
}

fn pg_ctl(action: &str) {
    let status = Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &cluster_version(),
            "main",
            action,
        ])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(status.success(), "pg_ctlcluster {action} failed");
}

/// Whatever happens in the test, the server is running again afterwards.
struct StartOnDrop;

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("pg_ctlcluster")
            .args([
                "--skip-systemctl-redirect",
                &cluster_version(),
                "main",
                "start",
            ])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the shared Postgres server; .ci/run runs it alone after the suite"]
async fn postgres_restart_is_reported_and_survived() {
    let app = Arc::new(spawn_app(&fresh_db(Db::Postgres).await).await);
    let _restart = StartOnDrop;
    outage_drill(app, || pg_ctl("stop"), || pg_ctl("start")).await;
}
