//! The egress policy: which addresses a source may reach. Every URL a plan or a follow-up
//! request names is checked before the host connects, against `sources.allow` and
//! `sources.deny` (schemes such as `https:`, host names such as `api.example.com` or
//! `*.example.com`, addresses or networks such as `10.0.0.0/8`, each with an optional
//! `:port`). Deny wins. By default loopback, link-local (`169.254.0.0/16`, `fe80::/10`),
//! unspecified and unique-local IPv6 (`fc00::/7`) addresses, the known cloud metadata
//! addresses outside them (`100.100.100.200`), and this node's own API, are refused unless an
//! allow entry names them — also written in IPv6 as IPv4-mapped (`::ffff:127.0.0.1`),
//! IPv4-compatible (`::127.0.0.1`) or NAT64 (`64:ff9b::7f00:1`): a source must not read the
//! node itself, a cloud metadata service or another service on the host.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Schemes a source may use at all.
const SCHEMES: &[&str] = &["http", "https", "ws", "wss"];

/// The compiled policy of a node.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    /// Where this node's API listens (an unspecified address means every local one).
    own_api: Option<SocketAddr>,
    /// URLs refused so far.
    refused: Arc<AtomicU64>,
}

#[derive(Debug, Clone, PartialEq)]
enum Rule {
    Scheme(String),
    Host {
        name: String,
        port: Option<u16>,
    },
    Net {
        addr: IpAddr,
        prefix: u8,
        port: Option<u16>,
    },
}

/// A URL the policy refuses; the message says why and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("egress policy: {url} is refused: {why}")]
pub struct Refused {
    pub url: String,
    pub why: String,
}

impl Egress {
    /// The policy of `allow` and `deny` entries; an entry that cannot be read is an error
    /// naming it.
    pub fn new(
        allow: &[String],
        deny: &[String],
        own_api: Option<SocketAddr>,
    ) -> Result<Egress, String> {
        let parse = |list: &[String], name: &str| {
            list.iter()
                .map(|e| Rule::parse(e).map_err(|why| format!("sources.{name} entry `{e}`: {why}")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Egress {
            allow: parse(allow, "allow")?,
            deny: parse(deny, "deny")?,
            own_api,
            refused: Arc::default(),
        })
    }

    /// How many URLs were refused.
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    /// Check `url` (see [`Egress::decide`]), counting a refusal.
    pub async fn check(&self, url: &str) -> Result<(), Refused> {
        let decided = self.decide(url).await;
        if decided.is_err() {
            self.refused.fetch_add(1, Relaxed);
        }
        decided
    }

    /// The addresses `host` resolves to that sources may reach, for connecting to: what was
    /// checked is what is connected to, so a name that resolves elsewhere on a second lookup
    /// (DNS rebinding) cannot lead a source past the policy. `Err` when none is left.
    pub async fn resolve_allowed(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let refuse = |why: String| {
            self.refused.fetch_add(1, Relaxed);
            Refused {
                url: format!("{host}:{port}"),
                why,
            }
        };
        let found: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| refuse(format!("cannot resolve it: {e}")))?
                .collect(),
        };
        let name = Host::Name(host.clone());
        let allowed: Vec<SocketAddr> = found
            .iter()
            .copied()
            .filter(|addr| {
                let ips = [addr.ip()];
                let target = Target {
                    scheme: "",
                    host: &name,
                    ips: &ips,
                    port: addr.port(),
                };
                let by_rule = |rules: &[Rule]| {
                    rules
                        .iter()
                        .any(|r| !matches!(r, Rule::Scheme(_)) && r.matches(&target))
                };
                let own_api = self.own_api.is_some_and(|api| {
                    (addr.port() == 0 || addr.port() == api.port())
                        && is_own_api(api, addr.ip(), api.port())
                });
                !by_rule(&self.deny)
                    && (by_rule(&self.allow) || (!denied_by_default(addr.ip()) && !own_api))
            })
            .collect();
        if allowed.is_empty() {
            let shown: Vec<String> = found.iter().map(|a| a.ip().to_string()).collect();
            return Err(refuse(format!(
                "it resolves to [{}], none of which sources may reach",
                shown.join(", ")
            )));
        }
        Ok(allowed)
    }

    /// A resolver for the sources' HTTP client that returns only the addresses
    /// [`Egress::resolve_allowed`] keeps.
    pub fn resolver(&self) -> Arc<Egress> {
        Arc::new(self.clone())
    }

    /// Whether `url` may be reached, resolving its host to see where it really leads.
    async fn decide(&self, url: &str) -> Result<(), Refused> {
        let refuse = |why: String| Refused {
            url: url.to_owned(),
            why,
        };
        let parsed = url::Url::parse(url).map_err(|e| refuse(format!("not a URL ({e})")))?;
        let scheme = parsed.scheme().to_ascii_lowercase();
        if !SCHEMES.contains(&scheme.as_str()) {
            return Err(refuse(format!(
                "scheme `{scheme}` is not one a source may use"
            )));
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => Host::Name(d.to_ascii_lowercase()),
            Some(url::Host::Ipv4(ip)) => Host::Ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Host::Ip(IpAddr::V6(ip)),
            None => return Err(refuse("no host".into())),
        };
        let port = parsed
            .port_or_known_default()
            .unwrap_or(if scheme.ends_with('s') { 443 } else { 80 });
        let ips: Vec<IpAddr> = match &host {
            Host::Ip(ip) => vec![*ip],
            // A name that does not resolve cannot be reached either: the connection fails
            // with its own error.
            Host::Name(name) => tokio::net::lookup_host((name.as_str(), port))
                .await
                .map(|addrs| addrs.map(|a| a.ip()).collect())
                .unwrap_or_default(),
        };
        let target = Target {
            scheme: &scheme,
            host: &host,
            ips: &ips,
            port,
        };
        if let Some(rule) = self.deny.iter().find(|r| r.matches(&target)) {
            return Err(refuse(format!("sources.deny has `{}`", rule.text())));
        }
        let schemes: Vec<&Rule> = self
            .allow
            .iter()
            .filter(|r| matches!(r, Rule::Scheme(_)))
            .collect();
        if !schemes.is_empty() && !schemes.iter().any(|r| r.matches(&target)) {
            return Err(refuse(format!(
                "sources.allow names schemes, and not `{scheme}`"
            )));
        }
        let allowed_by = |named_port: bool| {
            self.allow.iter().any(|r| {
                !matches!(r, Rule::Scheme(_))
                    && (!named_port || r.port() == Some(port))
                    && r.matches(&target)
            })
        };
        // The node's own API only when an allow entry names its very port.
        if let Some(api) = self.own_api
            && ips.iter().any(|ip| is_own_api(api, *ip, port))
            && !allowed_by(true)
        {
            return Err(refuse(
                "it is this node's own API; a source may not read the node it runs on".into(),
            ));
        }
        if allowed_by(false) {
            return Ok(());
        }
        if let Some((ip, rule)) = ips
            .iter()
            .find_map(|ip| default_refusal(*ip).map(|rule| (ip, rule)))
        {
            return Err(refuse(format!(
                "{ip} is {rule}, which sources may not reach unless sources.allow names it \
                 (for example \"{ip}:{port}\")"
            )));
        }
        Ok(())
    }
}

enum Host {
    Name(String),
    Ip(IpAddr),
}

impl reqwest::dns::Resolve for Egress {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.clone();
        Box::pin(async move {
            // The port is not known here; the URL's was checked before the request.
            let addrs = egress.resolve_allowed(name.as_str(), 0).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

struct Target<'a> {
    scheme: &'a str,
    host: &'a Host,
    ips: &'a [IpAddr],
    port: u16,
}

fn denied_by_default(ip: IpAddr) -> bool {
    default_refusal(ip).is_some()
}

/// Cloud metadata services outside the ranges refused anyway (link-local `169.254.169.254`
/// serves AWS, GCP, Azure and most others; AWS's IPv6 `fd00:ec2::254` is unique-local).
const METADATA: &[(std::net::Ipv4Addr, &str)] =
    &[(std::net::Ipv4Addr::new(100, 100, 100, 200), "Alibaba Cloud")];

/// Why sources may not reach `ip` unless an allow entry names it: the rule, in words.
fn default_refusal(ip: IpAddr) -> Option<String> {
    let (plain, form) = unwrapped(ip);
    let rule = match plain {
        IpAddr::V4(v4) if v4.is_loopback() => "a loopback address".to_owned(),
        IpAddr::V4(v4) if v4.is_link_local() => {
            "a link-local address (cloud metadata services listen on 169.254.169.254)".to_owned()
        }
        IpAddr::V4(v4) if v4.is_unspecified() => "the unspecified address".to_owned(),
        IpAddr::V4(v4) => {
            let (_, cloud) = METADATA.iter().find(|(m, _)| *m == v4)?;
            format!("the cloud metadata address of {cloud}")
        }
        IpAddr::V6(v6) if v6.is_loopback() => "a loopback address".to_owned(),
        IpAddr::V6(v6) if v6.is_unspecified() => "the unspecified address".to_owned(),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => {
            "a link-local address (fe80::/10)".to_owned()
        }
        IpAddr::V6(v6) if (v6.segments()[0] & 0xfe00) == 0xfc00 => {
            "a unique-local IPv6 address (fc00::/7; AWS's metadata service is fd00:ec2::254)"
                .to_owned()
        }
        IpAddr::V6(_) => return None,
    };
    Some(match form {
        Some(form) => format!("{rule}, {plain} written as {form}"),
        None => rule,
    })
}

/// `ip` with an IPv4 address written in IPv6 taken out (`::ffff:a.b.c.d` mapped,
/// `::a.b.c.d` compatible, `64:ff9b::a.b.c.d` NAT64), and which form it was.
fn unwrapped(ip: IpAddr) -> (IpAddr, Option<&'static str>) {
    let IpAddr::V6(v6) = ip else {
        return (ip, None);
    };
    let s = v6.segments();
    let v4 = || {
        let o = v6.octets();
        IpAddr::V4(std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    };
    if let Some(mapped) = v6.to_ipv4_mapped() {
        (IpAddr::V4(mapped), Some("an IPv4-mapped IPv6 address"))
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        (v4(), Some("a NAT64 address (64:ff9b::/96)"))
    } else if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
        (v4(), Some("an IPv4-compatible IPv6 address"))
    } else {
        (ip, None)
    }
}

/// `::ffff:a.b.c.d`, `::a.b.c.d` and `64:ff9b::a.b.c.d` are `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    unwrapped(ip).0
}

fn is_own_api(api: SocketAddr, ip: IpAddr, port: u16) -> bool {
    if api.port() != port {
        return false;
    }
    let ip = canonical(ip);
    if api.ip().is_unspecified() {
        // Listening everywhere: any address of this host reaches it; loopback for sure.
        return ip.is_loopback() || ip.is_unspecified() || local_addresses().contains(&ip);
    }
    ip == canonical(api.ip()) || (api.ip().is_loopback() && ip.is_loopback())
}

/// This host's addresses, as far as the routing table shows them cheaply: the address used
/// to reach outward (no packet is sent).
fn local_addresses() -> Vec<IpAddr> {
    let probe = |bind: &str, to: &str| {
        std::net::UdpSocket::bind(bind)
            .and_then(|s| s.connect(to).map(|()| s))
            .and_then(|s| s.local_addr())
            .map(|a| a.ip())
            .ok()
    };
    [
        probe("0.0.0.0:0", "192.0.2.1:9"),
        probe("[::]:0", "[2001:db8::1]:9"),
    ]
    .into_iter()
    .flatten()
    .collect()
}

impl Rule {
    fn parse(text: &str) -> Result<Rule, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty".into());
        }
        if let Some(scheme) = text.strip_suffix(':')
            && !scheme.is_empty()
            && scheme.bytes().all(|b| b.is_ascii_alphabetic())
        {
            return Ok(Rule::Scheme(scheme.to_ascii_lowercase()));
        }
        // `[v6]:port`, `v4:port`, `name:port`, or without a port.
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or("an unclosed `[`")?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse::<u16>().map_err(|_| "a bad port")?),
                None if after.is_empty() => None,
                None => return Err("text after `]`".into()),
            };
            (inside, port)
        } else {
            match text.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => {
                    (h, Some(p.parse::<u16>().map_err(|_| "a bad port")?))
                }
                _ => (text, None),
            }
        };
        if let Some((addr, prefix)) = host.split_once('/') {
            let addr: IpAddr = addr.parse().map_err(|_| "not an address before `/`")?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or("a bad prefix length")?;
            return Ok(Rule::Net { addr, prefix, port });
        }
        if let Ok(addr) = host.parse::<IpAddr>() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(Rule::Net { addr, prefix, port });
        }
        let name = host.to_ascii_lowercase();
        let bare = name.strip_prefix("*.").unwrap_or(&name);
        if bare.is_empty()
            || !bare
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        {
            return Err("not a host name, address, network or scheme".into());
        }
        Ok(Rule::Host { name, port })
    }

    fn matches(&self, t: &Target<'_>) -> bool {
        // Port 0: not known (a resolver sees names only); the URL's port was checked before.
        let port_ok = |port: &Option<u16>| port.is_none_or(|p| t.port == 0 || p == t.port);
        match self {
            Rule::Scheme(s) => s == t.scheme,
            Rule::Host { name, port } => {
                let Host::Name(host) = t.host else {
                    return false;
                };
                let named = match name.strip_prefix("*.") {
                    Some(suffix) => host.ends_with(&format!(".{suffix}")),
                    None => host == name,
                };
                named && port_ok(port)
            }
            Rule::Net { addr, prefix, port } => {
                port_ok(port)
                    && !t.ips.is_empty()
                    && t.ips
                        .iter()
                        .all(|ip| in_net(canonical(*ip), canonical(*addr), *prefix))
            }
        }
    }

    fn port(&self) -> Option<u16> {
        match self {
            Rule::Scheme(_) => None,
            Rule::Host { port, .. } | Rule::Net { port, .. } => *port,
        }
    }

    fn text(&self) -> String {
        match self {
            Rule::Scheme(s) => format!("{s}:"),
            Rule::Host { name, port } => match port {
                Some(p) => format!("{name}:{p}"),
                None => name.clone(),
            },
            Rule::Net { addr, prefix, port } => {
                let net = format!("{addr}/{prefix}");
                match port {
                    Some(p) => format!("{net} port {p}"),
                    None => net,
                }
            }
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> Egress {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Egress::new(
            &list(allow),
            &list(deny),
            Some("127.0.0.1:7400".parse().unwrap()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn loopback_link_local_and_the_node_itself_are_refused_by_default() {
        let p = policy(&[], &[]);
        for url in [
            "http://127.0.0.1:9100/x",
            "ws://localhost:9100/ws",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:80/",
            "http://[fe80::1]/",
            "http://0.0.0.0:80/",
            "http://[::ffff:127.0.0.1]/",
            "http://127.0.0.1:7400/api/v1/sources",
        ] {
            let refused = p.check(url).await.unwrap_err();
            assert!(refused.to_string().contains("refused"), "{url}: {refused}");
        }
        // Each refusal names its rule, also for the IPv6 spellings of a refused IPv4 address.
        for (url, rule) in [
            ("http://[fd00:ec2::254]/latest/meta-data/", "unique-local"),
            ("http://[fc12::1]/", "unique-local"),
            ("http://100.100.100.200/latest/meta-data/", "Alibaba Cloud"),
            ("http://[64:ff9b::7f00:1]/", "NAT64"),
            ("http://[64:ff9b::a9fe:a9fe]/", "link-local"),
            ("http://[::127.0.0.1]/", "IPv4-compatible"),
            ("http://[::ffff:169.254.169.254]/", "IPv4-mapped"),
            ("http://169.254.169.254/", "metadata"),
        ] {
            let refused = p.check(url).await.unwrap_err();
            assert!(refused.why.contains(rule), "{url}: {refused}");
        }
        // A NAT64 address of a public one is public.
        assert!(p.check("http://[64:ff9b::5db8:d822]/").await.is_ok());
        assert!(p.check("http://[2001:db8::1]/").await.is_ok());
        assert!(p.check("http://10.1.2.3:80/x").await.is_ok());
        assert!(p.check("https://93.184.216.34/").await.is_ok());
        let bad = p.check("file:///etc/passwd").await.unwrap_err();
        assert!(bad.why.contains("scheme"), "{bad}");
    }

    #[tokio::test]
    async fn allow_lifts_a_default_deny_and_deny_wins() {
        let p = policy(
            &["127.0.0.1:9100", "10.0.0.0/8"],
            &["10.9.0.0/16", "evil.example"],
        );
        assert!(p.check("ws://127.0.0.1:9100/binance").await.is_ok());
        let other_port = p.check("ws://127.0.0.1:9200/binance").await.unwrap_err();
        assert!(other_port.why.contains("loopback"), "{other_port}");
        let own = p.check("http://127.0.0.1:7400/").await.unwrap_err();
        assert!(own.why.contains("own API"), "{own}");
        assert!(p.check("http://10.1.0.1/").await.is_ok());
        let denied = p.check("http://10.9.0.1/").await.unwrap_err();
        assert!(denied.why.contains("sources.deny"), "{denied}");
        assert!(p.check("http://evil.example/").await.is_err());
        let loopback = policy(&["127.0.0.0/8"], &[]);
        assert!(loopback.check("http://127.0.0.1:9999/").await.is_ok());
        let own = loopback.check("http://127.0.0.1:7400/").await.unwrap_err();
        assert!(own.why.contains("own API"), "{own}");
        let schemes = policy(&["https:", "wss:"], &[]);
        assert!(schemes.check("http://10.0.0.1/").await.is_err());
        assert!(schemes.check("https://10.0.0.1/").await.is_ok());
    }

    #[tokio::test]
    async fn names_are_pinned_to_the_addresses_that_pass() {
        // `localhost` resolves to loopback: refused at connection time too, whatever a later
        // lookup would say.
        let p = policy(&[], &[]);
        let refused = p.resolve_allowed("localhost", 9100).await.unwrap_err();
        assert!(refused.why.contains("none of which"), "{refused}");
        assert!(p.resolve_allowed("localhost", 0).await.is_err());
        let allowed = policy(&["127.0.0.1:9100"], &[]);
        let addrs = allowed.resolve_allowed("127.0.0.1", 9100).await.unwrap();
        assert_eq!(addrs, ["127.0.0.1:9100".parse::<SocketAddr>().unwrap()]);
        assert!(
            allowed.resolve_allowed("127.0.0.1", 7400).await.is_err(),
            "own API"
        );
        assert!(
            policy(&["localhost"], &[])
                .resolve_allowed("localhost", 9100)
                .await
                .is_ok()
        );
    }

    #[test]
    fn entries_parse_or_say_why() {
        for good in [
            "https:",
            "a.example",
            "*.example.com:443",
            "10.0.0.0/8",
            "[::1]:80",
            "fe80::/10",
            "1.2.3.4",
        ] {
            assert!(Rule::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "10.0.0.0/40", "a b", "[::1", "h:port"] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
        let err = Egress::new(&["a b".into()], &[], None).unwrap_err();
        assert!(err.contains("sources.allow entry `a b`"), "{err}");
    }
}
