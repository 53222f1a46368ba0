//! The text agent's connections to the model's API (README "Figures: web chat").
//!
//! Over HTTP/1.1 every answer being streamed holds a connection of its own, and each costs the
//! gateway some 30 KiB (hyper's buffers, its request queue, its task). Over HTTP/2 many answers
//! share one connection (measured: 63 KiB per open web chat stream down to 30, and less
//! CPU), but a connection carries only as many requests at once as the
//! server allows (`SETTINGS_MAX_CONCURRENT_STREAMS`), and hyper's client does not open another when
//! that is reached: the next request waits for one to end, which for a streamed answer can be a
//! minute. So requests are spread over lanes: a lane is an HTTP client (its own connection
//! pool, so over HTTP/2 its own connection) carrying at most [`LANE_REQUESTS`] requests at once,
//! the least RFC 9113 §6.5.2 recommends a server allow. When every lane is full a new one is
//! made; lanes are kept (an idle connection is closed by the pool).
//!
//! `text.http2` unset (the default): HTTP/2 is negotiated over `https://` (ALPN; a server that
//! offers only HTTP/1.1 is still served, a lane then opening a connection per request), and
//! HTTP/1.1 is spoken over `http://` (a local proxy may know no h2c). `true`: HTTP/2 also
//! without TLS (h2c) over `http://`. `false`: every lane speaks HTTP/1.1.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most requests one lane carries at once.
pub const LANE_REQUESTS: usize = 100;

/// One lane.
struct Lane {
    http: reqwest::Client,
    free: Arc<Semaphore>,
}

/// The lanes.
pub struct Lanes {
    lanes: Mutex<Vec<Lane>>,
    http2: Option<bool>,
    cleartext: bool,
    per_lane: usize,
}

/// A lane taken for one request: its client, and its place on it until dropped.
pub struct Leased {
    /// The lane's client.
    pub http: reqwest::Client,
    _place: OwnedSemaphorePermit,
}

impl Lanes {
    /// No lanes yet. `http2`: `text.http2`; `cleartext`: the API's URL is `http://`.
    pub fn new(http2: Option<bool>, cleartext: bool) -> Self {
        Self::with_per_lane(http2, cleartext, LANE_REQUESTS)
    }

    fn with_per_lane(http2: Option<bool>, cleartext: bool, per_lane: usize) -> Self {
        Self {
            lanes: Mutex::new(Vec::new()),
            http2,
            cleartext,
            per_lane: per_lane.max(1),
        }
    }

    /// A place on the first lane with room; a new lane when all are full.
    pub fn lease(&self) -> Result<Leased, String> {
        if let Some(leased) = self.free_place() {
            return Ok(leased);
        }
        // Made without the lock (building a client is not free, though its TLS roots are read
        // once, `crate::tls`): another request may have made a lane meanwhile, which is then
        // taken first and this one kept for later.
        let http = self.client()?;
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(leased) = Self::place_on(&lanes) {
            lanes.push(Lane {
                http,
                free: Arc::new(Semaphore::new(self.per_lane)),
            });
            return Ok(leased);
        }
        let free = Arc::new(Semaphore::new(self.per_lane));
        let place = free
            .clone()
            .try_acquire_owned()
            .map_err(|e| format!("a new lane refused its first request: {e}"))?;
        lanes.push(Lane {
            http: http.clone(),
            free,
        });
        if lanes.len() > 1 {
            tracing::info!(
                lanes = lanes.len(),
                "text: a new connection lane to the model's API"
            );
        }
        Ok(Leased {
            http,
            _place: place,
        })
    }

    fn free_place(&self) -> Option<Leased> {
        Self::place_on(&self.lanes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn place_on(lanes: &[Lane]) -> Option<Leased> {
        lanes.iter().find_map(|lane| {
            let place = lane.free.clone().try_acquire_owned().ok()?;
            Some(Leased {
                http: lane.http.clone(),
                _place: place,
            })
        })
    }

    fn client(&self) -> Result<reqwest::Client, String> {
        let http1_only = matches!(
            (self.http2, self.cleartext),
            (Some(false), _) | (None, true)
        );
        let mut b = reqwest::Client::builder()
            .use_preconfigured_tls(crate::tls::client_config(http1_only)?)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            // A connection the server dropped silently is found before a request is lost on it.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .http2_keep_alive_while_idle(true);
        b = match (http1_only, self.cleartext) {
            (true, _) => b.http1_only(),
            (false, true) => b.http2_prior_knowledge(),
            (false, false) => b,
        };
        b.build()
            .map_err(|e| format!("building an HTTP client: {e}"))
    }

    /// Lanes made so far.
    pub fn count(&self) -> usize {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_lane_opens_another_and_a_freed_place_is_taken_again() {
        let lanes = Lanes::with_per_lane(Some(true), true, 2);
        let a = lanes.lease().unwrap();
        let b = lanes.lease().unwrap();
        assert_eq!(lanes.count(), 1, "two requests fit on one lane");
        let c = lanes.lease().unwrap();
        assert_eq!(lanes.count(), 2, "the third opens a second lane");
        drop(a);
        let d = lanes.lease().unwrap();
        assert_eq!(
            lanes.count(),
            2,
            "a freed place on the first lane is taken again"
        );
        let e = lanes.lease().unwrap();
        assert_eq!(lanes.count(), 2, "the second lane still had room");
        let f = lanes.lease().unwrap();
        assert_eq!(lanes.count(), 3);
        drop((b, c, d, e, f));
    }

    #[test]
    fn a_lane_of_every_mode_builds_its_client_on_the_shared_tls_configuration() {
        // reqwest refuses a configuration of another rustls than its own: this would fail.
        for (http2, cleartext) in [
            (None, false),
            (None, true),
            (Some(true), false),
            (Some(true), true),
            (Some(false), false),
        ] {
            let lanes = Lanes::new(http2, cleartext);
            assert!(lanes.lease().is_ok(), "{http2:?} {cleartext}");
        }
    }
}
