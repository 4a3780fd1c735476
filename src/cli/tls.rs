//! `posthorn tls report`: a day's RFC 8460 aggregate report, made from the
//! record the daemon keeps in `<spool>/tls-report/` (`deliver::tls_report`),
//! printed as JSON. Sending it to the domains' `rua` addresses is not done.

use super::{exit, load_config};
use clap::Subcommand;
use std::path::Path;

#[derive(Subcommand)]
pub(crate) enum Verb {
    /// Print the TLS report (RFC 8460 JSON) of one UTC day: each recipient
    /// domain's policy, successful and failed TLS sessions, and failure
    /// details
    Report {
        /// The day, YYYY-MM-DD (UTC); default: today so far
        #[arg(long)]
        date: Option<String>,
        /// Only this recipient domain
        #[arg(long)]
        domain: Option<String>,
    },
}

pub(crate) fn main(explicit: Option<&Path>, verb: Verb) -> u8 {
    let Verb::Report { date, domain } = verb;
    let config = match load_config(explicit, "posthorn tls") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let day = date.unwrap_or_else(|| crate::deliver::tls_report::day_of(crate::clock::now_secs()));
    if jiff::civil::Date::strptime("%Y-%m-%d", &day).is_err() || day.len() != 10 {
        eprintln!("posthorn tls: fatal: --date `{day}` is not YYYY-MM-DD");
        return exit::USAGE;
    }
    let file = crate::deliver::tls_report::report_dir(&config.spool).join(&day);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        // Nothing recorded that day: a report with no policies.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            eprintln!("posthorn tls: fatal: {}: {e}", file.display());
            return exit::TEMPFAIL;
        }
    };
    if !config.tls_report.enabled && text.is_empty() {
        eprintln!("posthorn tls: warning: tls_report.enabled is off; nothing is recorded");
    }
    let domain = domain.map(|d| d.trim_end_matches('.').to_ascii_lowercase());
    let contact = config.tls_report.contact.clone().unwrap_or_else(|| format!("postmaster@{}", config.hostname));
    let report = crate::deliver::tls_report::report(&text, &day, &config.hostname, &contact, domain.as_deref());
    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    exit::OK
}
