use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn defaults_need_no_file() {
    let s = Settings::load_from(None, &BTreeMap::new(), &Overrides::default()).unwrap();
    assert_eq!(s.http_listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.grpc_listen.to_string(), "127.0.0.1:8443");
    assert!(s.database_url().starts_with("sqlite://./data/truevault.db"));
}

#[test]
fn file_then_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "trial_days = 3\njwt_issuer = \"file\"\nlogin_max_failures = 9\n",
    )
    .unwrap();
    let e = env(&[
        ("TRUEVAULT_TRIAL_DAYS", "5"),
        ("TRUEVAULT_JWT_ISSUER", "12345"),
        ("TRUEVAULT_TRUSTED_PROXIES", "10.1.2.3, ::1"),
        ("TRUEVAULT_HTTP_LISTEN", "127.0.0.1:1"),
        ("TRUEVAULT_LOG", "debug"),
        ("TRUEVAULT_TEST_POSTGRES_URL", "x"),
    ]);
    let flags = Overrides {
        http_listen: Some("127.0.0.1:2".parse().unwrap()),
        ..Overrides::default()
    };
    let s = Settings::load_from(Some(&file), &e, &flags).unwrap();
    assert_eq!(s.trial_days, 5);
    assert_eq!(s.jwt_issuer, "12345");
    assert_eq!(s.login_max_failures, 9);
    assert_eq!(s.trusted_proxies.len(), 2);
    assert_eq!(s.http_listen.to_string(), "127.0.0.1:2");
}

#[test]
fn unknown_and_invalid_settings_are_errors() {
    let err = Settings::load_from(
        None,
        &env(&[("TRUEVAULT_NO_SUCH_THING", "1")]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no_such_thing"), "{err}");
    let err = Settings::load_from(
        None,
        &env(&[("TRUEVAULT_TRIAL_DAYS", "0")]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("trial_days"), "{err}");
    let err = Settings::load_from(
        None,
        &env(&[("TRUEVAULT_PAYPAL_CLIENT_ID", "AZ123")]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("paypal_client_secret"), "{err}");
    let s = Settings::load_from(
        None,
        &env(&[
            ("TRUEVAULT_PAYPAL_CLIENT_ID", "AZ123"),
            ("TRUEVAULT_PAYPAL_CLIENT_SECRET", "shh"),
            ("TRUEVAULT_PAYPAL_WEBHOOK_ID", "WH-1"),
            ("TRUEVAULT_PAYPAL_PLANS", "{ personal = \"P-1\" }"),
        ]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        s.paypal_plans.get("personal").map(String::as_str),
        Some("P-1")
    );
    assert!(!s.to_redacted_toml().unwrap().contains("shh"));
}

#[test]
fn the_metrics_token_comes_from_a_file_and_is_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics-token");
    std::fs::write(&file, "scrape-s3cret\n").unwrap();
    let s = Settings::load_from(
        None,
        &env(&[("TRUEVAULT_METRICS_TOKEN_FILE", file.to_str().unwrap())]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        s.metrics_token.as_ref().map(|t| t.expose()),
        Some("scrape-s3cret")
    );
    assert!(!format!("{s:?}").contains("s3cret"));
    assert!(!s.to_redacted_toml().unwrap().contains("s3cret"));
}

#[test]
fn database_url_from_file_is_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db");
    std::fs::write(&file, "postgres://u:pw@db/x\n").unwrap();
    let s = Settings::load_from(
        None,
        &env(&[("TRUEVAULT_DATABASE_URL_FILE", file.to_str().unwrap())]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.database_url(), "postgres://u:pw@db/x");
    assert!(!format!("{s:?}").contains("pw@"));
    assert!(!s.to_redacted_toml().unwrap().contains("pw@"));
}

#[test]
fn a_provisioning_provider_needs_everything_a_new_node_needs() {
    let load = |pairs: &[(&str, &str)]| {
        Settings::load_from(None, &env(pairs), &Overrides::default()).map_err(|e| e.to_string())
    };
    let err = load(&[("TRUEVAULT_PROVISIONING_PROVIDER", "contabo")]).unwrap_err();
    for name in [
        "provisioning_grpc_url",
        "agent_download_url",
        "agent_sha256",
        "contabo_client_id",
        "contabo_client_secret",
        "contabo_api_user",
        "contabo_api_password",
    ] {
        assert!(err.contains(name), "{err}");
    }
    let err = load(&[("TRUEVAULT_PROVISIONING_PROVIDER", "hetzner")]).unwrap_err();
    assert!(err.contains("provisioning_provider"), "{err}");
    let err = load(&[("TRUEVAULT_OPERATOR_EMAIL", "not an address")]).unwrap_err();
    assert!(err.contains("operator_email"), "{err}");

    let digest = "0123456789abcdef".repeat(4);
    let complete = [
        ("TRUEVAULT_PROVISIONING_PROVIDER", "contabo"),
        (
            "TRUEVAULT_PROVISIONING_GRPC_URL",
            "https://control.example.com:8443",
        ),
        (
            "TRUEVAULT_AGENT_DOWNLOAD_URL",
            "https://downloads.example.com/a",
        ),
        ("TRUEVAULT_AGENT_SHA256", digest.as_str()),
        ("TRUEVAULT_CONTABO_CLIENT_ID", "INT-1"),
        ("TRUEVAULT_CONTABO_CLIENT_SECRET", "s3cret-client"),
        ("TRUEVAULT_CONTABO_API_USER", "api@example.com"),
        ("TRUEVAULT_CONTABO_API_PASSWORD", "s3cret-password"),
        ("TRUEVAULT_CONTABO_REGIONS", "{ us-east = \"US-east\" }"),
    ];
    let s = load(&complete).unwrap();
    assert_eq!(s.contabo_regions.get("us-east").unwrap(), "US-east");
    let shown = s.to_redacted_toml().unwrap();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(!format!("{s:?}").contains("s3cret"));

    let mut bad = complete.to_vec();
    bad[1].1 = "http://control.example.com:8443";
    bad[3].1 = "xyz";
    let err = load(&bad).unwrap_err();
    assert!(
        err.contains("provisioning_grpc_url") && err.contains("agent_sha256"),
        "{err}"
    );
}
