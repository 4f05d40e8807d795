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
    )
    .unwrap();
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

/// No secret is printed in any failure mode: a config with a syntax error,
/// a missing environment variable, a value of the wrong type, an unreachable
/// database, a database URL that does not parse. Everything the process
/// writes, on stdout and stderr, in both log formats, is searched for every
/// configured secret. Each failure is reported once, naming what to fix.
#[test]
fn failures_never_print_a_secret() {
    const SECRETS: [&str; 5] = [
        "tok_SECRET_pockyt_9f2",
        "salt_SECRET_pay10_7c1",
        "KEYSECRET0123456789KEYSECRET0123",
        "dbpass_SECRET_44",
        "qpass_SECRET_55",
    ];
    let scratch = crate::common::Scratch::new("rg-secrets");
    let dir = scratch.path().to_path_buf();
    let config = |database_url: &str, token_line: &str, salt_line: &str| {
        format!(
            r#"database_url = "{database_url}"
listen = "127.0.0.1:0"
[[accounts]]
name = "pockyt-main"
provider = "pockyt"
environment = "production"
base_url = "https://mapi.yuansfer.com"
merchant_no = "200043"
store_no = "300014"
{token_line}
[[accounts]]
name = "pay10-main"
provider = "pay10"
environment = "production"
base_url = "https://pg.pay10.ae"
pay_id = "1009120125180122"
{salt_line}
encryption_key = "{key}"
[[clients]]
name = "store-1"
api_key_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
accounts = ["pockyt-main", "pay10-main"]
"#,
            key = SECRETS[2]
        )
    };
    let unreachable = format!(
        "postgres://rg:{}@127.0.0.1:1/rg?password={}",
        SECRETS[3], SECRETS[4]
    );
    let token = format!("token = \"{}\"", SECRETS[0]);
    let salt = format!("salt = \"{}\"", SECRETS[1]);
    let cases = [
        (
            "bad TOML",
            config(&unreachable, &format!("token = {}", SECRETS[0]), &salt),
            "line 10",
        ),
        (
            "missing env var",
            config(&unreachable, "token = \"env:RG_NOT_SET_ANYWHERE\"", &salt),
            "RG_NOT_SET_ANYWHERE",
        ),
        (
            "wrong type",
            config(
                &unreachable,
                &token,
                &format!("salt = [\"{}\"]", SECRETS[1]),
            ),
            "line 17",
        ),
        (
            "unreachable database",
            config(&unreachable, &token, &salt),
            "127.0.0.1:1",
        ),
        (
            "bad URL",
            config(
                &format!(
                    "postgres://rg:{}@[::1/rg?password={}",
                    SECRETS[3], SECRETS[4]
                ),
                &token,
                &salt,
            ),
            "does not parse",
        ),
    ];
    for (name, text, names) in cases {
        let path = dir.join(format!("{}.toml", name.replace(' ', "-")));
        std::fs::write(&path, &text).unwrap();
        for args in [vec!["--config"], vec!["migrate", "--config"]] {
            for format in ["pretty", "json"] {
                let mut a = args.clone();
                let p = path.to_str().unwrap();
                a.push(p);
                a.extend(["--log-format", format]);
                let (code, out, err) = run(&a, &[("RUST_LOG", "debug")]);
                let all = format!("{out}{err}");
                assert_ne!(code, 0, "{name}: {all}");
                for s in SECRETS {
                    assert!(
                        !all.contains(s),
                        "{name} ({format}, {args:?}) printed a secret: {all}"
                    );
                }
                assert!(
                    all.contains(names),
                    "{name}: the message names what to fix: {all}"
                );
                assert_eq!(
                    all.matches(names).count(),
                    1,
                    "{name}: reported once: {all}"
                );
            }
        }
    }
}

#[test]
fn keys_new_prints_a_key_once_and_its_hash_for_the_config() {
    let (code, out, err) = run(
        &[
            "keys",
            "new",
            "--client",
            "store-9",
            "--accounts",
            "pockyt-main,pay10-main",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let key = out
        .lines()
        .find(|l| l.starts_with("sk_"))
        .expect("the key is printed")
        .to_string();
    assert_eq!(key.len(), 67, "sk_ and 32 random bytes in hex");
    // The printed lines are a valid [[clients]] entry for this key.
    let entry: String = out
        .lines()
        .skip_while(|l| !l.starts_with("[[clients]]"))
        .map(|l| format!("{l}\n"))
        .collect();
    let parsed: toml::Value = toml::from_str(&entry).expect("pastes into a config");
    let client = &parsed["clients"][0];
    assert_eq!(client["name"].as_str(), Some("store-9"));
    assert_eq!(
        client["api_key_sha256"].as_str(),
        Some(refund_gateway::config::sha256_hex(&key).as_str())
    );
    assert_eq!(client["accounts"].as_array().unwrap().len(), 2);
    let (_, again, _) = run(&["keys", "new", "--client", "store-9"], &[]);
    assert!(!again.contains(&key), "every key is new");
    let (code, _, err) = run(&["keys", "new", "--client", "bad name"], &[]);
    assert_eq!(code, 2, "{err}");
}

/// Each start-up failure says what to fix, once.
#[tokio::test]
async fn startup_errors_say_what_to_fix() {
    // Port in use: the address and the flag / variable to change it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run(
        &["--listen", &addr, "--database-url", "sqlite::memory:"],
        &[],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains(&addr) && err.contains("--listen") && err.contains("REFUND_GATEWAY_LISTEN"),
        "{err}"
    );
    assert_eq!(err.matches("error:").count(), 1, "once: {err}");
    // A database that does not exist: how to create it (this one needs a
    // Postgres server, so it goes through the suite's skip rule).
    if crate::common::postgres_or_skip("startup_errors_say_what_to_fix").await {
        let base = crate::common::postgres_base();
        let (code, _, err) = run(
            &[
                "migrate",
                "--database-url",
                &format!("{base}/rg_no_such_db_x"),
            ],
            &[],
        );
        assert_ne!(code, 0);
        let server = base
            .rsplit('@')
            .next()
            .unwrap_or(&base)
            .trim_start_matches("postgres://");
        assert!(
            err.contains(server) && err.contains("does not exist") && err.contains("createdb"),
            "{err}"
        );
    }
    // A refused connection: where, and that nothing answers there.
    let (_, _, err) = run(
        &["migrate", "--database-url", "postgres://u@127.0.0.1:1/db"],
        &[],
    );
    assert!(
        err.contains("127.0.0.1:1") && err.contains("connection refused"),
        "{err}"
    );
    assert!(!err.contains("pool timed out"), "{err}");
    // An unknown field is named as such, not as "not valid TOML".
    let scratch = crate::common::Scratch::new("rg-unknown");
    let dir = scratch.path().to_path_buf();
    let path = dir.join("c.toml");
    std::fs::write(&path, "listn = \"127.0.0.1:1\"\n").unwrap();
    let (_, _, err) = run(&["--config", path.to_str().unwrap()], &[]);
    assert!(
        err.contains("unknown field `listn`") && err.contains("line 1"),
        "{err}"
    );
    // A subcommand's help lists its own flags only.
    let (_, help, _) = run(&["keys", "new", "--help"], &[]);
    assert!(
        help.contains("--client") && !help.contains("--database-url"),
        "{help}"
    );
    let (_, help, _) = run(&["sign", "pockyt", "--help"], &[]);
    assert!(!help.contains("--listen"), "{help}");
}
