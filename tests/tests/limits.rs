//! Per-caller API limits on a real listener: a caller over its request rate
//! gets RESOURCE_EXHAUSTED with a RetryInfo detail while other callers carry
//! on, and the number of concurrent WatchSessions streams per caller is
//! bounded, a slot coming back when a watch ends.

use std::time::Duration;

use streamspace::v1 as pb;
use streamspace_control_plane::grpc::limits::LimitConfig;
use streamspace_tests::{ADMIN_TOKEN, ALICE_TOKEN, Api, CpOptions, Scratch};
use tonic::Code;
use tonic_types::StatusExt;

async fn list(api: &mut Api) -> Result<(), tonic::Status> {
    api.sessions
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_rate_waits_and_others_do_not() {
    let x = Scratch::new().await;
    let pki = &x.pki;
    let limits = LimitConfig {
        rate: 2.0,
        burst: 5,
        max_watches: 0,
    };
    let cp = x
        .cp(&CpOptions {
            limits,
            ..Default::default()
        })
        .await;
    let mut admin = Api::connect(pki, cp.api_addr, ADMIN_TOKEN).await;
    let mut alice = Api::connect(pki, cp.api_addr, ALICE_TOKEN).await;
    // The burst passes; the next call is refused with when to retry.
    let mut refused = None;
    for i in 0..8 {
        match list(&mut admin).await {
            Ok(()) => assert!(i < 6, "call {i} passed beyond the burst"),
            Err(s) => {
                refused = Some(s);
                break;
            }
        }
    }
    let refused = refused.expect("a call over the burst is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("rate limit"), "{refused:?}");
    let retry = refused
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("a RetryInfo detail");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_millis(500),
        "retry in {retry:?} at 2/s"
    );
    // Another caller is not affected.
    for _ in 0..5 {
        list(&mut alice).await.expect("alice has her own budget");
    }
    // After the delay it tells, the refused caller is served again.
    tokio::time::sleep(retry + Duration::from_millis(50)).await;
    list(&mut admin)
        .await
        .expect("served after the retry delay");
    cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_watches_are_bounded_per_caller() {
    let x = Scratch::new().await;
    let pki = &x.pki;
    let cp = x
        .cp(&CpOptions {
            limits: LimitConfig {
                rate: 0.0,
                burst: 1,
                max_watches: 2,
            },
            ..Default::default()
        })
        .await;
    let mut admin = Api::connect(pki, cp.api_addr, ADMIN_TOKEN).await;
    let mut alice = Api::connect(pki, cp.api_addr, ALICE_TOKEN).await;
    let watch = |api: &mut Api| {
        let mut s = api.sessions.clone();
        async move {
            s.watch_sessions(pb::WatchSessionsRequest::default())
                .await
                .map(|r| r.into_inner())
        }
    };
    let first = watch(&mut admin).await.expect("first watch");
    let _second = watch(&mut admin).await.expect("second watch");
    let third = watch(&mut admin)
        .await
        .expect_err("a third watch is refused");
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    assert!(third.message().contains("at most 2"), "{third:?}");
    let _other = watch(&mut alice)
        .await
        .expect("alice watches on her own slots");
    // Ending a watch frees its slot (the server notices the stream is gone).
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match watch(&mut admin).await {
            Ok(_s) => break,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot never came back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    cp.shutdown().await;
}
