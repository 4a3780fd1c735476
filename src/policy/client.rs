//! The connections to the policy services: one request at a time on each,
//! kept open between requests, a deadline on every exchange.
//!
//! A session takes an idle connection from the service's pool (or opens
//! one), asks, and puts it back; so twenty sessions asking at once hold
//! twenty connections, and none waits for another's answer. A connection
//! that sat idle longer than `policy.max_idle` is closed rather than
//! reused (services drop idle clients too; postgrey after a while,
//! policyd-spf when its process exits). A request on a reused connection
//! that fails is tried once more on a new one, since the service may have
//! closed it in the meantime.

use super::action::{Action, Tally, Verdict};
use super::{Query, Stage, parse_response};
use crate::config::{PolicyConfig, PolicyTarget};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufStream};

/// The most a response may hold; a service sending more is broken.
const MAX_RESPONSE: usize = 64 * 1024;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Connection = BufStream<Box<dyn Io>>;

/// Every configured service with its idle connections.
pub(crate) struct Services {
    services: Vec<Service>,
    timeout: Duration,
    max_idle: Duration,
    default_action: String,
}

struct Service {
    target: PolicyTarget,
    idle: Mutex<Vec<(Connection, Instant)>>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.services.iter().map(|s| s.target.to_string()).collect();
        f.debug_struct("Services").field("services", &names).finish()
    }
}

impl Services {
    pub(crate) fn new(config: &PolicyConfig) -> Services {
        Services {
            services: config
                .services
                .iter()
                .map(|target| Service { target: target.clone(), idle: Mutex::new(Vec::new()) })
                .collect(),
            timeout: config.timeout,
            max_idle: config.max_idle,
            default_action: config.default_action.clone(),
        }
    }

    /// Asks every service in turn about `query` (at `query.stage`), as a
    /// Postfix restriction list of `check_policy_service` entries would.
    /// `subject` is the address a refusal names. A service that cannot be
    /// reached or does not answer in time counts as having answered
    /// `policy.default_action`.
    pub(crate) async fn decide(&self, query: &Query, subject: &str) -> Verdict {
        let stage = query.stage.unwrap_or(Stage::Rcpt);
        let mut tally = Tally::new(stage, subject);
        let request = query.encode();
        for service in &self.services {
            let action = match self.ask(service, &request).await {
                Ok(action) => action,
                Err(why) => {
                    tracing::warn!(
                        "policy service {}: {why}; using default action `{}`",
                        service.target,
                        self.default_action
                    );
                    self.default_action.clone()
                }
            };
            if let Some(verdict) = tally.take(Action::parse(&action)) {
                return verdict;
            }
        }
        tally.finish()
    }

    /// One request and its `action=`, within `policy.timeout` in all.
    async fn ask(&self, service: &Service, request: &[u8]) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let exchange = async {
            if let Some(mut conn) = self.idle_connection(service)
                && let Ok(action) = exchange(&mut conn, request).await
            {
                service.idle.lock().unwrap().push((conn, Instant::now()));
                return Ok(action);
            }
            let mut conn = connect(&service.target).await?;
            let action = exchange(&mut conn, request).await?;
            service.idle.lock().unwrap().push((conn, Instant::now()));
            Ok(action)
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// The most recently used idle connection young enough to reuse; older
    /// ones are closed.
    fn idle_connection(&self, service: &Service) -> Option<Connection> {
        let mut idle = service.idle.lock().unwrap();
        let now = Instant::now();
        idle.retain(|(_, since)| now.duration_since(*since) < self.max_idle);
        idle.pop().map(|(conn, _)| conn)
    }
}

async fn connect(target: &PolicyTarget) -> Result<Connection, String> {
    let io: Box<dyn Io> = match target {
        PolicyTarget::Inet(addr) => {
            let stream = tokio::net::TcpStream::connect(addr.as_str())
                .await
                .map_err(|e| format!("cannot connect: {}", crate::message::outcome::strerror(&e)))?;
            let _ = stream.set_nodelay(true);
            Box::new(stream)
        }
        PolicyTarget::Unix(path) => Box::new(
            tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| format!("cannot connect: {}", crate::message::outcome::strerror(&e)))?,
        ),
    };
    Ok(BufStream::new(io))
}

/// Writes the request and reads the response up to its empty line.
async fn exchange(conn: &mut Connection, request: &[u8]) -> Result<String, String> {
    let io = |e: std::io::Error| crate::message::outcome::strerror(&e);
    conn.write_all(request).await.map_err(io)?;
    conn.flush().await.map_err(io)?;
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = conn.read_line(&mut line).await.map_err(io)?;
        if n == 0 {
            return Err("the service closed the connection".into());
        }
        total += n;
        if total > MAX_RESPONSE {
            return Err(format!("response longer than {MAX_RESPONSE} bytes"));
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            break;
        }
        lines.push(line.to_string());
    }
    parse_response(&lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    fn services(addr: &str, timeout: Duration) -> Services {
        Services::new(&PolicyConfig {
            services: vec![PolicyTarget::Inet(addr.to_string())],
            stages: vec![Stage::Rcpt],
            timeout,
            max_idle: Duration::from_secs(300),
            default_action: "451 4.3.5 Server configuration problem".into(),
        })
    }

    fn query() -> Query {
        Query { stage: Some(Stage::Rcpt), recipient: "b@example.org".into(), ..Query::default() }
    }

    /// A service answering `actions` in turn on one connection, counting
    /// the connections it accepted.
    async fn serve(actions: Vec<&'static str>) -> (String, tokio::task::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let mut accepted = 0;
            let total = actions.len();
            let mut actions = actions.into_iter();
            let mut answered = 0;
            while answered < total {
                let Ok((stream, _)) = listener.accept().await else { break };
                accepted += 1;
                let mut stream = BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        break;
                    }
                    if line == "\n" {
                        let Some(a) = actions.next() else { return accepted };
                        answered += 1;
                        stream.get_mut().write_all(format!("action={a}\n\n").as_bytes()).await.unwrap();
                    }
                }
            }
            accepted
        });
        (addr, task)
    }

    #[tokio::test]
    async fn connection_is_reused() {
        let (addr, task) = serve(vec!["DUNNO", "REJECT no", "OK"]).await;
        let s = services(&addr, Duration::from_secs(5));
        assert_eq!(s.decide(&query(), "b@example.org").await, Verdict::Accept { prepend: vec![] });
        let Verdict::Refuse(r) = s.decide(&query(), "b@example.org").await else { panic!() };
        assert_eq!(r.to_string(), "554 5.7.1 <b@example.org>: Recipient address rejected: no");
        assert_eq!(s.decide(&query(), "b@example.org").await, Verdict::Accept { prepend: vec![] });
        drop(s);
        let accepted = tokio::time::timeout(Duration::from_secs(10), task).await.expect("the service ends").unwrap();
        assert_eq!(accepted, 1, "one connection for three requests");
    }

    #[tokio::test]
    async fn silent_or_absent_service_gets_the_default_action() {
        // Accepts and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let s = services(&addr, Duration::from_millis(300));
        let started = Instant::now();
        let Verdict::Refuse(r) = s.decide(&query(), "b@example.org").await else { panic!() };
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(
            r.to_string(),
            "451 4.3.5 <b@example.org>: Recipient address rejected: Server configuration problem"
        );
        drop(listener);
        let Verdict::Refuse(r) = s.decide(&query(), "b@example.org").await else { panic!() };
        assert_eq!(r.code, 451);
    }
}
