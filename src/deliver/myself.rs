//! Whether a next hop's address is this daemon itself: a smarthost, an
//! explicit next hop or an MX host that resolves to one of our own SMTP
//! listeners ("mail for X loops back to myself").
//!
//! Addresses are compared, never names: a name can hide any address, and
//! the issue this answers (12) was a smarthost and an MX name that led back
//! to the hub. A listener on a wildcard address (`0.0.0.0:25`, `[::]:25`)
//! is reached at every address of this host on its port, so a next hop on
//! that port is us when its address is local: loopback, or one a socket
//! can be bound to (the kernel's own list of this host's addresses).
//! Loopback next hops on other ports are left alone: the test suite and
//! every content filter live there.
//!
//! MX hosts are looked at more widely (`of_mx`): delivered on port 25, an
//! MX address of this host (loopback included) reaches this host's MTA,
//! whatever addresses posthorn itself listens on, as Postfix assumes of
//! every local interface.

use crate::config::Config;
use std::net::{IpAddr, SocketAddr, UdpSocket};

/// Every address this daemon accepts SMTP on, as configured (the daemon
/// passes the bound addresses when the configuration says port 0).
pub(crate) fn listeners(config: &Config) -> Vec<SocketAddr> {
    let smtp = &config.smtp;
    smtp.listen.iter().chain(&smtp.submission).chain(&smtp.submissions).copied().collect()
}

/// The listeners an MX host must not be: ours, and with `deliver.mx_port`
/// 25 (as on the internet) any address of this host on port 25.
pub(crate) fn of_mx(config: &Config) -> Vec<SocketAddr> {
    let mut mine = listeners(config);
    if config.deliver.mx_port == 25 {
        mine.push(SocketAddr::from(([0, 0, 0, 0], 25)));
    }
    mine
}

/// Whether a connection to `next` would reach one of `listeners`.
pub(crate) fn is_myself(next: SocketAddr, listeners: &[SocketAddr]) -> bool {
    let ip = next.ip().to_canonical();
    listeners.iter().filter(|l| l.port() == next.port() && l.port() != 0).any(|l| {
        let mine = l.ip().to_canonical();
        mine == ip || (mine.is_unspecified() && is_local(ip))
    })
}

/// Whether `ip` is one of this host's addresses.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || UdpSocket::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_next_hop_is_myself_when_it_is_one_of_my_listeners() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let listeners = [addr("127.0.0.3:2525"), addr("0.0.0.0:25"), addr("[2001:db8::1]:587")];
        // (next hop, is it us)
        let cases = [
            ("127.0.0.3:2525", true),
            ("127.0.0.3:25", true),
            ("127.0.0.1:25", true),
            ("127.0.0.9:25", true),
            ("[::1]:25", true),
            ("[::ffff:127.0.0.3]:2525", true),
            ("[2001:db8::1]:587", true),
            ("127.0.0.4:2525", false),
            ("127.0.0.3:2526", false),
            ("192.0.2.1:25", false),
            ("[2001:db8::2]:587", false),
        ];
        for (next, mine) in cases {
            assert_eq!(is_myself(addr(next), &listeners), mine, "{next}");
        }
        // MX hosts on port 25: any address of this host is its MTA.
        let text = "hostname = \"hub.test\"\n[smtp]\nlisten = [\"192.0.2.7:25\"]\n";
        let mut config = Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        assert!(is_myself(addr("127.0.0.1:25"), &of_mx(&config)));
        assert!(!is_myself(addr("127.0.0.1:25"), &super::listeners(&config)));
        config.deliver.mx_port = 2525;
        assert!(!is_myself(addr("127.0.0.1:25"), &of_mx(&config)));
        // A listener whose port the kernel has not chosen yet matches nothing.
        assert!(!is_myself(addr("127.0.0.1:0"), &[addr("127.0.0.1:0")]));
    }
}
