//! A newcomer's path: the README's "From zero to a production setup" block,
//! run verbatim with bash against a standalone sandbox (key generation
//! included), on free ports in a scratch directory.

use std::process::Command;

#[test]
fn readme_production_section_runs_verbatim() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let block = readme
        .split("<!-- newcomer:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- newcomer:end -->").next())
        .expect("the README marks the newcomer block");
    let script = block
        .trim()
        .strip_prefix("```sh")
        .and_then(|b| b.strip_suffix("```"))
        .expect("a sh code block");
    let dir = std::env::temp_dir().join(format!("rg-newcomer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_refund-gateway"))
        .parent()
        .unwrap()
        .to_path_buf();
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let out = Command::new("timeout")
        .args(["120", "bash", "-euo", "pipefail", "-c", script])
        .current_dir(&dir)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("GW", format!("127.0.0.1:{}", port()))
        .env("SB", format!("127.0.0.1:{}", port()))
        .env_remove("REFUND_GATEWAY_CONFIG")
        .env_remove("DATABASE_URL")
        .env_remove("REFUND_GATEWAY_LISTEN")
        .env("RUST_LOG", "warn")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the README block failed:\n{stdout}\n{stderr}"
    );
    let refund: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("refund.json")).unwrap())
            .unwrap_or_else(|e| panic!("refund.json: {e}\n{stdout}\n{stderr}"));
    assert_eq!(refund["status"], "succeeded", "{refund}");
    assert_eq!(refund["livemode"], false, "sandbox accounts are test money");
    let summary = std::fs::read_to_string(dir.join("gateway.txt")).unwrap();
    assert!(summary.contains("/ipn/pockyt/pockyt-sandbox"), "{summary}");
    assert!(summary.contains("store-1: "), "{summary}");
    let _ = std::fs::remove_dir_all(&dir);
}
