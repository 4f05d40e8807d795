//! No Docker engine runs here, so the Dockerfile and compose file are checked
//! against the real binary: its flags, env vars, subcommands and health probe.

use std::process::Command;

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{}/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_refund-gateway"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_healthcheck_and_no_secrets() {
    let d = read("Dockerfile");
    assert!(
        d.matches("\nFROM ").count() + usize::from(d.starts_with("FROM ")) >= 2,
        "multi-stage"
    );
    assert!(d.contains("USER 10001"), "runs as a non-root user");
    assert!(d.contains("HEALTHCHECK") && d.contains("\"probe\""));
    assert!(d.contains("cargo build --release --locked"));
    for line in d
        .lines()
        .filter(|l| l.trim_start().starts_with("ENV") || l.starts_with("    "))
    {
        for word in ["TOKEN", "SALT", "ENCRYPTION_KEY", "PASSWORD", "API_KEY"] {
            assert!(
                !line.to_uppercase().contains(word),
                "secret-looking ENV in the image: {line}"
            );
        }
    }
    // The dependency-layer stubs must cover every binary target of the manifest.
    let manifest = read("Cargo.toml");
    for path in manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("path = \""))
        .map(|p| p.trim_end_matches('"'))
    {
        if path != "src/lib.rs" {
            assert!(
                d.contains(&format!("> {path}")),
                "Dockerfile stub missing for {path}"
            );
        }
    }
}

#[test]
fn env_vars_and_commands_used_by_the_deployment_exist() {
    let (code, help) = run(&["serve", "--help"]);
    assert_eq!(code, 0);
    for var in [
        "REFUND_GATEWAY_LISTEN",
        "REFUND_GATEWAY_LOG_FORMAT",
        "DATABASE_URL",
        "REFUND_GATEWAY_CONFIG",
    ] {
        assert!(help.contains(var), "{var} is not read by the binary");
    }
    let files = read("Dockerfile") + &read("docker-compose.yml");
    for var in [
        "REFUND_GATEWAY_LISTEN",
        "REFUND_GATEWAY_LOG_FORMAT",
        "DATABASE_URL",
        "RUST_LOG",
    ] {
        assert!(files.contains(var));
    }
    for sub in [
        &["sandbox", "--help"][..],
        &["probe", "--help"],
        &["serve", "--help"],
        &["migrate", "--help"],
    ] {
        assert_eq!(run(sub).0, 0, "{sub:?}");
    }
    let compose = read("docker-compose.yml");
    assert!(compose.contains("\"sandbox\", \"--listen\", \"0.0.0.0:8081\", \"--ipn-url\""));
    assert!(compose.contains("condition: service_healthy"));
    assert!(compose.contains("./deploy/config.compose.toml:/etc/refund-gateway/config.toml:ro"));
}

#[test]
fn compose_config_loads_and_matches_its_documented_key() {
    let path = format!("{}/deploy/config.compose.toml", env!("CARGO_MANIFEST_DIR"));
    let c = refund_gateway::config::Config::load(&refund_gateway::config::Overrides {
        config_file: Some(path),
        ..Default::default()
    })
    .unwrap();
    assert!(c
        .accounts
        .iter()
        .all(|a| !a.livemode && a.store_name == "Compose Demo Store"));
    assert_eq!(
        hex::encode(c.clients[0].key_hashes[0]),
        refund_gateway::config::sha256_hex("sk_compose_demo")
    );
}

#[tokio::test]
async fn the_healthcheck_probe_tells_up_from_down() {
    let app =
        crate::common::spawn_app(&crate::common::fresh_db(crate::common::Db::Sqlite).await).await;
    let url = format!("{}/healthz", app.base);
    let probe = tokio::task::spawn_blocking(move || run(&["probe", &url]).0)
        .await
        .unwrap();
    assert_eq!(probe, 0);
    app.stop().await;
    let down = tokio::task::spawn_blocking(|| run(&["probe", "http://127.0.0.1:9/healthz"]).0)
        .await
        .unwrap();
    assert_ne!(down, 0);
}

#[tokio::test]
async fn migrate_subcommand_prepares_both_backends() {
    for db in [crate::common::Db::Sqlite, crate::common::Db::Postgres] {
        if db == crate::common::Db::Postgres
            && !crate::common::postgres_or_skip("migrate_subcommand_prepares_both_backends").await
        {
            continue;
        }
        let url = crate::common::fresh_db(db).await;
        let out = tokio::task::spawn_blocking({
            let url = url.clone();
            move || {
                Command::new(env!("CARGO_BIN_EXE_refund-gateway"))
                    .args(["migrate", "--database-url", &url])
                    .env_remove("REFUND_GATEWAY_CONFIG")
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("migrations applied"));
        // The schema is there: a store opens it and can count pending refunds.
        let store = refund_gateway::store::Store::connect(&url, 1)
            .await
            .unwrap();
        assert_eq!(store.pending_summary().await.unwrap(), (0, None));
        store.close().await;
    }
}

#[test]
fn an_incomplete_production_config_refuses_to_start_naming_the_field() {
    let scratch = crate::common::Scratch::new("rg-bad-config");
    let dir = scratch.path().to_path_buf();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[[accounts]]\nname = \"p\"\nprovider = \"pay10\"\nenvironment = \"production\"\nbase_url = \"https://pg.pay10.ae\"\npay_id = \"1009120125180122\"\nsalt = \"s\"\nencryption_key = \"too-short\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_refund-gateway"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("accounts[0].encryption_key"), "{err}");
    assert!(
        !err.contains("too-short"),
        "the secret is not echoed: {err}"
    );
}
