//! Abuse limits of the API: rate limits per client address and per user on the routes that
//! cost something (login, sign-up, verification resend, uploads, room creation, history), and
//! the login lockout keyed by (client address, account).
//!
//! Rate limits are `governor`'s GCRA, one keyed limiter per route family and key kind,
//! configured in `[web.limits]` ([`LimitsSection`]). A refusal is 429 `rate_limited` with
//! `Retry-After` (whole seconds, at least 1), raised as a rejection from the filters
//! [`address`] and [`user`] that the route modules put right after their method filter.
//!
//! **The client address** is the TCP peer's (the accept loop puts it in the request as a
//! [`Peer`]). `X-Forwarded-For` is trusted only when the peer is one of
//! `web.limits.trusted_proxies`: anyone can write that header, so trusting it from any peer
//! would let a client pick its own key. IPv6 addresses count by their /64 (one host usually
//! holds a whole /64).
//!
//! **Bounded memory.** Each keyed limiter holds at most `keys_max` keys: a pruning task drops
//! keys whose state is back to fresh (`retain_recent`) every [`PRUNE_INTERVAL`]; a limiter
//! found full prunes at once and, still full, refuses (429, `Retry-After: 1`) until keys age
//! out, rather than grow. The login guard holds at most `keys_max` (address, account) entries;
//! when full it forgets the stalest.
//!
//! **The login lockout cannot be aimed at a victim**: failures count per (address, account),
//! so an attacker's failures slow the attacker's own address only. After
//! `login_failures_free` failures, each further attempt from that address for that account
//! waits 2^k seconds after the previous failure (k = 1, 2, ...; capped at
//! `login_delay_max_s`); a success from that address clears its count, and an address silent
//! for twice the cap starts afresh. The count is per node (a guesser spreading over the nodes
//! gets each node's allowance); the account entity's own window (`users.login_failures_max`,
//! cluster-wide) is the backstop against many addresses.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use warp::Filter;
use warp::http::HeaderMap;

use crate::auth::Claims;
use crate::error::ApiError;

/// How often idle keys are dropped from the limiters and the login guard.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// The TCP peer of a request, put in its extensions by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// A number of requests per period: bursts of `count`, refilled evenly over `per_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub count: u32,
    pub per_s: u64,
}

impl Rate {
    const fn new(count: u32, per_s: u64) -> Self {
        Self { count, per_s }
    }

    fn quota(self) -> Option<Quota> {
        let count = NonZeroU32::new(self.count)?;
        let period = Duration::from_secs(self.per_s) / self.count;
        Some(Quota::with_period(period)?.allow_burst(count))
    }
}

/// `[web.limits]`: the abuse limits. Every node should use the same values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// `POST /api/users/login` per client address.
    pub login_per_address: Rate,
    /// `POST /api/users/signup` per client address (each sends a mail).
    pub signup_per_address: Rate,
    /// `POST /api/users/resend-verification` per client address (each may send a mail).
    pub resend_per_address: Rate,
    /// Uploads (`POST /api/jobs`, `PUT /api/users/me/photo`) per client address and per user.
    pub upload_per_address: Rate,
    pub upload_per_user: Rate,
    /// `POST /api/rooms` per client address and per user.
    pub room_create_per_address: Rate,
    pub room_create_per_user: Rate,
    /// `GET /api/rooms/{id}/messages` per client address and per user.
    pub history_per_address: Rate,
    pub history_per_user: Rate,
    /// Failed logins from one address for one account before each attempt must wait.
    pub login_failures_free: u32,
    /// The longest wait between two attempts from one address for one account.
    pub login_delay_max_s: u64,
    /// Keys held per limiter (and entries of the login guard); see the module's notes.
    pub keys_max: usize,
    /// Reverse proxies whose `X-Forwarded-For` names the client. Empty: the peer is the client.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            login_per_address: Rate::new(10, 60),
            signup_per_address: Rate::new(20, 600),
            resend_per_address: Rate::new(5, 600),
            upload_per_address: Rate::new(60, 60),
            upload_per_user: Rate::new(20, 60),
            room_create_per_address: Rate::new(20, 600),
            room_create_per_user: Rate::new(10, 600),
            history_per_address: Rate::new(600, 60),
            history_per_user: Rate::new(300, 60),
            login_failures_free: 5,
            login_delay_max_s: 15 * 60,
            keys_max: 100_000,
            trusted_proxies: Vec::new(),
        }
    }
}

impl LimitsSection {
    /// Checks what the types alone cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        for (key, rate) in self.rates() {
            if rate.count == 0 || rate.per_s == 0 || rate.per_s > 86_400 {
                return Err(format!(
                    "`web.limits.{key}`: `count` above 0 and `per_s` from 1 to 86400"
                ));
            }
        }
        if !(1..=86_400).contains(&self.login_delay_max_s) {
            return Err("`web.limits.login_delay_max_s`: 1 to 86400".into());
        }
        if !(16..=10_000_000).contains(&self.keys_max) {
            return Err("`web.limits.keys_max`: 16 to 10000000".into());
        }
        Ok(())
    }

    fn rates(&self) -> [(&'static str, Rate); 9] {
        [
            ("login_per_address", self.login_per_address),
            ("signup_per_address", self.signup_per_address),
            ("resend_per_address", self.resend_per_address),
            ("upload_per_address", self.upload_per_address),
            ("upload_per_user", self.upload_per_user),
            ("room_create_per_address", self.room_create_per_address),
            ("room_create_per_user", self.room_create_per_user),
            ("history_per_address", self.history_per_address),
            ("history_per_user", self.history_per_user),
        ]
    }
}

/// The route families with limits of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Login,
    SignUp,
    Resend,
    /// Job submissions and profile photos.
    Upload,
    RoomCreate,
    History,
}

impl Scope {
    fn what(self) -> &'static str {
        match self {
            Self::Login => "login attempts",
            Self::SignUp => "sign-ups",
            Self::Resend => "verification mails",
            Self::Upload => "uploads",
            Self::RoomCreate => "new rooms",
            Self::History => "history requests",
        }
    }
}

/// One keyed limiter, bounded to `keys_max` keys.
struct Limiter<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    keys_max: usize,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    fn new(rate: Rate, keys_max: usize) -> Self {
        // `validate` refuses rates without a quota; this fallback is never used by a node.
        let quota = rate
            .quota()
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
        Self {
            limiter: RateLimiter::keyed(quota),
            keys_max,
        }
    }

    /// `Err(wait)` when `key` is over its rate (or the limiter is full).
    fn check(&self, key: &K) -> Result<(), Duration> {
        if self.limiter.len() >= self.keys_max {
            self.limiter.retain_recent();
            if self.limiter.len() >= self.keys_max {
                return Err(Duration::from_secs(1));
            }
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The limits of one family: by address and, for authenticated routes, by user.
struct Family {
    by_address: Limiter<IpAddr>,
    by_user: Option<Limiter<String>>,
}

impl Family {
    fn new(by_address: Rate, by_user: Option<Rate>, keys_max: usize) -> Self {
        Self {
            by_address: Limiter::new(by_address, keys_max),
            by_user: by_user.map(|rate| Limiter::new(rate, keys_max)),
        }
    }
}

/// A node's abuse limits. Shared by every route (`AppState::limits`).
pub struct Limits {
    login: Family,
    signup: Family,
    resend: Family,
    upload: Family,
    room_create: Family,
    history: Family,
    guard: LoginGuard,
    trusted_proxies: Vec<IpAddr>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Limits")
    }
}

impl Limits {
    pub fn new(section: &LimitsSection) -> Self {
        let keys = section.keys_max;
        Self {
            login: Family::new(section.login_per_address, None, keys),
            signup: Family::new(section.signup_per_address, None, keys),
            resend: Family::new(section.resend_per_address, None, keys),
            upload: Family::new(
                section.upload_per_address,
                Some(section.upload_per_user),
                keys,
            ),
            room_create: Family::new(
                section.room_create_per_address,
                Some(section.room_create_per_user),
                keys,
            ),
            history: Family::new(
                section.history_per_address,
                Some(section.history_per_user),
                keys,
            ),
            guard: LoginGuard::new(
                section.login_failures_free,
                Duration::from_secs(section.login_delay_max_s),
                keys,
            ),
            trusted_proxies: section.trusted_proxies.clone(),
        }
    }

    /// The limits, with a task pruning them every [`PRUNE_INTERVAL`] when called inside a
    /// tokio runtime (the task ends when the limits are dropped).
    pub fn shared(section: &LimitsSection) -> Arc<Self> {
        let limits = Arc::new(Self::new(section));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let weak: Weak<Self> = Arc::downgrade(&limits);
            handle.spawn(async move {
                let mut ticks = tokio::time::interval(PRUNE_INTERVAL);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    let Some(limits) = weak.upgrade() else { break };
                    limits.prune();
                }
            });
        }
        limits
    }

    fn family(&self, scope: Scope) -> &Family {
        match scope {
            Scope::Login => &self.login,
            Scope::SignUp => &self.signup,
            Scope::Resend => &self.resend,
            Scope::Upload => &self.upload,
            Scope::RoomCreate => &self.room_create,
            Scope::History => &self.history,
        }
    }

    /// Drops idle keys everywhere.
    pub fn prune(&self) {
        for family in [
            &self.login,
            &self.signup,
            &self.resend,
            &self.upload,
            &self.room_create,
            &self.history,
        ] {
            family.by_address.prune();
            if let Some(by_user) = &family.by_user {
                by_user.prune();
            }
        }
        self.guard.prune(Instant::now());
    }

    /// Checks `scope`'s rate for the client address.
    pub fn check_address(&self, scope: Scope, client: IpAddr) -> Result<(), ApiError> {
        self.family(scope)
            .by_address
            .check(&address_key(client))
            .map_err(|wait| refusal(scope, "from your address", wait))
    }

    /// Checks `scope`'s rate for the user (a family without a per-user rate passes).
    pub fn check_user(&self, scope: Scope, user: &str) -> Result<(), ApiError> {
        match &self.family(scope).by_user {
            Some(limiter) => limiter
                .check(&user.to_string())
                .map_err(|wait| refusal(scope, "for your account", wait)),
            None => Ok(()),
        }
    }

    /// The login lockout (see the module's notes).
    pub fn login_guard(&self) -> &LoginGuard {
        &self.guard
    }

    /// The client of a request whose TCP peer is `peer` (see the module's notes on proxies).
    pub fn client_of(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> IpAddr {
        let Some(peer) = peer.map(|peer| peer.ip()) else {
            // Only a transport without addresses (never the node's listener): one shared key.
            return IpAddr::from([0, 0, 0, 0]);
        };
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        // The proxy appends the address it saw: read from the right, skipping our proxies.
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        forwarded
            .into_iter()
            .rev()
            .find(|address| !self.trusted_proxies.contains(address))
            .unwrap_or(peer)
    }
}

/// The key of a client address: IPv6 by its /64.
fn address_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(segments))
            }
        },
    }
}

/// Whole seconds to wait, at least 1.
pub fn retry_after_s(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

fn refusal(scope: Scope, whom: &str, wait: Duration) -> ApiError {
    let seconds = retry_after_s(wait);
    ApiError::rate_limited(
        format!("too many {} {whom}; try again in {seconds} s", scope.what()),
        seconds,
    )
}

/// The client address of a request.
pub fn client(
    limits: &Arc<Limits>,
) -> impl Filter<Extract = (IpAddr,), Error = std::convert::Infallible> + Clone + use<> {
    let limits = limits.clone();
    warp::ext::optional::<Peer>()
        .and(warp::addr::remote())
        .and(warp::header::headers_cloned())
        .map(
            move |peer: Option<Peer>, remote: Option<SocketAddr>, headers: HeaderMap| {
                limits.client_of(peer.map(|peer| peer.0).or(remote), &headers)
            },
        )
}

/// Refuses the request with 429 when its client address is over `scope`'s rate.
pub fn address(
    limits: &Arc<Limits>,
    scope: Scope,
) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone + use<> {
    let checker = limits.clone();
    client(limits)
        .and_then(move |client: IpAddr| {
            let result = checker
                .check_address(scope, client)
                .map_err(warp::reject::custom);
            async move { result }
        })
        .untuple_one()
}

/// `auth` behind `scope`'s rates: the client address first (before the token is checked), then
/// the user the token names.
pub fn user<F>(
    limits: &Arc<Limits>,
    scope: Scope,
    auth: F,
) -> impl Filter<Extract = (Claims,), Error = warp::Rejection> + Clone + use<F>
where
    F: Filter<Extract = (Claims,), Error = warp::Rejection> + Clone + Send + Sync,
{
    let checker = limits.clone();
    address(limits, scope)
        .and(auth)
        .and_then(move |claims: Claims| {
            let result = checker
                .check_user(scope, &claims.sub)
                .map(|()| claims)
                .map_err(warp::reject::custom);
            async move { result }
        })
}

/// Failed logins per (client address, account), bounded.
pub struct LoginGuard {
    entries: Mutex<HashMap<(IpAddr, [u8; 32]), Failures>>,
    free: u32,
    delay_max: Duration,
    entries_max: usize,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    /// Attempts counted (an attempt counts when it starts; see [`LoginGuard::begin`]).
    count: u32,
    last: Instant,
}

/// An attempt let through by [`LoginGuard::begin`]; end it with one of the guard's methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginTicket {
    key: (IpAddr, [u8; 32]),
}

impl LoginGuard {
    fn new(free: u32, delay_max: Duration, entries_max: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            free,
            delay_max,
            entries_max,
        }
    }

    /// An entry silent this long is forgotten.
    fn forget_after(&self) -> Duration {
        self.delay_max.saturating_mul(2)
    }

    /// The wait after the `count`-th failure before the next attempt.
    fn delay(&self, count: u32) -> Duration {
        if count < self.free {
            return Duration::ZERO;
        }
        let exponent = (count - self.free + 1).min(40);
        Duration::from_secs(1u64 << exponent).min(self.delay_max)
    }

    /// Lets an attempt of `client` at `account` (normalised by the caller) through, counting it
    /// as a failure until it ends otherwise, so that attempts sent in parallel count at once;
    /// `Err(wait)` while the address must wait.
    pub fn begin(
        &self,
        client: IpAddr,
        account: &str,
        now: Instant,
    ) -> Result<LoginTicket, Duration> {
        let key = (
            address_key(client),
            Sha256::digest(account.as_bytes()).into(),
        );
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let forget_after = self.forget_after();
        if let Some(failures) = entries.get(&key) {
            if now.saturating_duration_since(failures.last) >= forget_after {
                entries.remove(&key);
            } else {
                let ready = failures.last + self.delay(failures.count);
                if now < ready {
                    return Err(ready - now);
                }
            }
        }
        if !entries.contains_key(&key) && entries.len() >= self.entries_max {
            entries
                .retain(|_, failures| now.saturating_duration_since(failures.last) < forget_after);
            if entries.len() >= self.entries_max
                && let Some(stalest) = entries
                    .iter()
                    .min_by_key(|(_, failures)| failures.last)
                    .map(|(key, _)| *key)
            {
                entries.remove(&stalest);
            }
        }
        let failures = entries.entry(key).or_insert(Failures {
            count: 0,
            last: now,
        });
        failures.count = failures.count.saturating_add(1);
        failures.last = now;
        Ok(LoginTicket { key })
    }

    /// The password was right: the address starts afresh for this account.
    pub fn succeeded(&self, ticket: LoginTicket) {
        self.lock().remove(&ticket.key);
    }

    /// The attempt was no guess (invalid input, a busy node): it does not count.
    pub fn not_counted(&self, ticket: LoginTicket) {
        let mut entries = self.lock();
        if let Some(failures) = entries.get_mut(&ticket.key) {
            failures.count = failures.count.saturating_sub(1);
            if failures.count == 0 {
                entries.remove(&ticket.key);
            }
        }
    }

    fn prune(&self, now: Instant) {
        let forget_after = self.forget_after();
        let mut entries = self.lock();
        entries.retain(|_, failures| now.saturating_duration_since(failures.last) < forget_after);
        entries.shrink_to_fit();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(IpAddr, [u8; 32]), Failures>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn a_rate_refuses_beyond_its_burst_and_says_how_long() {
        let limiter = Limiter::<IpAddr>::new(Rate::new(2, 10), 100);
        let client = ip("127.0.0.2");
        assert!(limiter.check(&client).is_ok());
        assert!(limiter.check(&client).is_ok());
        let wait = limiter.check(&client).expect_err("over the burst");
        // One request comes back every 5 s.
        assert!(
            wait <= Duration::from_secs(5) && wait > Duration::from_secs(4),
            "{wait:?}"
        );
        assert_eq!(retry_after_s(wait), 5);
        assert!(
            limiter.check(&ip("127.0.0.3")).is_ok(),
            "other keys unaffected"
        );
        assert_eq!(retry_after_s(Duration::from_millis(1)), 1);
    }

    #[test]
    fn a_full_limiter_refuses_instead_of_growing() {
        let limiter = Limiter::<u32>::new(Rate::new(1, 3600), 16);
        for key in 0..16 {
            assert!(limiter.check(&key).is_ok());
        }
        assert_eq!(limiter.check(&99), Err(Duration::from_secs(1)));
        assert_eq!(limiter.limiter.len(), 16);
    }

    #[test]
    fn ipv6_counts_by_its_64() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            address_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(address_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_for_only_from_a_trusted_proxy() {
        let section = LimitsSection {
            trusted_proxies: vec![ip("10.0.0.9")],
            ..LimitsSection::default()
        };
        let limits = Limits::new(&section);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "1.1.1.1, 203.0.113.7, 10.0.0.9".parse().expect("header"),
        );
        let proxy = SocketAddr::new(ip("10.0.0.9"), 1);
        let stranger = SocketAddr::new(ip("198.51.100.1"), 1);
        assert_eq!(limits.client_of(Some(proxy), &headers), ip("203.0.113.7"));
        assert_eq!(
            limits.client_of(Some(stranger), &headers),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn login_delays_grow_per_address_and_account_only() {
        let guard = LoginGuard::new(3, Duration::from_secs(60), 1000);
        let start = Instant::now();
        let attacker = ip("127.0.0.2");
        let victim = ip("127.0.0.3");
        for _ in 0..3 {
            guard
                .begin(attacker, "bob@example.com", start)
                .expect("free failures");
        }
        let wait = guard
            .begin(attacker, "bob@example.com", start)
            .expect_err("waits after the free failures");
        assert_eq!(wait, Duration::from_secs(2));
        // The owner elsewhere, and the attacker's other accounts, are untouched.
        let ticket = guard
            .begin(victim, "bob@example.com", start)
            .expect("owner");
        guard.succeeded(ticket);
        guard
            .begin(attacker, "carol@example.com", start)
            .expect("another account");
        // 2 s later one more attempt; after it 4 s, then 8 s..., capped at 60 s.
        let later = start + Duration::from_secs(2);
        guard
            .begin(attacker, "bob@example.com", later)
            .expect("after the wait");
        assert_eq!(
            guard.begin(attacker, "bob@example.com", later),
            Err(Duration::from_secs(4))
        );
        assert_eq!(guard.delay(20), Duration::from_secs(60));
        // Silent for twice the cap: forgotten.
        let much_later = start + Duration::from_secs(200);
        guard.prune(much_later);
        assert_eq!(guard.len(), 0);
    }

    #[test]
    fn uncounted_and_successful_attempts_do_not_lock() {
        let guard = LoginGuard::new(1, Duration::from_secs(60), 1000);
        let now = Instant::now();
        let client = ip("127.0.0.2");
        let ticket = guard.begin(client, "a@example.com", now).expect("first");
        guard.not_counted(ticket);
        let ticket = guard
            .begin(client, "a@example.com", now)
            .expect("not counted");
        guard.succeeded(ticket);
        guard.begin(client, "a@example.com", now).expect("cleared");
    }

    #[test]
    fn the_guard_stays_bounded() {
        let guard = LoginGuard::new(1, Duration::from_secs(60), 16);
        let now = Instant::now();
        for account in 0..100 {
            guard
                .begin(ip("127.0.0.2"), &format!("user{account}@example.com"), now)
                .expect("new account");
        }
        assert_eq!(guard.len(), 16);
    }

    #[test]
    fn defaults_are_valid_and_errors_name_the_key() {
        LimitsSection::default().validate().expect("defaults");
        let section = LimitsSection {
            upload_per_user: Rate::new(0, 60),
            ..LimitsSection::default()
        };
        let error = section.validate().expect_err("zero");
        assert!(error.contains("web.limits.upload_per_user"), "{error}");
    }
}
