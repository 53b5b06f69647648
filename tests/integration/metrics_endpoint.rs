//! The metrics endpoint under slow and half-open clients: a normal scrape
//! is still answered at once, slow clients are dropped after the header
//! timeout, and connections beyond the limit are closed instead of queued.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use regionflow::metrics::{serve, Health, Metrics, HEADER_READ_TIMEOUT, MAX_CONNECTIONS};

async fn get_metrics(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("response");
    response
}

/// A client that sends its request's headers one byte at a time, forever.
async fn dribble(addr: std::net::SocketAddr, stop: CancellationToken) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = b"GET /metrics HTTP/1.1\r\nHost: slow\r\nX-Padding: ";
    for byte in request.iter().cycle() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        if stream.write_all(&[*byte]).await.is_err() {
            return None;
        }
    }
    Some(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_starve_the_scraper() {
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let addr = serve("127.0.0.1:0".parse().unwrap(), metrics, Arc::new(Health::default()), shutdown.clone())
        .await
        .expect("listening");

    let stop = CancellationToken::new();
    let slow: Vec<_> = (0..MAX_CONNECTIONS / 2).map(|_| tokio::spawn(dribble(addr, stop.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(2), get_metrics(addr)).await.expect("answered in time");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("process_resident_memory_bytes"), "the standard process metrics are exported");
    assert!(started.elapsed() < Duration::from_secs(1), "answered at once: {:?}", started.elapsed());

    // The slow clients are cut off once the header timeout passes.
    let finished = tokio::time::timeout(HEADER_READ_TIMEOUT + Duration::from_secs(5), futures::future::join_all(slow))
        .await
        .expect("every slow client was dropped by the server");
    assert!(finished.iter().all(|r| matches!(r, Ok(None))), "each slow client saw its connection closed");
    stop.cancel();
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed() {
    let shutdown = CancellationToken::new();
    let addr =
        serve("127.0.0.1:0".parse().unwrap(), Arc::new(Metrics::new()), Arc::new(Health::default()), shutdown.clone())
            .await
            .expect("listening");
    // Half-open connections that never send a byte hold every slot.
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = TcpStream::connect(addr).await.expect("the kernel accepts");
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await.expect("closed at once");
    assert!(matches!(read, Ok(0) | Err(_)), "the connection over the limit was closed: {read:?}");
    // Once the idle ones time out, a scrape gets through again.
    tokio::time::sleep(HEADER_READ_TIMEOUT + Duration::from_secs(1)).await;
    let response = tokio::time::timeout(Duration::from_secs(2), get_metrics(addr)).await.expect("answered");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    drop(idle);
    shutdown.cancel();
}

/// `regionflow probe --config FILE` (the image's health check) probes the
/// port that configuration serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_with_a_configuration_checks_its_metrics_port() {
    let shutdown = CancellationToken::new();
    let addr =
        serve("127.0.0.1:0".parse().unwrap(), Arc::new(Metrics::new()), Arc::new(Health::default()), shutdown.clone())
            .await
            .expect("listening");
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let probe = move |port: u16| {
        let config = dir.path().join(format!("regionflow-{port}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
[kafka]
brokers = "k:9092"
[redis]
nodes = ["redis://r:1"]
[metrics]
listen = "0.0.0.0:{port}"
{pipeline}"#,
                pipeline = common::counting_pipeline("p", "t", "r")
            ),
        )
        .expect("written");
        std::process::Command::new(env!("CARGO_BIN_EXE_regionflow"))
            .args(["probe", "--config"])
            .arg(&config)
            .output()
            .expect("runs")
    };
    let up = tokio::task::spawn_blocking({
        let probe = probe.clone();
        move || probe(addr.port())
    });
    let up = up.await.expect("joined");
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let down = tokio::task::spawn_blocking(move || probe(closed)).await.expect("joined");
    assert!(!down.status.success(), "nothing listens on {closed}");
    shutdown.cancel();
}
