//! The TCP proxy harness itself (`common::proxy`), in front of the shared PostgreSQL server (which it never
//! stops or reconfigures): forward, blackhole (open but silent), heal, cut (closed and refused), drop.

use crate::common;

use std::time::{Duration, Instant};

use common::admin_url;
use common::proxy::{ProxyMode, TcpProxy};
use sqlx::Connection as _;
use sqlx::PgConnection;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

async fn connect(url: &str) -> PgConnection {
    timeout(Duration::from_secs(5), PgConnection::connect(url)).await.expect("connecting timed out").expect("connect")
}

async fn select(conn: &mut PgConnection, n: i32) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("select $1::int4").bind(n).fetch_one(conn).await
}

/// A raw connection through the proxy: the first byte it reads within `wait`, `Ok(None)` when it reads
/// nothing (open and silent), `Err` when closed.
async fn read_within(stream: &mut TcpStream, wait: Duration) -> Result<Option<u8>, String> {
    let mut byte = [0u8; 1];
    match timeout(wait, stream.read(&mut byte)).await {
        Err(_) => Ok(None),
        Ok(Ok(0)) => Err("closed (end of stream)".to_owned()),
        Ok(Ok(_)) => Ok(Some(byte[0])),
        Ok(Err(e)) => Err(format!("closed ({e})")),
    }
}

/// PostgreSQL's SSLRequest: a server answers it with one byte, `S` or `N`.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

#[tokio::test]
async fn blackhole_stalls_forward_recovers_and_cut_fails_fast() {
    let proxy = TcpProxy::in_front_of(&admin_url()).await;
    let url = proxy.url_for(&admin_url());
    assert!(url.contains(&format!("127.0.0.1:{}", proxy.url_port())), "{url}");
    assert_eq!(proxy.addr().port(), proxy.url_port());
    let mut before = connect(&url).await;
    assert_eq!(select(&mut before, 1).await.unwrap(), 1);
    assert_eq!(proxy.mode(), ProxyMode::Forward);

    // Blackhole: the query never completes, and the connection stays open.
    proxy.blackhole();
    let began = Instant::now();
    let stalled = timeout(Duration::from_secs(2), select(&mut before, 2)).await;
    assert!(stalled.is_err(), "a query through a blackhole must not complete: {stalled:?}");
    assert!(began.elapsed() >= Duration::from_secs(2));
    assert!(began.elapsed() < Duration::from_secs(4), "the 2 s timeout took {:?}", began.elapsed());
    assert_eq!(proxy.open_connections(), 1, "the blackholed connection is still open");
    // A new connection is accepted, but nothing comes back.
    let mut raw = timeout(Duration::from_secs(2), TcpStream::connect(proxy.addr())).await.unwrap().unwrap();
    raw.write_all(&SSL_REQUEST).await.unwrap();
    assert_eq!(read_within(&mut raw, Duration::from_millis(500)).await, Ok(None), "open and silent");
    let new_connect = timeout(Duration::from_secs(1), PgConnection::connect(&url)).await;
    assert!(new_connect.is_err(), "connecting through a blackhole must hang, not {new_connect:?}");
    // Held too: the attempt the client gave up on (a blackhole does not read, so it does not see the close).
    common::wait_until("the proxy holds three blackholed connections", Duration::from_secs(5), || {
        proxy.open_connections() == 3
    })
    .await;

    // Forward: new connections work; the blackholed ones are closed.
    proxy.forward();
    assert_eq!(proxy.mode(), ProxyMode::Forward);
    let mut after = connect(&url).await;
    assert_eq!(select(&mut after, 3).await.unwrap(), 3);
    let closed = read_within(&mut raw, Duration::from_secs(2)).await;
    assert!(closed.is_err(), "a connection opened during the blackhole is closed by forward(): {closed:?}");
    let old = timeout(Duration::from_secs(2), select(&mut before, 4)).await;
    assert!(matches!(old, Ok(Err(_))), "the connection that lived through the blackhole is closed: {old:?}");
    drop(before);
    common::wait_until("only the new connection is open", Duration::from_secs(5), || proxy.open_connections() == 1)
        .await;

    // Cut: the open connection fails at once, new ones are refused.
    proxy.cut();
    let began = Instant::now();
    let failed = timeout(Duration::from_secs(2), select(&mut after, 5)).await;
    assert!(matches!(failed, Ok(Err(_))), "a query on a cut connection must fail quickly: {failed:?}");
    let refused = timeout(Duration::from_secs(2), TcpStream::connect(proxy.addr())).await.unwrap();
    assert_eq!(refused.unwrap_err().kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(began.elapsed() < Duration::from_secs(1), "both fail at once, took {:?}", began.elapsed());
    common::wait_until("no connection is open", Duration::from_secs(5), || proxy.open_connections() == 0).await;

    // And back, on the same port.
    proxy.forward();
    let mut again = connect(&url).await;
    assert_eq!(select(&mut again, 6).await.unwrap(), 6);
    assert!(proxy.accepted() >= 4, "accepted {}", proxy.accepted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heal_lets_connections_carry_on_where_they_stopped() {
    let proxy = TcpProxy::in_front_of(&admin_url()).await;
    let url = proxy.url_for(&admin_url());
    let mut conn = connect(&url).await;
    assert_eq!(select(&mut conn, 1).await.unwrap(), 1);

    proxy.blackhole();
    let query = tokio::spawn(async move { select(&mut conn, 42).await });
    let url_during = url.clone();
    let opened_during = tokio::spawn(async move {
        let mut conn = PgConnection::connect(&url_during).await?;
        select(&mut conn, 43).await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!query.is_finished() && !opened_during.is_finished(), "nothing passes a blackhole");

    proxy.heal();
    let answered = timeout(Duration::from_secs(5), query).await.expect("the query completes once healed");
    assert_eq!(answered.unwrap().unwrap(), 42);
    let answered = timeout(Duration::from_secs(5), opened_during).await.expect("the connection completes");
    assert_eq!(answered.unwrap().unwrap(), 43, "a connection opened during the blackhole goes through now");
}

#[tokio::test]
async fn cut_closes_blackholed_connections_and_cut_then_forward_at_once_works() {
    let proxy = TcpProxy::in_front_of(&admin_url()).await;
    let url = proxy.url_for(&admin_url());
    proxy.blackhole();
    let mut raw = TcpStream::connect(proxy.addr()).await.unwrap();
    raw.write_all(&SSL_REQUEST).await.unwrap();
    assert_eq!(read_within(&mut raw, Duration::from_millis(300)).await, Ok(None));
    proxy.cut();
    assert!(read_within(&mut raw, Duration::from_secs(2)).await.is_err(), "cut closes blackholed connections");

    // Mode changes in a row without the proxy's tasks running in between (a current-thread runtime).
    proxy.forward();
    proxy.cut();
    proxy.forward();
    let mut conn = connect(&url).await;
    assert_eq!(select(&mut conn, 7).await.unwrap(), 7);
    // A cut that the proxy's tasks never see as the current mode still closes the connections before it.
    proxy.cut();
    proxy.forward();
    let closed = timeout(Duration::from_secs(2), select(&mut conn, 8)).await;
    assert!(matches!(closed, Ok(Err(_))), "the connection from before the cut is closed: {closed:?}");
    let mut conn = connect(&url).await;
    assert_eq!(select(&mut conn, 9).await.unwrap(), 9);
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_port_and_connections() {
    let proxy = TcpProxy::in_front_of(&admin_url()).await;
    let addr = proxy.addr();
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(&SSL_REQUEST).await.unwrap();
    let answer = read_within(&mut raw, Duration::from_secs(5)).await;
    assert!(matches!(answer, Ok(Some(b'S' | b'N'))), "PostgreSQL answers the SSLRequest: {answer:?}");

    drop(proxy);
    assert!(read_within(&mut raw, Duration::from_secs(2)).await.is_err(), "the connection is closed");
    let refused = timeout(Duration::from_secs(2), TcpStream::connect(addr)).await.unwrap();
    assert!(refused.is_err(), "the port is closed");
}
