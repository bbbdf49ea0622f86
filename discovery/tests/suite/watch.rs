//! The list-changed watcher against real rmcp upstream servers.

use std::time::{Duration, Instant};

use tokio::sync::mpsc::Receiver;
use toolmesh_discovery::{ListChanged, Transport, UpstreamSpec, WatchOptions, watch_with};
use toolmesh_test_servers::{RunningServer, TestServerConfig, spawn, spawn_on};

const WAIT: Duration = Duration::from_secs(20);

fn spec(url: String) -> UpstreamSpec {
    UpstreamSpec {
        url,
        transport: Transport::StreamableHttp,
        headers: vec![("Authorization".into(), "Bearer watch-secret".into())],
        timeout: Duration::from_secs(10),
    }
}

fn fast() -> WatchOptions {
    WatchOptions {
        ping_interval: Duration::from_millis(200),
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
    }
}

async fn stateful_server() -> RunningServer {
    spawn(TestServerConfig::default())
        .await
        .expect("test server starts")
}

async fn next(rx: &mut Receiver<ListChanged>) -> ListChanged {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a notification within the deadline")
        .expect("the watcher is running")
}

/// Changes the upstream's tool list until the watcher reports it. The server notifies only
/// sessions whose notification stream is already open, and the watcher cannot know when rmcp
/// has opened it, so each attempt uses a new variant (each one is a real change).
async fn change_tools_until_seen(
    server: &RunningServer,
    rx: &mut Receiver<ListChanged>,
    first_variant: u32,
) {
    let deadline = Instant::now() + WAIT;
    let mut variant = first_variant;
    loop {
        server.set_variant(variant);
        if let Ok(Some(change)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
        {
            assert_eq!(change, ListChanged::Tools);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no tools/list_changed within {WAIT:?}"
        );
        variant += 1;
    }
}

fn deletes(server: &RunningServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE")
        .count()
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn forwards_tools_list_changed() {
    let upstream = stateful_server().await;
    let (handle, mut rx) = watch_with(spec(upstream.url()), fast());
    assert_eq!(next(&mut rx).await, ListChanged::Resync);
    change_tools_until_seen(&upstream, &mut rx, 1).await;
    // The watcher authenticates like discovery does.
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer watch-secret"))
    );
    handle.abort();
    // Aborting ends the session with DELETE (from rmcp's transport task).
    wait_for("the watcher's DELETE", || deletes(&upstream) == 1).await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn dropping_the_receiver_stops_the_watcher() {
    let upstream = stateful_server().await;
    let (handle, mut rx) = watch_with(spec(upstream.url()), fast());
    assert_eq!(next(&mut rx).await, ListChanged::Resync);
    drop(rx);
    tokio::time::timeout(WAIT, handle)
        .await
        .expect("the watcher task ends")
        .expect("the watcher task does not panic");
    wait_for("the watcher's DELETE", || deletes(&upstream) == 1).await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn reconnects_after_the_upstream_restarts() {
    let first = stateful_server().await;
    let addr = first.addr();
    let (handle, mut rx) = watch_with(spec(first.url()), fast());
    assert_eq!(next(&mut rx).await, ListChanged::Resync);

    first.shutdown().await;
    let second = spawn_on(TestServerConfig::default(), addr)
        .await
        .expect("restart on the same port");
    // A new session means changes may have been missed: the watcher says so ...
    assert_eq!(next(&mut rx).await, ListChanged::Resync);
    // ... and keeps forwarding notifications from the new session.
    change_tools_until_seen(&second, &mut rx, 7).await;
    handle.abort();
    second.shutdown().await;
}

#[tokio::test]
async fn keeps_retrying_an_unreachable_upstream() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (handle, mut rx) = watch_with(spec(format!("http://{addr}/mcp")), fast());
    // Nothing to report while the upstream is down, and the task keeps running.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(rx.try_recv().is_err());
    assert!(!handle.is_finished());
    // Once it comes up, the watcher connects on its own.
    let upstream = spawn_on(TestServerConfig::default(), addr)
        .await
        .expect("server starts on the port");
    assert_eq!(next(&mut rx).await, ListChanged::Resync);
    handle.abort();
    upstream.shutdown().await;
}
