//! The Contabo client against a fake Contabo API on loopback that checks requests the way the
//! spec does, with faults injected: whatever happens, one order gets exactly one instance.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use truevault_provisioning::contabo::{Contabo, ContaboSettings, Credentials};
use truevault_provisioning::fake::contabo::{
    API_PASSWORD, API_USER, CLIENT_ID, CLIENT_SECRET, FakeContabo, Fault, Route, UBUNTU_IMAGE,
};
use truevault_provisioning::{
    CreateInstance, Error, InstanceStatus, Provider, RetryPolicy, Secret, create_once,
    create_once_resuming,
};

/// Short pauses so faults cost milliseconds; `settle` outlasts the slow-create fault.
const POLICY: RetryPolicy = RetryPolicy {
    attempts: 6,
    first_pause: Duration::from_millis(20),
    max_pause: Duration::from_millis(200),
    settle: Duration::from_millis(1_500),
};

/// Instances boot when a test says so ([`FakeContabo::boot`]), never on a timer a slow
/// machine could outrun.
async fn fake() -> FakeContabo {
    FakeContabo::start(Duration::from_secs(24 * 3600), Duration::from_secs(300)).await
}

fn settings(fake: &FakeContabo) -> ContaboSettings {
    let mut settings = ContaboSettings::new(Credentials {
        client_id: CLIENT_ID.into(),
        client_secret: Secret::new(CLIENT_SECRET),
        api_user: API_USER.into(),
        api_password: Secret::new(API_PASSWORD),
    });
    settings.auth_url = fake.auth_url();
    settings.api_url = fake.api_url();
    settings.request_timeout = Duration::from_millis(500);
    settings.read_retry = POLICY;
    settings
}

fn order(n: u32) -> CreateInstance {
    CreateInstance {
        display_name: format!("tv-order-{n}"),
        region: "us-east".into(),
        user_data: "#cloud-config\nhostname: tv-order\n".into(),
        trace_id: Some(format!("order-{n}")),
    }
}

async fn one_instance_despite(faults: Vec<Fault>) -> FakeContabo {
    let fake = fake().await;
    let contabo = Contabo::new(settings(&fake)).unwrap();
    fake.inject(Route::Create, faults.clone());
    let request = order(1);
    let instance = create_once(&contabo, &request, POLICY)
        .await
        .unwrap_or_else(|e| {
            panic!("{faults:?}: {e}");
        });
    let named = fake.named(&request.display_name);
    assert_eq!(named.len(), 1, "{faults:?}: {named:?}");
    assert_eq!(instance.id, named[0].id.to_string());
    assert_eq!(named[0].region, "US-east");
    assert_eq!(named[0].image_id, UBUNTU_IMAGE);
    assert_eq!(named[0].user_data, request.user_data);
    fake
}

#[tokio::test]
async fn a_clean_create_sends_what_the_spec_requires_and_the_server_comes_up() {
    // The fake refuses a missing or malformed bearer or x-request-id, a reused request id, and
    // wrong JSON types or enums in the body; passing here means every call carried them.
    let fake = one_instance_despite(Vec::new()).await;
    assert_eq!(fake.calls(Route::Create), 1);
    assert_eq!(fake.token_grants(), 1, "one token shared by every call");

    let contabo = Contabo::new(settings(&fake)).unwrap();
    let id = fake.named("tv-order-1")[0].id.to_string();
    let first = contabo.get(&id).await.unwrap();
    assert_eq!(first.status, InstanceStatus::Provisioning);
    assert!(first.ipv4.is_none(), "no IP while provisioning");
    fake.boot(id.parse().unwrap(), std::net::Ipv4Addr::new(203, 0, 113, 7));
    let up = contabo.get(&id).await.unwrap();
    assert!(up.is_up(), "{up:?}");
    assert!(up.ipv4.is_some() && up.ipv6.is_some());
    let missing = contabo.get("999999").await.unwrap_err();
    assert!(
        matches!(missing, Error::Api { status: 404, .. }),
        "{missing}"
    );
}

#[tokio::test]
async fn a_rate_limited_create_waits_and_creates_once() {
    let fake =
        one_instance_despite(vec![Fault::RateLimited(Some(0)), Fault::RateLimited(None)]).await;
    assert_eq!(fake.calls(Route::Create), 3);
}

#[tokio::test]
async fn a_server_error_before_the_work_creates_once() {
    let fake = one_instance_despite(vec![Fault::ServerError { done: false }]).await;
    assert_eq!(fake.calls(Route::Create), 2);
}

#[tokio::test]
async fn a_server_error_after_the_work_is_found_by_name_not_created_again() {
    let fake = one_instance_despite(vec![Fault::ServerError { done: true }]).await;
    assert_eq!(fake.calls(Route::Create), 1);
}

#[tokio::test]
async fn an_html_page_is_read_as_an_error_and_creates_once() {
    let fake = one_instance_despite(vec![Fault::Html { done: true }]).await;
    assert_eq!(fake.calls(Route::Create), 1);
    let fake = one_instance_despite(vec![Fault::Html { done: false }]).await;
    assert_eq!(fake.calls(Route::Create), 2);
}

#[tokio::test]
async fn a_lost_answer_is_found_by_name_not_created_again() {
    let fake = one_instance_despite(vec![Fault::Lost]).await;
    assert_eq!(fake.calls(Route::Create), 1);
}

#[tokio::test]
async fn a_create_slower_than_the_timeout_lands_once() {
    // The client gives up after 500 ms; the create lands at 900 ms, after the first lookups
    // found nothing. Only the settle time keeps a second create from being sent.
    let fake = one_instance_despite(vec![Fault::Slow(Duration::from_millis(900))]).await;
    assert_eq!(fake.calls(Route::Create), 1);
}

#[tokio::test]
async fn failing_lookups_are_retried_and_never_skipped() {
    let fake = fake().await;
    let contabo = Contabo::new(settings(&fake)).unwrap();
    fake.inject(
        Route::List,
        [
            Fault::ServerError { done: false },
            Fault::Html { done: false },
            Fault::RateLimited(Some(0)),
        ],
    );
    create_once(&contabo, &order(2), POLICY).await.unwrap();
    assert_eq!(fake.named("tv-order-2").len(), 1);
    assert_eq!(fake.calls(Route::Create), 1);

    // Lookups that never work: no create at all, and a clear error.
    fake.inject(Route::List, vec![Fault::ServerError { done: false }; 100]);
    let error = create_once(&contabo, &order(3), POLICY).await.unwrap_err();
    assert!(matches!(error, Error::GaveUp { .. }), "{error}");
    assert!(fake.named("tv-order-3").is_empty());
}

#[tokio::test]
async fn an_existing_instance_is_returned_and_duplicates_stop_the_order() {
    let fake = fake().await;
    let contabo = Contabo::new(settings(&fake)).unwrap();
    let id = fake.add_instance("tv-order-4");
    // A longer name containing it does not count (the API filters by substring).
    fake.add_instance("tv-order-44");
    let found = create_once(&contabo, &order(4), POLICY).await.unwrap();
    assert_eq!(found.id, id.to_string());
    assert_eq!(fake.calls(Route::Create), 0);

    fake.add_instance("tv-order-4");
    let error = create_once(&contabo, &order(4), POLICY).await.unwrap_err();
    assert!(
        matches!(error, Error::Duplicates { count: 2, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn a_refused_create_is_not_retried() {
    let fake = fake().await;
    let mut settings = settings(&fake);
    settings.product_id = String::new();
    let contabo = Contabo::new(settings).unwrap();
    let error = create_once(&contabo, &order(5), POLICY).await.unwrap_err();
    match error {
        Error::Api {
            status: 400,
            message,
        } => assert!(message.contains("productId"), "{message}"),
        other => panic!("{other}"),
    }
    assert!(fake.instances().is_empty());

    let mut settings = self::settings(&fake);
    settings.regions.clear();
    let contabo = Contabo::new(settings).unwrap();
    assert!(matches!(
        create_once(&contabo, &order(5), POLICY).await.unwrap_err(),
        Error::Config(_)
    ));
    let mut settings = self::settings(&fake);
    settings.period_months = 2;
    assert!(Contabo::new(settings).is_err());
}

#[tokio::test]
async fn tokens_are_shared_renewed_when_refused_and_bad_credentials_say_so() {
    let fake = fake().await;
    let contabo = Contabo::new(settings(&fake)).unwrap();
    let (six, seven) = (order(6), order(7));
    let (a, b) = tokio::join!(
        create_once(&contabo, &six, POLICY),
        create_once(&contabo, &seven, POLICY)
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(fake.token_grants(), 1, "concurrent callers share one token");
    assert_eq!(fake.image_lookups(), 1, "the image id is looked up once");

    fake.revoke_tokens();
    contabo.find_by_name("tv-order-6").await.unwrap().unwrap();
    assert_eq!(fake.token_grants(), 2, "a refused token is replaced once");

    let mut settings = settings(&fake);
    settings.credentials.api_password = Secret::new("wrong");
    let contabo = Contabo::new(settings).unwrap();
    let error = create_once(&contabo, &order(8), POLICY).await.unwrap_err();
    assert!(
        matches!(&error, Error::Auth(m) if m.contains("Invalid user credentials")),
        "{error}"
    );
    assert!(fake.named("tv-order-8").is_empty());
}

#[tokio::test]
async fn a_short_lived_token_is_renewed_before_it_runs_out() {
    let fake = FakeContabo::start(Duration::ZERO, Duration::from_secs(1)).await;
    let contabo = Contabo::new(settings(&fake)).unwrap();
    create_once(&contabo, &order(9), POLICY).await.unwrap();
    contabo.find_by_name("tv-order-9").await.unwrap().unwrap();
    // A 1 s token is renewed at once (the margin is at least 30 s, capped at its lifetime).
    assert!(fake.token_grants() >= 2);
}

#[tokio::test]
async fn cancel_and_reinstall_reach_the_instance() {
    let fake = fake().await;
    let contabo = Contabo::new(settings(&fake)).unwrap();
    let instance = create_once(&contabo, &order(10), POLICY).await.unwrap();
    contabo
        .reinstall(&instance.id, "#cloud-config\nhostname: again\n")
        .await
        .unwrap();
    contabo.cancel(&instance.id).await.unwrap();
    let stored = &fake.named("tv-order-10")[0];
    assert_eq!(stored.reinstalls, 1);
    assert_eq!(stored.user_data, "#cloud-config\nhostname: again\n");
    assert!(stored.cancelled);
    assert!(contabo.cancel("not-a-number").await.is_err());
}

#[tokio::test]
async fn a_process_taking_over_waits_for_the_create_its_predecessor_sent() {
    let fake = fake().await;
    let request = order(7);
    // The first process sends a slow create and stops while it is in flight.
    fake.inject(Route::Create, [Fault::Slow(Duration::from_millis(700))]);
    let first = Contabo::new(settings(&fake)).unwrap();
    let sent = {
        let request = request.clone();
        tokio::spawn(async move { create_once(&first, &request, POLICY).await })
    };
    while fake.calls(Route::Create) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sent.abort();
    // The next one knows a create went out just now: it finds that instance when it lands
    // instead of sending its own (without that knowledge its first lookup sees nothing).
    let second = Contabo::new(settings(&fake)).unwrap();
    let instance = create_once_resuming(&second, &request, POLICY, Some(Duration::from_millis(50)))
        .await
        .unwrap();
    let named = fake.named(&request.display_name);
    assert_eq!(named.len(), 1, "{named:?}");
    assert_eq!(instance.id, named[0].id.to_string());
    assert_eq!(fake.calls(Route::Create), 1);
}
