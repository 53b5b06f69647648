//! Loopback ports for the servers tests and benches start. Shared by path
//! with `benches/end_to_end.rs`, so it depends on nothing but `std`.

use std::net::TcpListener;

/// `n` distinct ports that were free a moment ago on 127.0.0.1 (a server
/// that loses the race for one must retry). All below 55536, so a Redis
/// node listening on one also has its cluster bus port (+10000).
pub fn free_ports(n: usize) -> Vec<u16> {
    // Every listener is held until all are bound: the ports are distinct.
    let mut listeners = Vec::new();
    while listeners.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a free loopback port");
        if listener.local_addr().expect("bound listener has an address").port() < 55_536 {
            listeners.push(listener);
        }
    }
    listeners.iter().map(|l| l.local_addr().expect("bound listener has an address").port()).collect()
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}
