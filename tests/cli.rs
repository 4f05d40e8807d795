//! The operator tools, run as the real binary.

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_refund-gateway"));
    cmd.args(args)
        .env_remove("POCKYT_TOKEN")
        .env_remove("PAY10_SALT")
        .env_remove("PAY10_ENCRYPTION_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const TOKEN: &str = "5cbfb079f15b150122261c8537086d77a";
const KEY: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn sign_pockyt_prints_only_the_signature() {
    let args = [
        "sign",
        "pockyt",
        "--token",
        TOKEN,
        "merchantNo=200043",
        "storeNo=300014",
        "transactionNo=297553638300708562",
    ];
    assert_eq!(
        run(&args, &[]),
        (
            0,
            "0df745088d7202a6d186596acdc82c6a\n".into(),
            String::new()
        )
    );
    // The token may come from the environment instead of the command line.
    let (code, out, _) = run(
        &[
            "sign",
            "pockyt",
            "merchantNo=200043",
            "storeNo=300014",
            "transactionNo=297553638300708562",
        ],
        &[("POCKYT_TOKEN", TOKEN)],
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "0df745088d7202a6d186596acdc82c6a\n")
    );
    let (code, out, err) = run(&["sign", "pockyt", "--token", TOKEN, "no-equals-sign"], &[]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        run(&["sign", "pockyt", "merchantNo=1"], &[]).0,
        2,
        "a missing token is bad input"
    );
}

#[test]
fn hash_pay10_matches_the_documented_recipe() {
    let (code, out, _) = run(
        &[
            "hash",
            "pay10",
            "--salt",
            "1518b6433cc24337",
            "PAY_ID=1009120902164952",
            "ORDER_ID=37170171",
            "REFUND_ORDER_ID=3213132313213",
        ],
        &[],
    );
    assert_eq!(code, 0);
    let expected = refund_gateway::providers::pay10::crypto::hash(
        [
            ("ORDER_ID", "37170171"),
            ("PAY_ID", "1009120902164952"),
            ("REFUND_ORDER_ID", "3213132313213"),
        ],
        "1518b6433cc24337",
    );
    assert_eq!(out, format!("{expected}\n"));
    assert_eq!(run(&["hash", "pay10", "A=1"], &[("PAY10_SALT", "s")]).0, 0);
}

#[test]
fn encrypt_then_decrypt_pay10() {
    let (code, enc, _) = run(
        &[
            "encrypt",
            "pay10",
            "--key",
            KEY,
            "ORDER_ID=PAY10_1~AMOUNT=100",
        ],
        &[],
    );
    assert_eq!(code, 0);
    let (code, dec, _) = run(
        &["decrypt", "pay10", enc.trim()],
        &[("PAY10_ENCRYPTION_KEY", KEY)],
    );
    assert_eq!((code, dec.as_str()), (0, "ORDER_ID=PAY10_1~AMOUNT=100\n"));
    // Unpadded base64, as Pay10 sometimes sends it.
    let (code, dec, _) = run(
        &[
            "decrypt",
            "pay10",
            "--key",
            KEY,
            enc.trim().trim_end_matches('='),
        ],
        &[],
    );
    assert_eq!((code, dec.as_str()), (0, "ORDER_ID=PAY10_1~AMOUNT=100\n"));
    let (code, out, err) = run(&["encrypt", "pay10", "--key", "short", "x"], &[]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("32 bytes"), "{err}");
    assert_eq!(run(&["decrypt", "pay10", "--key", KEY, "@@@"], &[]).0, 2);
}
