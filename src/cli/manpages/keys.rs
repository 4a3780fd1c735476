//! What posthorn.toml(5) says about each key: a sentence or two, the Exim
//! option that does the same job, and a Postfix parameter that looks alike
//! but differs. The key list itself comes from `config::keys()` and the
//! Postfix names from `postconf::POSTFIX_NAMES`; the unit tests below fail
//! when a key of the file has no entry here, so a new key cannot ship
//! undocumented.

/// One key's entry in posthorn.toml(5).
pub(super) struct Key {
    /// The dotted TOML name (`smtp.listen`).
    pub(super) name: &'static str,
    /// What it does, in plain text (escaped when rendered).
    pub(super) text: &'static str,
    /// The Exim main or transport option with the same job, if any.
    pub(super) exim: &'static str,
    /// A Postfix parameter that looks the same but differs, and how; the
    /// parameters with the same meaning come from `POSTFIX_NAMES`.
    pub(super) compare: &'static str,
    /// The default in words, for keys whose default depends on the host
    /// (its name, its filesystem) rather than on the role alone.
    pub(super) default: Option<&'static str>,
}

const fn k(name: &'static str, text: &'static str) -> Key {
    Key { name, text, exim: "", compare: "", default: None }
}

impl Key {
    const fn exim(self, exim: &'static str) -> Key {
        Key { exim, ..self }
    }
    const fn compare(self, compare: &'static str) -> Key {
        Key { compare, ..self }
    }
    const fn default(self, default: &'static str) -> Key {
        Key { default: Some(default), ..self }
    }
}

/// A sentence under each section's heading.
pub(super) const SECTIONS: &[(&str, &str)] = &[
    ("", "Keys at the top of the file, before any [section]."),
    ("smtp", "The SMTP server: listeners, limits and timeouts."),
    (
        "access",
        "Who may relay, and which domains are ours. posthorn is never an open relay: mail from outside trusted_networks, without authentication or a trusted client certificate, is accepted only for relay_domains, local_domains and rewrite.virtual_alias_domains.",
    ),
    (
        "relay",
        "The smarthosts: where a satellite sends everything, and a hub what its transport table sends to relay:.",
    ),
    (
        "queue",
        "Retries, lifetimes and durability of the queue. Retries back off per destination, doubling from retry_min to retry_max, with jitter.",
    ),
    (
        "rewrite",
        "Address rewriting with Postfix's table formats, read from their text source (hash: and texthash: both read the text file; no .db is needed). A changed table is picked up by itself; one with a bad line is refused and the previous version stays in use.",
    ),
    ("deliver", "How mail leaves: transport tables, Maildirs, DNS."),
    (
        "outbound_tls",
        "TLS of outbound SMTP per destination: a default level for MX delivery, transport-table next hops and the content filter, and policy tables in Postfix's smtp_tls_policy_maps format that override it (and relay.tls) per domain or [host]:port.",
    ),
    (
        "mta_sts",
        "MTA-STS (RFC 8461) for MX delivery: a recipient domain that publishes a policy (TXT _mta-sts.DOMAIN, and the policy at https://mta-sts.DOMAIN/.well-known/mta-sts.txt) gets it applied unless the outbound_tls.policy_maps tables name the domain (an explicit entry wins). In enforce mode only MX hosts matching the policy are used, over TLS verified against the MX host name; testing delivers as before and records what would have failed (tls_report). Policies are cached in SPOOL/mta-sts/, one file per domain, and survive restarts. Off by default on both roles.",
    ),
    (
        "tls_report",
        "The record of outbound TLS results per recipient domain (RFC 8460 TLS reporting): each MX delivery's TLS outcome is appended to SPOOL/tls-report/YYYY-MM-DD, one line each, without fsync (a crash may lose the last few counts). posthorn tls report prints a day's aggregate report as JSON. Off by default on both roles.",
    ),
    (
        "local",
        "Local delivery as the user (the local: transport), as Postfix's local(8): an mbox in mail_spool_directory or a mailbox in the home. Setting any key here makes a daemon started as root keep a small local delivery agent as root, which writes as each user (docs/security.md).",
    ),
    (
        "tls",
        "The server's certificate. Both cert and key, or neither: with neither, STARTTLS is not offered. The files are checked at start and on reload.",
    ),
    ("auth", "SMTP AUTH on the server side (RFC 4954): PLAIN and LOGIN."),
    (
        "filter",
        "An after-queue content filter (a hub), as Postfix's FILTER_README describes. A filter that is down or answers 4xx defers the mail, never bounces it; 5xx bounces.",
    ),
    (
        "milter",
        "Before-queue milters (Sendmail milter protocol 6, as Postfix's MILTER_README describes): rspamd, OpenDKIM and the like see each SMTP session and its message before the 250, and their verdicts and changes apply. Off by default on both roles.",
    ),
    (
        "dkim",
        "DKIM signing of outbound mail whose From: domain (or a parent of it) has a key, just before each SMTP transmission. A key that does not load refuses the start.",
    ),
    (
        "metrics",
        "The metrics and health endpoint: Prometheus text format on /metrics, 200 ok (or 503 with the reason) on /health. Plain HTTP without authentication: keep it on loopback.",
    ),
    (
        "policy",
        "Policy delegation (Postfix's SMTPD_POLICY_README protocol): services such as postgrey or policyd-spf asked about each recipient of a client that is not trusted or authenticated, their actions (OK, DUNNO, REJECT, DEFER, DEFER_IF_PERMIT, DEFER_IF_REJECT, PREPEND, 4xx and 5xx text) applied as Postfix applies them. Off unless services names one.",
    ),
    (
        "screen",
        "postscreen's tests, run before a client that is not trusted may send mail: DNS blocklists and allowlists with weights (a client whose score reaches the threshold is refused at RCPT with 550 5.7.1 naming the list) and the pregreet test (a client that talks before the greeting is refused with 521). Never for trusted networks, on the submission ports or on the reinjection listener. Off unless dnsbl_sites names a list or pregreet is true.",
    ),
    (
        "verify",
        "SPF, DKIM and DMARC checks of mail from clients that are not trusted, with an Authentication-Results header (RFC 8601) added at the end of DATA and one log line of results per message. Never for trusted networks, authenticated clients, local submissions or the reinjection listener. ARC is not checked. Off unless spf, dkim or dmarc is true.",
    ),
    (
        "log",
        "Where log lines go and how they are written. Lines are Postfix's, tagged with the service that logged them (posthorn/smtpd[PID]).",
    ),
    (
        "srs",
        "The Sender Rewriting Scheme for forwarded mail, in libsrs2's and postsrsd's format: when an alias sends mail from an outside sender out of the hub's domains, the envelope sender becomes SRS0=HHHH=TT=domain=local@srs.domain, and bounces to such an address are turned back into the original sender at RCPT.",
    ),
];

/// Every key, in the order of `config::keys()`.
pub(super) const KEYS: &[Key] = &[
    k("role", "satellite or hub: picks the defaults of the other keys. A satellite listens on loopback and relays everything to its smarthosts; a hub accepts mail from the fleet, rewrites and delivers it.")
        .default("satellite"),
    k("hostname", "The name used in the greeting, in Received: headers and in bounces.")
        .exim("primary_hostname")
        .default("the system's host name"),
    k("myorigin", "The domain that unqualified addresses of local submissions get (sendmail, the maildrop, SMTP clients on loopback): the envelope and the From:, Sender:, Reply-To:, To:, Cc:, Bcc: headers and their Resent- forms.")
        .exim("qualify_domain")
        .default("the hostname"),
    k("spool", "The queue directory. Changing it needs a restart."),
    k("user", "The account the daemon switches to for good after binding its ports when started as root; it owns the spool. \"root\" keeps root. The account must exist. Changing it needs a restart. Unset in the built-in configuration (used when no file exists), which runs as whoever starts it.")
        .exim("exim_user"),
    k("smtp.listen", "SMTP listeners, as address:port strings.")
        .exim("local_interfaces, daemon_smtp_ports")
        .compare("inet_interfaces (addresses without ports; this key holds address:port)"),
    k("smtp.submission", "Submission listeners (RFC 6409, port 587): STARTTLS offered, AUTH required before MAIL (530 5.7.0).")
        .exim("daemon_smtp_ports")
        .compare("the submission service of master.cf"),
    k("smtp.submissions", "Implicit-TLS submission listeners (RFC 8314, port 465): TLS from the first byte, AUTH required before MAIL.")
        .exim("tls_on_connect_ports")
        .compare("the smtps service of master.cf"),
    k("smtp.max_message_size", "Largest message accepted, in bytes (50M, 512k and 1G are accepted); larger ones get 552 5.3.4.")
        .exim("message_size_limit"),
    k("smtp.max_recipients", "Recipients per message; more get 452 4.5.3.").exim("recipients_max"),
    k("smtp.max_connections", "SMTP sessions at once on a listener; further connections wait in the listen backlog (smtp.listen_backlog) until a session ends.").exim("smtp_accept_max"),
    k("smtp.listen_backlog", "Connections the kernel keeps waiting on each listener while every max_connections slot is taken (the listen(2) backlog, capped by net.core.somaxconn; default 1024). Postfix has no key for it (its master uses a fixed backlog); applies to addresses bound after a change."),
    k("smtp.max_line_length", "Longest command line accepted, CRLF included (at least 512)."),
    k("smtp.max_data_line_length", "Longest text line inside DATA, CRLF included (at least 1000)."),
    k("smtp.client_connection_limit", "Connections one client (an IPv4 address, an IPv6 /64) may have open at once on a listener; 0: no limit. Clients in access.trusted_networks are exempt.")
        .exim("smtp_accept_max_per_host"),
    k("smtp.client_connection_rate_limit", "New connections one client may open per minute on a listener, refused ones included; 0: no limit. Trusted networks are exempt."),
    k("smtp.trusted_reserve", "Of max_connections, the slots only clients in access.trusted_networks may take, so that untrusted clients can never lock a trusted satellite out. Must be less than max_connections; by default a tenth of it.")
        .exim("smtp_accept_reserve"),
    k("smtp.command_timeout", "Deadline for one command line, however slowly it comes.")
        .exim("smtp_receive_timeout")
        .compare("smtpd_timeout (a timeout per read or write, not a deadline per command)"),
    k("smtp.data_timeout", "Longest wait between two reads inside DATA or BDAT.").exim("smtp_receive_timeout"),
    k("smtp.data_deadline", "Deadline for the whole text of one message (DATA, or every BDAT chunk). Raise it with max_message_size for slow links."),
    k("smtp.tls_handshake_timeout", "Deadline for a TLS handshake (STARTTLS, or the first bytes on a submissions port)."),
    k("smtp.repeat_log_interval", "Log lines that repeat for one client (refused connections, too many RCPTs) are written once per this interval, then summarised."),
    k("smtp.max_errors", "Error replies (4xx and 5xx) after which the session is closed with 421.")
        .compare("smtpd_hard_error_limit and smtpd_soft_error_limit (Postfix counts errors its own way, with sleeps)"),
    k("smtp.hopcount_limit", "Received: fields a message may carry in; beyond, 554 5.4.6 (a mail loop).")
        .exim("received_headers_max"),
    k("smtp.bare_newline", "What a bare LF in message text gets: normalize stores it as CRLF from trusted_networks, local submission and the filter's reinjection, and refuses it (550 5.5.2) from others, since a bare LF is how SMTP smuggling starts; reject refuses it from all."),
    k("access.trusted_networks", "Networks (CIDR, or a bare address) whose clients may relay to any domain.")
        .exim("relay_from_hosts (dc_relay_nets)"),
    k("access.relay_domains", "Domains accepted from anyone and delivered onward.")
        .exim("relay_to_domains (dc_relay_domains)"),
    k("access.local_domains", "Domains delivered to local Maildirs (deliver.maildir_root).")
        .exim("local_domains (dc_other_hostnames)")
        .default("a satellite: none; a hub: the hostname and localhost"),
    k("access.local_recipient_maps", "Tables of the users of local domains; an unknown user gets 550 5.1.1 at RCPT. Unset: any local part is accepted and gets a new Maildir (a hub warns of it at start)."),
    k("access.trusted_fingerprints", "SHA-256 fingerprints (hex, colons allowed) of client certificates that may relay, besides those issued by tls.client_ca."),
    k("access.client_cert_senders", "A table from a client certificate's DNS name to the senders (*@domain, or an address) that client may use in MAIL FROM; others get 553 5.7.1."),
    k("relay.smarthosts", "host:port strings in priority order, tried with failover; [host] skips the MX lookup. Unset on a hub: mail goes by MX.")
        .exim("dc_smarthost (the manualroute router's route_list)"),
    k("relay.tls", "TLS towards the smarthosts: none, may (STARTTLS when offered), encrypt (TLS required, certificate not checked) or verify (TLS required and the certificate checked). Under encrypt and verify mail never goes in clear.")
        .exim("hosts_require_tls, hosts_try_tls (smtp transport)"),
    k("relay.tls_ca", "CA certificates (PEM) that verify checks the smarthost against, instead of the system's roots.")
        .exim("tls_verify_certificates (smtp transport)"),
    k("relay.tls_client_cert", "Certificate chain (PEM) presented to the smarthosts when they ask for one; set with tls_client_key.")
        .exim("tls_certificate (smtp transport)"),
    k("relay.tls_client_key", "The key (PEM) of tls_client_cert.").exim("tls_privatekey (smtp transport)"),
    k("relay.auth_file", "A file holding user:password for AUTH towards the smarthosts. Sent only when tls = verify verified the smarthost, unless auth_unverified or auth_plaintext says otherwise.")
        .exim("/etc/exim4/passwd.client")
        .compare("smtp_sasl_password_maps (a table by next hop; this is one user:password)"),
    k("relay.auth_plaintext", "Send the credentials on a connection without TLS too."),
    k("relay.auth_unverified", "Send the credentials over TLS whose certificate was not verified (tls = may or encrypt): anyone in the path could collect them."),
    k("relay.connect_timeout", "Time allowed to connect to a smarthost.").exim("connect_timeout (smtp transport)"),
    k("relay.max_connections", "Connections open at once to the smarthosts.").exim("remote_max_parallel"),
    k("relay.idle_timeout", "How long an idle connection is kept for reuse."),
    k("queue.retry_min", "The first retry delay of a destination; it doubles up to retry_max.").exim("the retry rules"),
    k("queue.retry_max", "The longest retry delay.").exim("the retry rules"),
    k("queue.max_lifetime", "After this long the sender gets a bounce; a satellite that never reached its hub keeps the mail instead.")
        .exim("the retry rules' final cutoff"),
    k("queue.delay_warning", "When the sender is told that the mail is delayed; 0 turns delay warnings off.").exim("delay_warning"),
    k("queue.active_limit", "Messages in delivery at once; the rest waits on disk."),
    k("queue.pickup_interval", "How often the maildrop is scanned even when sendmail did not wake the daemon."),
    k("queue.bounce_rate_limit", "Delivery status notifications per sender per hour, at most."),
    k("queue.sync", "How accepted mail is made durable: batch (one syncfs per group commit; Linux 5.8 or later, older kernels get per-file with a warning) or per-file (an fdatasync of every file, as Postfix does)."),
    k("queue.min_free", "Free space kept on the spool's filesystem for deferrals and bounces: below it new mail is refused with 452 4.3.1 and the maildrop waits. 0 turns the check off.")
        .exim("check_spool_space")
        .default("100M, but at most 5% of the spool's filesystem"),
    k("rewrite.virtual_alias_maps", "virtual(5) tables: user@domain, user and @domain (catch-all) keys, each to one or more addresses, recursively, with loop detection."),
    k("rewrite.virtual_alias_domains", "Domains whose every address comes from virtual_alias_maps: accepted from anyone, but an address without an entry gets 550 5.1.1 at RCPT."),
    k("rewrite.alias_maps", "aliases(5) files for local names (addresses only: |command and /file entries are refused). They apply to local domains, and on a satellite also to its own names, so root: ops@example.org in /etc/aliases sends cron's mail to ops.")
        .exim("the system_aliases router (/etc/aliases)"),
    k("rewrite.sender_canonical_maps", "canonical(5) tables for the envelope sender and the From: header.")
        .exim("the rewrite rules (begin rewrite)"),
    k("rewrite.recipient_canonical_maps", "canonical(5) tables for envelope recipients.").exim("the rewrite rules (begin rewrite)"),
    k("rewrite.masquerade_as", "Local senders become user@masquerade_as (a domain) or exactly masquerade_as (an address), in the envelope and the From: and Sender: headers, after the canonical maps.")
        .exim("dc_readhost"),
    k("rewrite.masquerade_domains", "The domains whose senders are masqueraded; empty: the hostname and localhost.")
        .compare("masquerade_domains (Postfix strips subdomains; this names the domains whose senders become masquerade_as)"),
    k("deliver.transport_maps", "Transport tables, searched in order: a domain (or .domain, or *) to maildir:, smtp: or relay:[host]:port. Routing is decided at delivery time, so a change applies to mail already queued."),
    k("deliver.maildir_root", "Where local mail goes; {domain} and {user} are replaced. Must be writable by the daemon's account.")
        .exim("the maildir_home transport's directory")
        .compare("virtual_mailbox_base (a directory; this is a template)"),
    k("deliver.dns_servers", "DNS servers (address or address:port) for MX and address lookups; empty: the system's /etc/resolv.conf."),
    k("deliver.dnssec_trust_anchor", "A file of DNSKEY records (zone-file syntax) that DNSSEC validation for DANE starts from, for a private root or a test zone; unset: the root zone's keys built in. A file without a DNSKEY record refuses the start.")
        .compare("Postfix trusts the AD bit of its resolver (smtp_dns_support_level = dnssec); posthorn validates itself, so this is closer to unbound's trust-anchor-file."),
    k("deliver.mx_port", "The port MX hosts are contacted on."),
    k("deliver.destination_concurrency", "Connections open at once to one destination (a domain or a relay host)."),
    k("deliver.source_addresses", "The local addresses outbound SMTP connects from, at most one IPv4 and one IPv6 address; each is used for peers of its family. Empty: the kernel chooses.")
        .exim("interface (smtp transport)")
        .compare("Postfix has one parameter per family: smtp_bind_address and smtp_bind_address6."),
    k("deliver.shaping", "Per-destination traffic shaping, an array of tables: destination (a recipient domain delivered by MX, or a queue destination such as relay), max_connections (at once; default destination_concurrency), max_messages_per_minute (messages started per window), per (the window, default 1m) and max_messages_per_connection (messages one outbound session carries before it is closed with QUIT and a new one opened; default unlimited). Mail held back by a limit is deferred with delivery temporarily suspended: rate limit ..., never counted as a failure of the destination: no backoff, no attempt counted.")
        .compare("Postfix's per-transport destination_rate_delay and destination_concurrency_limit come closest, and smtp_connection_reuse_count_limit (global, not per destination) to max_messages_per_connection; KumoMTA's traffic shaping is the model."),
    k("deliver.inet_protocols", "all, ipv4 or ipv6: the address families outbound SMTP uses. A host's AAAA and A addresses are raced (Happy Eyeballs, IPv6 first; see deliver.connection_attempt_delay).")
        .default("all"),
    k("deliver.connection_attempt_delay", "Happy Eyeballs (RFC 8305) for outbound SMTP: a host's addresses are tried IPv6 first, the families alternating, and the next address is tried alongside when the previous has not connected within this delay (at once when it failed); the first connection wins and the others are dropped. At least 10ms.")
        .default("250ms")
        .compare("Postfix tries a host's addresses one after the other (smtp_address_preference); Exim has no race either."),
    k("outbound_tls.policy_maps", "TLS policy tables, searched in order: a domain (or .domain for its subdomains), or a next hop as [host]:port, to none, may, encrypt, verify, secure, dane or dane-only, with match=name:.domain:hostname:nexthop:dot-nexthop for verify and secure. A smarthost's entry overrides relay.tls. A bad line refuses the start."),
    k("outbound_tls.level", "The TLS level for a destination no policy table names: none, may (STARTTLS when offered), encrypt (TLS required), verify (certificate checked against the MX host name), secure (checked against the next hop's names), dane (the MX host's DNSSEC-signed TLSA records, when it has usable ones; otherwise may) or dane-only (TLSA records required). Under encrypt, verify, secure, dane-only, and dane with usable TLSA records, mail never goes in clear; a bogus DNSSEC answer defers.")
        .compare("smtp_tls_security_level = dane (Postfix's one default for every delivery; posthorn's relay.tls is the smarthosts' own and refuses dane)"),
    k("outbound_tls.ca", "CA certificates (PEM) that verify and secure check MX hosts and next hops against; unset: the system's roots.")
        .compare("smtp_tls_CAfile (posthorn's relay.tls_ca is the smarthosts' own)"),
    k("mta_sts.enabled", "Look up, fetch, cache and apply MTA-STS policies (RFC 8461) for domains delivered by MX that no policy table names. enforce: MX hosts outside the policy's mx patterns are not used (none left: the mail is deferred, naming MTA-STS), and TLS must verify against the MX host name (outbound_tls.ca or the system roots), never falling back to clear text; testing: delivered as outbound_tls.level says, failures recorded for tls_report. A policy that cannot be fetched falls back to the cached one until its max_age.")
        .default("false"),
    k("mta_sts.fetch_timeout", "The time one policy fetch may take (connection, TLS, request and body, at most 64 KiB); between 1s and 2m. Redirects are not followed.")
        .default("10s"),
    k("tls_report.enabled", "Record each MX delivery's TLS result (success, or the RFC 8460 result type of the failure) in SPOOL/tls-report/, one file per UTC day, for posthorn tls report.")
        .default("false"),
    k("tls_report.contact", "The contact-info of the reports posthorn tls report prints; unset: postmaster@ and the hostname."),
    k("local.local_transport", "Where a hub's local domains go when no transport entry says: maildir (deliver.maildir_root, as the daemon's account), local (the user's mailbox, written as the user, as Postfix's local(8)), or lmtp:unix:/path or lmtp:[host]:port (an LMTP server such as Dovecot's, as Postfix's mailbox_transport = lmtp:...).")
        .default("maildir"),
    k("local.mail_spool_directory", "The directory of mbox files named after their users, for local: delivery without home_mailbox.")
        .default("/var/mail"),
    k("local.home_mailbox", "A mailbox inside the user's home instead of the spool file: Maildir/ (trailing slash) for a Maildir, Mailbox for an mbox. Unset: mail_spool_directory/USER."),
    k("local.recipient_delimiter", "Characters that start an address extension (user+tag): an alias user+tag without an entry of its own is looked up as user, and local: delivers user+tag to user's mailbox (Delivered-To: keeps the whole address). Empty: no extensions."),
    k("local.deliver_to_root", "Whether local: delivers to an account with uid 0 (root's own mailbox). Off: such mail bounces; alias root to a person.")
        .default("false"),
    k("local.default_privs", "The account that commands (|cmd) and files (/path) of an alias file owned by root run and are written as; an alias file owned by another account runs them as that account. Never root.")
        .default("nobody"),
    k("local.allow_mail_to_commands", "Where aliases to commands (|cmd) are honoured: alias (the alias files), forward (.forward files, run as the user). An alias to a command from a source not listed bounces (550 5.7.1). include is refused: :include: files list addresses only.")
        .default("alias, forward"),
    k("local.allow_mail_to_files", "Where aliases to files (/path) are honoured: alias, forward, as allow_mail_to_commands.")
        .default("alias, forward"),
    k("local.forward_path", "Where local: looks for a user's .forward file, first found wins: absolute paths or paths under $home, with $home, $user, $local, $extension, $domain, $recipient (also ${name}). The file is read as the user and honoured only when it is a regular file owned by the user or root and not group- or world-writable. An empty list reads no .forward files.")
        .default("$home/.forward"),
    k("local.command_time_limit", "How long a command an alias delivers to may run; then its process group is killed and the mail deferred.")
        .default("1000s"),
    k("tls.cert", "The server's certificate chain (PEM); STARTTLS is offered only when set. TLS 1.2 and 1.3.").exim("tls_certificate"),
    k("tls.key", "The key (PEM) of tls.cert.").exim("tls_privatekey"),
    k("tls.received_auth_user", "Name the authenticated user in Received: headers (off: the header would tell every recipient which account sent the message)."),
    k("tls.client_ca", "CA certificates (PEM): with it, the server asks clients for a certificate, and a client with one issued by these CAs may relay.")
        .exim("tls_verify_certificates, tls_try_verify_hosts"),
    k("auth.users", "A file of user:hash lines (Argon2id, written by posthorn auth add USER; SHA-512-crypt entries still verify). AUTH is offered only when set.")
        .exim("the server side of an authenticator"),
    k("auth.allow_plaintext", "Offer AUTH on connections without TLS too (otherwise 538 5.7.11 before STARTTLS).")
        .exim("auth_advertise_hosts"),
    k("auth.max_failures", "Failed attempts from one client address within failure_window, after which AUTH from that address is refused until the window ends."),
    k("auth.failure_window", "The window max_failures counts over."),
    k("auth.failure_delay", "Pause before answering a failed attempt."),
    k("filter.content_filter", "Where unfiltered mail goes first: smtp:[host]:port hands the whole message to an SMTP filter, which sends it back to reinject_listen; pipe:COMMAND ARGS runs the command without a shell, the message on its standard input, with ${sender} and ${recipient} (one argument per recipient) replaced: exit 0 hands it over, 75 or a crash defers it, any other code bounces it. Unset: no filter."),
    k("filter.reinject_listen", "The listener (loopback and trusted_networks only) the filter sends mail back to; mail arriving there is marked filtered and never filtered again."),
    k("filter.pipe_timeout", "How long a pipe filter may run before it is killed and the message deferred."),
    k("filter.domains", "Recipient domains whose mail is filtered; empty: all."),
    k("milter.servers", "Before-queue milters (Sendmail milter protocol 6: rspamd, OpenDKIM, clamav-milter), inet:HOST:PORT or unix:/PATH, asked in order about every SMTP session: connect, HELO, MAIL, RCPT, the message and its end, before the 250. Their refusals (with their own reply text), discard, quarantine (into the hold queue) and header, body and envelope changes apply. Not asked for mail back from the content filter. Empty (the default): none."),
    k("milter.non_smtpd_milters", "Milters asked about mail from sendmail and the maildrop pickup, when the daemon picks it up; a refusal bounces it to the sender. Empty (the default): none."),
    k("milter.default_action", "What a milter that cannot be reached, does not answer in time or breaks the protocol counts as: tempfail (451 4.7.1, the default), reject (550 5.7.1) or accept (the milter is skipped for the rest of the session). Logged as warning: milter ADDR: why."),
    k("milter.connect_timeout", "How long connecting to a milter and negotiating with it may take."),
    k("milter.command_timeout", "How long a milter may take to answer connect, HELO, MAIL, RCPT and DATA."),
    k("milter.content_timeout", "How long a milter may take to answer each header field, body chunk and the end of the message."),
    k("dkim.keys", "Signing keys, one [[dkim.keys]] table each: domain, selector, key (a PEM file: PKCS#8 Ed25519, PKCS#1 or PKCS#8 RSA) and algorithm (rsa-sha256 or ed25519-sha256; default: from the key). posthorn dkim keygen writes one and prints its DNS record.")
        .exim("dkim_domain, dkim_selector, dkim_private_key (smtp transport)"),
    k("dkim.headers", "The header fields signed; empty: From, To, Cc, Subject, Date, Message-ID and the other usual ones.")
        .exim("dkim_sign_headers"),
    k("metrics.listen", "address:port of the endpoint; unset: no endpoint. Read at start only: a change needs a restart."),
    k("policy.services", "The policy services, asked in this order: inet:host:port or unix:/path. An OK or a refusal ends the list; DUNNO asks the next. Empty: none.")
        .exim("acl_smtp_rcpt with a ${readsocket} condition"),
    k("policy.stages", "When the services are asked: mail, rcpt and data (at the DATA command). postgrey and policyd-spf expect rcpt."),
    k("policy.timeout", "The most one question may take, connecting included; past it the default action applies."),
    k("policy.max_idle", "A connection to a service idle for longer than this is closed instead of reused."),
    k("policy.default_action", "What a service that cannot be reached or does not answer in time is taken to have said: DUNNO, OK, REJECT, DEFER or 4xx/5xx text."),
    k("screen.dnsbl_sites", "DNS lists in postscreen's syntax: domain[=filter][*weight], the filter an address pattern whose octets may be [a..b;c] sets (127.0.[0..255].[0..255]), the weight negative for an allowlist. Asked in parallel at connect. Empty: none."),
    k("screen.dnsbl_threshold", "The score (sum of the weights of the lists that answer) at which a client is refused at RCPT."),
    k("screen.dnsbl_timeout", "The most the lists may take from the connect; a list that has not answered by then does not count."),
    k("screen.pregreet", "true: the greeting starts with a partial 220- line, then waits greet_wait; a client that talks before the rest of it is refused with 521."),
    k("screen.greet_wait", "How long the partial greeting waits for a client that talks too early."),
    k("verify.spf", "true: SPF (RFC 7208) of the MAIL FROM and HELO identities of clients that are not trusted, checked at MAIL."),
    k("verify.dkim", "true: the DKIM signatures (RFC 6376) of messages from clients that are not trusted, checked at the end of DATA."),
    k("verify.dmarc", "true: DMARC (RFC 7489) of the From: domain from the SPF and DKIM results; needs spf and dkim on."),
    k("verify.arc", "true: the ARC chain (RFC 8617) of messages from clients that are not trusted, validated at the end of DATA and recorded as arc=pass, fail or none."),
    k("verify.arc_trusted_sealers", "Domains whose ARC seal, on a chain that passes, lets a DMARC fail be accepted (RFC 8617 7.2 local policy override; for mailing lists); needs arc and dmarc on; default: none."),
    k("verify.authserv_id", "The authserv-id of the Authentication-Results header (RFC 8601); default: the hostname."),
    k("verify.spf_fail_action", "reject: an SPF fail is refused at MAIL with 550 5.7.23 and a temperror deferred with 451 4.7.24 (RFC 7372); tag: only recorded in Authentication-Results."),
    k("verify.dmarc_reject_action", "reject: a DMARC fail of a domain with p=reject is refused with 550 5.7.1 at the end of DATA and one with p=quarantine put on hold; quarantine: both put on hold; tag: only recorded in Authentication-Results."),
    k("screen.cache_ttl", "How long a client address's pregreet result and DNS list score are remembered: a client that passed is not made to wait again, one that failed is refused at once."),
    k("log.to", "stderr, syslog, journald or file:/absolute/path. Unset: stderr in the foreground, syslog when started by postfix start. A file is created 0640 and reopened on SIGHUP and SIGUSR1.")
        .exim("log_file_path"),
    k("log.format", "text, or json (one JSON object per line, for stderr and file:)."),
    k("log.syslog_name", "The syslog tag (posthorn/smtpd[PID]); \"postfix\" makes every Postfix log tool work as it is.")
        .exim("syslog_processname"),
    k("log.syslog_facility", "mail, daemon, user or local0 to local7.").exim("syslog_facility"),
    k("log.syslog_format", "rfc3164 or rfc5424."),
    k("log.syslog_socket", "The syslog daemon's socket."),
    k("log.journald_socket", "journald's socket; lines carry native fields (QUEUE_ID, TRACE_ID, CLIENT_ADDR, ...)."),
    k("srs.domain", "The domain rewritten senders take; its SPF record must allow this host, and it must be one of access.local_domains or access.relay_domains so that bounces to it are accepted. Unset: no rewriting.")
        .exim("the SRS options of the redirect router"),
    k("srs.secret", "A file of secrets, one a line, read by the daemon's account: the first signs new addresses, every one verifies returning ones (rotate by adding a new first line). postsrsd's secrets file works as it is."),
    k("srs.exclude_domains", "Sender domains never rewritten besides the hub's own (local, relay and virtual alias domains, myorigin); a leading dot takes the subdomains, as postsrsd's -X."),
    k("srs.max_age", "How long a rewritten address stays valid for bounces, in whole days; older ones get 550 at RCPT.").default("21d"),
];

/// The entry for `name`.
pub(super) fn find(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The Postfix parameters with the same meaning as `key`.
pub(super) fn postfix_names(key: &str) -> Vec<&'static str> {
    crate::cli::postconf::POSTFIX_NAMES.iter().filter(|(_, k)| *k == key).map(|(p, _)| *p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_a_description() {
        let keys = crate::config::keys();
        let missing: Vec<&String> = keys.iter().filter(|k| find(k).is_none_or(|d| d.text.trim().is_empty())).collect();
        assert!(missing.is_empty(), "keys without a description in src/cli/manpages/keys.rs: {missing:?}");
        let stale: Vec<&str> = KEYS.iter().map(|d| d.name).filter(|n| !keys.iter().any(|k| k == n)).collect();
        assert!(stale.is_empty(), "descriptions of keys the file does not have: {stale:?}");
        let mut names: Vec<&str> = KEYS.iter().map(|d| d.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KEYS.len(), "a key described twice");
    }

    #[test]
    fn every_section_has_an_introduction() {
        for key in crate::config::keys() {
            let section = key.rsplit_once('.').map_or("", |(s, _)| s);
            assert!(SECTIONS.iter().any(|(s, _)| *s == section), "no introduction for [{section}]");
        }
    }
}
