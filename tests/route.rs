//! `posthorn route explain ADDRESS`: the whole chain an operator needs to
//! see, from the tables as they are on disk, without a running daemon.

mod harness;

use std::process::Command;

#[test]
fn route_explain_shows_aliases_transport_next_hop_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(
        dir.path().join("virtual"),
        "info@example.org  alice@example.org, ops@partner.example\n@staging.example.org  team@example.org\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("transport"),
        ".partner.example  relay:[10.0.0.9]:2525\npartner.example  relay:[10.0.0.9]:2525\n",
    )
    .unwrap();
    let config = dir.path().join("posthorn.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"hub\"\nhostname = \"mx.example.org\"\nspool = \"{d}/spool\"\n[access]\nlocal_domains = [\"example.org\"]\n[rewrite]\nvirtual_alias_maps = [\"hash:{d}/virtual\"]\n[deliver]\ntransport_maps = [\"hash:{d}/transport\"]\n"
        ),
    )
    .unwrap();
    let run = |address: &str| {
        let out = Command::new(harness::BIN)
            .args(["-c", config.to_str().unwrap(), "route", "explain", address])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run("info@example.org");
    assert!(text.contains("alice@example.org: maildir:"), "{text}");
    assert!(text.contains("example.org is a local domain"), "{text}");
    assert!(text.contains("ops@partner.example: relay:[10.0.0.9]:2525"), "{text}");
    assert!(text.contains("transport table"), "{text}");
    assert!(text.contains("tls="), "{text}");
    let text = run("anyone@staging.example.org");
    assert!(text.contains("team@example.org"), "catch-all applied: {text}");
    let text = run("someone@elsewhere.example");
    assert!(text.contains("someone@elsewhere.example: smtp:"), "{text}");
    assert!(text.contains("MX lookup"), "{text}");
}

#[test]
fn route_explain_shows_the_content_filter_where_delivery_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("posthorn.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"hub\"\nhostname = \"mx.example.org\"\nspool = \"{}/spool\"\n[access]\nlocal_domains = [\"example.org\"]\n[filter]\ncontent_filter = \"smtp:[127.0.0.1]:10025\"\nreinject_listen = \"127.0.0.1:10026\"\ndomains = [\"example.org\"]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let run = |address: &str| {
        let out = Command::new(harness::BIN)
            .args(["-c", config.to_str().unwrap(), "route", "explain", address])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let filter = "content filter: smtp:[127.0.0.1]:10025 (then reinjected on 127.0.0.1:10026, and routed as below)";
    let text = run("alice@example.org");
    let lines: Vec<&str> = text.lines().collect();
    let at = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix));
    assert!(lines.contains(&format!("alice@example.org: {filter}").as_str()), "{text}");
    let (step, hop) = (at("alice@example.org: content filter"), at("alice@example.org: maildir:"));
    assert!(step.is_some() && hop.is_some() && step < hop, "the filter step comes before the route: {text}");

    let text = run("someone@elsewhere.example");
    assert!(!text.contains("content filter: smtp:"), "not a filtered domain: {text}");
    assert!(
        text.contains("someone@elsewhere.example: content filter: none (elsewhere.example is not in filter.domains)"),
        "{text}"
    );
    assert!(text.contains("someone@elsewhere.example: smtp:"), "{text}");
}
