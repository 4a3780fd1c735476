//! [`DnsServer`]: a real, authoritative DNS server on loopback for the
//! end-to-end tests, so MX lookups go over the wire exactly as in
//! production, and no test ever reads the host's /etc/resolv.conf.
//!
//! It is hickory-server's in-memory zone handler, serving UDP and TCP on
//! one port of `127.0.0.1` the kernel chose, on a tokio runtime in its own
//! thread (the tests themselves are mostly synchronous). The zones are made
//! from the records given: every name's top-level label becomes a zone
//! (`mx1.example.test` → zone `test.`), so a name not listed inside such a
//! zone gets NXDOMAIN, a listed name asked for another type gets NODATA,
//! and a name outside every zone gets REFUSED. [`DnsRecord::servfail`] makes a
//! name answer SERVFAIL to everything; [`DnsRecord::silent`] makes it never
//! answer (a DNS list that is down).
//!
//! [`DnsServer::start_signed`] signs every zone (DNSSEC, ECDSA P-256, NSEC
//! for denials) with a key made for the server, and gives the zones'
//! DNSKEY records as a trust anchor file's text (DANE tests).
//! [`DnsRecord::unsigned_zone`] makes a zone below a top-level one that is
//! left unsigned, delegated from its signed parent without a DS record
//! (an insecure delegation, as most of the internet is): the parent proves
//! the DS absent, so a validator sees the child as insecure, not bogus.
//!
//! ```ignore
//! let dns = DnsServer::start(vec![
//!     DnsRecord::mx("example.test", 10, "mx1.example.test"),
//!     DnsRecord::a("mx1.example.test", "127.0.0.4".parse().unwrap()),
//! ]);
//! let config = format!("[deliver]\ndns_servers = [\"{}\"]\n", dns.addr());
//! ```

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::dnssec::NxProofKind;
use hickory_server::net::runtime::Time;
use hickory_server::proto::dnssec::crypto::EcdsaSigningKey;
use hickory_server::proto::dnssec::rdata::{DNSKEY, DNSSECRData};
use hickory_server::proto::dnssec::{Algorithm, DnssecSigner, SigningKey};
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_server::proto::rr::rdata::{A, AAAA, MX, NS, SOA, TLSA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record as Rr, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, MessageResponseBuilder, ZoneHandler, ZoneType};

/// TTL of every record served. Short, so a test that changes its mind
/// needs only a new server, never a wait.
const TTL: u32 = 5;

/// One record of a test zone.
#[derive(Clone, Debug)]
pub struct DnsRecord {
    name: String,
    data: Data,
}

#[derive(Clone, Debug)]
enum Data {
    Mx(u16, String),
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Txt(String),
    Ns(String),
    Tlsa(u8, u8, u8, Vec<u8>),
    /// The apex of an unsigned zone delegated from the top-level one.
    UnsignedZone,
    ServFail,
    Silent,
}

impl DnsRecord {
    /// `name MX pref target`.
    pub fn mx(name: &str, pref: u16, target: &str) -> DnsRecord {
        DnsRecord { name: name.into(), data: Data::Mx(pref, target.into()) }
    }

    /// RFC 7505 null MX: `name MX 0 .`.
    pub fn null_mx(name: &str) -> DnsRecord {
        DnsRecord::mx(name, 0, ".")
    }

    pub fn a(name: &str, ip: Ipv4Addr) -> DnsRecord {
        DnsRecord { name: name.into(), data: Data::A(ip) }
    }

    pub fn aaaa(name: &str, ip: Ipv6Addr) -> DnsRecord {
        DnsRecord { name: name.into(), data: Data::Aaaa(ip) }
    }

    /// A TXT record with one string (DKIM keys and the like; longer text
    /// is split into 255-octet strings as DNS requires).
    pub fn txt(name: &str, text: &str) -> DnsRecord {
        DnsRecord { name: name.into(), data: Data::Txt(text.into()) }
    }

    /// `name TLSA usage selector matching data` (RFC 6698).
    pub fn tlsa(name: &str, usage: u8, selector: u8, matching: u8, data: &[u8]) -> DnsRecord {
        DnsRecord { name: name.into(), data: Data::Tlsa(usage, selector, matching, data.to_vec()) }
    }

    /// `name` is the apex of its own zone, never signed, delegated (NS,
    /// no DS) from the zone above; records below it go there.
    pub fn unsigned_zone(name: &str) -> DnsRecord {
        DnsRecord { name: name.into(), data: Data::UnsignedZone }
    }

    /// Every query for `name`, whatever the type, gets SERVFAIL.
    pub fn servfail(name: &str) -> DnsRecord {
        DnsRecord { name: name.into(), data: Data::ServFail }
    }

    /// Queries for `name` are never answered (until the server stops).
    pub fn silent(name: &str) -> DnsRecord {
        DnsRecord { name: name.into(), data: Data::Silent }
    }
}

/// A DNS server on `127.0.0.1:<port>`, UDP and TCP. Dropping it stops it.
pub struct DnsServer {
    addr: SocketAddr,
    /// The DNSKEY records of the signed zones, in zone-file syntax.
    anchor: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl DnsServer {
    /// Serves `records`; returns once the sockets are bound.
    pub fn start(records: Vec<DnsRecord>) -> DnsServer {
        DnsServer::serve(records, false)
    }

    /// Serves `records` in DNSSEC-signed zones; [`DnsServer::trust_anchor`]
    /// gives their keys.
    pub fn start_signed(records: Vec<DnsRecord>) -> DnsServer {
        DnsServer::serve(records, true)
    }

    /// The DNSKEY records of the signed zones (`test. 300 IN DNSKEY 257 3
    /// 13 ...`), for `deliver.dnssec_trust_anchor`; empty when unsigned.
    pub fn trust_anchor(&self) -> &str {
        &self.anchor
    }

    fn serve(records: Vec<DnsRecord>, signed: bool) -> DnsServer {
        let (catalog, parents, anchor) = catalog(&records, signed);
        let delegated: HashSet<String> =
            records.iter().filter(|r| matches!(r.data, Data::UnsignedZone)).map(|r| normalize(&r.name)).collect();
        let servfail: HashSet<String> =
            records.iter().filter(|r| matches!(r.data, Data::ServFail)).map(|r| normalize(&r.name)).collect();
        let silent: HashSet<String> =
            records.iter().filter(|r| matches!(r.data, Data::Silent)).map(|r| normalize(&r.name)).collect();
        let (udp, tcp) = bind_pair();
        let addr = udp.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let thread = thread::Builder::new()
            .name(format!("dns-{addr}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let (quit, quitting) = tokio::sync::watch::channel(false);
                    let mut server = Server::new(Handler { catalog, parents, delegated, servfail, silent, quitting });
                    server.register_socket(tokio::net::UdpSocket::from_std(udp).expect("udp socket"));
                    let tcp = tokio::net::TcpListener::from_std(tcp).expect("tcp listener");
                    server.register_listener(tcp, Duration::from_secs(5), 64);
                    let _ = stopped.await;
                    let _ = quit.send(true);
                    let _ = server.shutdown_gracefully().await;
                })
            })
            .expect("spawn the DNS server thread");
        DnsServer { addr, anchor, stop: Some(stop), thread: Some(thread) }
    }

    /// The address for `deliver.dns_servers`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `deliver.dns_servers = ["ADDR"]`, for `with_lines`.
    pub fn config_line(&self) -> String {
        format!("deliver.dns_servers = [\"{}\"]", self.addr)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A UDP socket and a TCP listener on the same free port of 127.0.0.1.
fn bind_pair() -> (std::net::UdpSocket, std::net::TcpListener) {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind UDP on 127.0.0.1");
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = std::net::TcpListener::bind(addr) {
            udp.set_nonblocking(true).unwrap();
            tcp.set_nonblocking(true).unwrap();
            return (udp, tcp);
        }
    }
    panic!("no port of 127.0.0.1 was free for both UDP and TCP");
}

/// Lowercase, absolute.
fn normalize(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.').to_ascii_lowercase())
}

fn name(s: &str) -> Name {
    Name::from_utf8(normalize(s)).unwrap_or_else(|e| panic!("bad DNS name {s:?}: {e}"))
}

/// The zone a name belongs to: the unsigned zone it is in, else its last
/// label.
fn zone_of(name: &str, unsigned: &[String]) -> String {
    let n = normalize(name);
    if let Some(zone) = unsigned.iter().find(|z| n == **z || n.ends_with(&format!(".{z}"))) {
        return zone.clone();
    }
    let labels: Vec<&str> = n.trim_end_matches('.').split('.').collect();
    format!("{}.", labels[labels.len() - 1])
}

/// One in-memory zone per top-level label, with an SOA, holding `records`;
/// signed when `signed` (the unsigned zones aside), with the zones' DNSKEY
/// records as text; and a catalog of the top-level zones alone, which
/// answer the DS queries for the unsigned zones' apexes.
fn catalog(records: &[DnsRecord], signed: bool) -> (Catalog, Catalog, String) {
    let mut zones: BTreeMap<String, InMemoryZoneHandler> = BTreeMap::new();
    let unsigned: Vec<String> =
        records.iter().filter(|r| matches!(r.data, Data::UnsignedZone)).map(|r| normalize(&r.name)).collect();
    // Each unsigned zone's delegation: NS in the zone above, no DS.
    let mut records = records.to_vec();
    for zone in &unsigned {
        records.push(DnsRecord { name: zone.clone(), data: Data::Ns(format!("ns.{zone}")) });
    }
    for record in &records {
        let delegation = matches!(record.data, Data::Ns(_));
        let zone = if delegation { zone_of(&record.name, &[]) } else { zone_of(&record.name, &unsigned) };
        let handler = zones.entry(zone.clone()).or_insert_with(|| {
            let origin = name(&zone);
            let proof = (signed && !unsigned.contains(&zone)).then_some(NxProofKind::Nsec);
            let mut handler = InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny, proof);
            let soa = SOA::new(name(&format!("ns.{zone}")), name(&format!("hostmaster.{zone}")), 1, 60, 60, 600, TTL);
            assert!(handler.upsert_mut(Rr::from_rdata(origin.clone(), TTL, RData::SOA(soa)), 1));
            if signed {
                // Validators find zone cuts by the apex NS records.
                let ns = RData::NS(NS(name(&format!("ns.{zone}"))));
                assert!(handler.upsert_mut(Rr::from_rdata(origin, TTL, ns), 1));
            }
            handler
        });
        let rdata = match &record.data {
            Data::Mx(pref, target) => {
                let target = if target == "." { Name::root() } else { name(target) };
                RData::MX(MX::new(*pref, target))
            }
            Data::A(ip) => RData::A(A(*ip)),
            Data::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            Data::Txt(text) => {
                let chunks = text.as_bytes().chunks(255).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
                RData::TXT(TXT::new(chunks))
            }
            Data::Tlsa(usage, selector, matching, data) => RData::TLSA(TLSA::new(
                CertUsage::from(*usage),
                Selector::from(*selector),
                Matching::from(*matching),
                data.clone(),
            )),
            Data::Ns(target) => RData::NS(NS(name(target))),
            // Answered by `Handler`; the name still exists in the zone.
            Data::ServFail | Data::Silent | Data::UnsignedZone => continue,
        };
        assert!(handler.upsert_mut(Rr::from_rdata(name(&record.name), TTL, rdata), 1), "{record:?}");
    }
    let mut catalog = Catalog::new();
    let mut parents = Catalog::new();
    let mut anchor = String::new();
    for (zone, mut handler) in zones {
        let child = unsigned.contains(&zone);
        if signed && !child {
            anchor.push_str(&sign(&mut handler, &zone));
        }
        let handler: Arc<dyn ZoneHandler> = Arc::new(handler);
        if !child {
            parents.upsert(LowerName::new(&name(&zone)), vec![handler.clone()]);
        }
        catalog.upsert(LowerName::new(&name(&zone)), vec![handler]);
    }
    (catalog, parents, anchor)
}

/// Signs `zone` with a new key (one key, both KSK and ZSK); its DNSKEY
/// record as a zone-file line.
fn sign(handler: &mut InMemoryZoneHandler, zone: &str) -> String {
    let pkcs8 = EcdsaSigningKey::generate_pkcs8(Algorithm::ECDSAP256SHA256).expect("generate a zone key");
    let key = EcdsaSigningKey::from_pkcs8(&pkcs8, Algorithm::ECDSAP256SHA256).expect("load the zone key");
    let dnskey = DNSKEY::with_flags(257, key.to_public_key().expect("the zone key's public half"));
    let line = Rr::from_rdata(name(zone), 300, RData::DNSSEC(DNSSECRData::DNSKEY(dnskey.clone())));
    let signer = DnssecSigner::new(dnskey, Box::new(key), name(zone), Duration::from_secs(86400));
    handler.add_zone_signing_key_mut(signer).expect("add the zone key");
    handler.secure_zone_mut().expect("sign the zone");
    format!("{line}\n")
}

/// The catalog, except for the names that must answer SERVFAIL and those
/// that must not answer.
struct Handler {
    catalog: Catalog,
    /// The top-level zones: a DS query for a `delegated` apex is theirs.
    parents: Catalog,
    delegated: HashSet<String>,
    servfail: HashSet<String>,
    silent: HashSet<String>,
    /// Becomes true when the server stops: the silent queries end then.
    quitting: tokio::sync::watch::Receiver<bool>,
}

impl Handler {
    fn asked_in(&self, request: &Request, names: &HashSet<String>) -> bool {
        let Ok(info) = request.request_info() else { return false };
        names.contains(&normalize(&info.query.name().to_string()))
    }

    fn fails(&self, request: &Request) -> bool {
        self.asked_in(request, &self.servfail) || self.asked_in(request, &self.silent)
    }
}

// `RequestHandler` is an `async_trait` trait; this is the form the macro
// expands to, written out so the harness needs no extra crate.
impl RequestHandler for Handler {
    fn handle_request<'life0, 'life1, 'async_trait, R, T>(
        &'life0 self,
        request: &'life1 Request,
        mut response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: 'async_trait + ResponseHandler,
        T: 'async_trait + Time,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            if !self.fails(request) {
                let ds = request.request_info().is_ok_and(|i| i.query.query_type() == RecordType::DS);
                if ds && self.asked_in(request, &self.delegated) {
                    return self.parents.handle_request::<R, T>(request, response_handle).await;
                }
                return self.catalog.handle_request::<R, T>(request, response_handle).await;
            }
            if self.asked_in(request, &self.silent) {
                let mut quitting = self.quitting.clone();
                let _ = tokio::time::timeout(Duration::from_secs(60), quitting.wait_for(|q| *q)).await;
            }
            let response = MessageResponseBuilder::from_message_request(request)
                .error_msg(&request.metadata, ResponseCode::ServFail);
            response_handle.send_response(response).await.expect("send the SERVFAIL response")
        })
    }
}
