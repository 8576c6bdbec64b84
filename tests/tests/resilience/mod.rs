//! The server under pressure: overload is a 503 with `Retry-After`, slow uploads and idle
//! connections cannot starve normal clients, and SIGTERM drains what is in flight.

use super::*;

#[test]
fn overload_is_a_503_with_retry_after() {
    let probe = guest("probe-rules");
    let server = Server::start(&["--max-concurrent-requests", "1", "--rule", probe.to_str().unwrap()]);
    let case = &shapes(CLASSES_SEED, 2)[0];
    let good = read(&case.path);
    // A request whose rules guest loops until its deadline holds the only place...
    let busy = {
        let (url, good) = (server.url("/v1/classify"), good.clone());
        std::thread::spawn(move || {
            let resp = client()
                .post(url)
                .header("x-probe", "loop")
                .header("x-request-timeout-ms", "1500")
                .body(good)
                .send()
                .unwrap();
            resp.status().as_u16()
        })
    };
    let started = Instant::now();
    while metric(&server, "tessera_requests_in_flight") < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the looping request was never admitted");
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...so the next one is refused at once.
    let (status, body, headers) = server.classify(&good, "", &[]);
    assert_error(status, &body, 503, "overloaded");
    assert_eq!(headers["retry-after"], "1");
    // The held request ends at its deadline and frees the place once its guest has stopped
    // (the place is held until the work really ends, which a loaded machine may delay).
    assert_eq!(busy.join().unwrap(), 504);
    let started = Instant::now();
    while metric(&server, "tessera_requests_in_flight") > 0.0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the looping guest never stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_still_serving(&server, &good, &case.label);
}

/// One sample of `/metrics` (0 when absent).
fn metric(server: &Server, key: &str) -> f64 {
    let text = client().get(server.url("/metrics")).send().unwrap().text().unwrap();
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

#[test]
fn slow_uploads_slowloris_and_idle_connections_cannot_starve_normal_clients() {
    let server = Server::start(&[
        "--max-concurrent-requests",
        "1",
        "--header-read-timeout-ms",
        "2000",
        "--max-connections",
        "3",
    ]);
    let case = &shapes(CLASSES_SEED, 2)[0];
    let good = read(&case.path);

    // An upload whose body is still arriving holds its connection, not the only pipeline place.
    let stalled = start_upload(&server.addr, good.len());
    assert_still_serving(&server, &good, &case.label);
    let answer = finish_upload(stalled, &good);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Headers that never finish: the connection is closed after header_read_timeout_ms.
    let mut slowloris = std::net::TcpStream::connect(&server.addr).unwrap();
    std::io::Write::write_all(&mut slowloris, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut slowloris, &mut rest);
    let closed_after = started.elapsed();
    assert!(
        closed_after > Duration::from_millis(1_500) && closed_after < Duration::from_secs(5),
        "a slowloris connection was closed after {closed_after:?}"
    );
    // Idle keep-alive connections close after the same timeout, so the client's pooled one is
    // gone now too. Three idle sockets take every connection; a fourth is closed at once...
    std::thread::sleep(Duration::from_millis(500));
    let idle: Vec<_> = (0..3).map(|_| std::net::TcpStream::connect(&server.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut fourth = std::net::TcpStream::connect(&server.addr).unwrap();
    let started = Instant::now();
    let _ = std::io::Read::read_to_end(&mut fourth, &mut rest);
    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "over max_connections, closed after {:?}",
        started.elapsed()
    );
    // ...and once they time out, a normal client is served again.
    std::thread::sleep(Duration::from_millis(2_500));
    drop(idle);
    assert_still_serving(&server, &good, &case.label);
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let server = Server::start(&[]);
    let case = &shapes(CLASSES_SEED, 2)[0];
    let good = read(&case.path);
    // A request whose body is still arriving is in flight when the signal comes.
    let in_flight = start_upload(&server.addr, good.len());
    let status = std::process::Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().unwrap();
    assert!(status.success());
    let answer = finish_upload(in_flight, &good);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&format!("\"label\":\"{}\"", case.label)), "{answer}");
    let (code, stderr) = server.terminate_after_signal();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("drained"), "{stderr}");
}
