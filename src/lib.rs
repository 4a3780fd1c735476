//! posthorn: one mail transfer agent for both halves of a relay setup.
//!
//! A *satellite* on every machine takes mail from local programs, queues it
//! durably and relays it to the mail node; the *hub* on the mail node accepts
//! from the fleet and delivers onward. Both are this crate, chosen by
//! `role` in the configuration.
//!
//! # Module map
//!
//! Arrows mean "may use"; they point down the floors, never up
//! (`bench/imports.py` prints any import circle between files or modules:
//! there are none). `docs/architecture.md` tells the whole story.
//!
//! ```text
//! main.rs ─> cli ─> control ─> (the running daemon)
//!               ─> spool, route          (read-only listings, postmap, route explain)
//!               ─> ingress::maildrop    (mailq lists the drops while the daemon is down)
//! daemon  ─> smtp::server ─> ingress ─> spool
//!                         ─> tls, auth, policy, screen ─> deliver::dns
//!         ─> queue ─> route              (each recipient's hop, content filter first, decided now)
//!                  ─> deliver ─> smtp::client ─> smtp::proto   (carries the hop out)
//!                  ─> dsn ─> ingress     (notices go back in through the door)
//! ingress ─> route   (aliases and canonical maps are applied once, at the door)
//! smtp::server, ingress::maildrop ─> milter ─> config, message, smtp::proto   (before-queue milters)
//! daemon, smtp::server, ingress, queue ─> metrics   (counters; metrics uses nothing)
//! every stage ─> config ─> message ─> smtp::proto   (the ground floor)
//! ```
//!
//! `smtp::proto` uses nothing else in the crate; `message` uses only its
//! replies; `config` imports no stage; `spool` knows nothing of SMTP or
//! transports; `deliver` never touches queue files and never decides routes.
//!
//! - [`message`]: the types every stage hands on: the message and its
//!   recipients, outcomes, error classes and statuses, next-hop syntax and
//!   hops, the header block (byte-exact), address lists in headers
//!   (`addrlist`: qualified in place, every other byte kept), 7-bit
//!   conversion, the seal that carries "we vouch for it" through the content
//!   filter, and the trace header's name.
//! - [`config`]: TOML to typed configuration, role defaults, located errors.
//! - [`smtp::proto`]: sans-IO protocol: commands, replies, addresses, DATA decoding.
//! - `smtp::server`: listener and per-connection session (one function per verb);
//!   `anvil` counts connections per client (caps, rate, the trusted reserve).
//! - `smtp::client`: one outbound SMTP transaction with per-recipient results.
//! - [`spool`]: queue ids, envelopes (never the body), bodies, atomic state
//!   moves, group commit and crash recovery, free space (`queue.min_free`),
//!   listings that see each message once, the operator's changes (`change`:
//!   delete, hold, release, requeue, for the scheduler and for the commands
//!   with the daemon down) and the spool lock that says who holds it.
//! - [`ingress`]: the one door into the queue (SMTP, sendmail, maildrop pickup).
//! - [`milter`]: the before-queue milter client (Sendmail milter protocol 6): the
//!   codec without I/O, one session's conversations, the changes applied to a message.
//! - [`queue`]: the scheduler: due times, active window, per-destination backoff.
//! - [`route`]: lookup tables, virtual aliases and catch-all, alias files, transport table,
//!   TLS policy tables, and each recipient's next hop at delivery time; `route::srs`
//!   rewrites the sender of forwarded mail (SRS) and reverses bounces to it.
//! - [`deliver`]: transports; an `Outcome` per recipient, never touching queue files;
//!   `tls_policy`: each SMTP next hop's TLS level and certificate names; `dane`:
//!   the DNSSEC-validated lookups that decide whether DANE applies to an MX host;
//!   `mta_sts`: MTA-STS policies fetched, cached in the spool and applied to MX
//!   delivery; `tls_report`: TLS results per domain for RFC 8460 reports;
//!   `eyeballs`: the Happy Eyeballs race between a host's addresses.
//! - [`dsn`]: RFC 3464 bounces, delay warnings and success notices.
//! - [`control`]: the Unix sockets in the spool the commands use to reach the daemon;
//!   `control::showq` is the public queue listing.
//! - [`metrics`]: counters, the Prometheus text format, the metrics and health HTTP endpoint.
//! - [`daemon`]: `posthorn serve`: wires the pieces together and runs them;
//!   `daemon::listeners` owns the TCP listeners (opened and closed by reload too),
//!   `daemon::privilege` gives up root after binding, `daemon::pidfile` keeps
//!   the pid file where the account cannot reach it, `daemon::notify` tells
//!   systemd (`Type=notify`) of readiness, reloads, stopping and the watchdog.
//! - [`cli`]: the native `posthorn <noun> <verb>` interface and the compatibility names.
//! - [`policy`]: policy delegation (Postfix's SMTPD_POLICY_README) as a
//!   client: the request, the actions, the pooled connections; the session
//!   asks it through `smtp::server::defence`, one call per phase.
//! - [`screen`]: postscreen's tests (`[screen]`): DNS blocklists and
//!   allowlists with weights, asked in parallel at connect through
//!   `deliver::dns`, and the per-client memory of pregreet results; the
//!   session runs them through `smtp::server::screen`.
//! - [`verify`]: SPF, DKIM and DMARC of incoming mail (`[verify]`) through
//!   mail-auth, and the Authentication-Results header; the session runs
//!   SPF at MAIL and the rest at the end of DATA.
//! - [`tls`]: rustls configurations for both sides, certificate loading;
//!   `matching`: a next hop's certificate checked against a list of names;
//!   `dane`: a server certificate checked against TLSA records.
//! - [`auth`]: SMTP AUTH credentials files, password hashes, failure limits.
//! - [`account`]: user accounts by name and by uid, through NSS.
//! - [`clock`]: the Unix clock; RFC 5322 and `mailq` dates in local time (jiff).
//! - [`logging`]: the one `tracing` layer: Postfix-shaped lines (`posthorn/smtpd[PID]`,
//!   `warning:` prefixes) to stderr, a file, syslog or journald, or JSON lines.
//!   Uses only `clock`; every module logs through `tracing` macros, never by importing it.

pub mod account;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod deliver;
pub mod dsn;
pub mod ingress;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod milter;
pub mod policy;
pub mod queue;
pub mod route;
pub mod screen;
pub mod smtp;
pub mod spool;
pub mod tls;
pub mod verify;
