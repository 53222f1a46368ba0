//! The TLS configuration of warmline's HTTP clients that are built while calls and chats run
//! (the text agent's lanes, `crate::text::lanes`; an operator's HTTP tool, `crate::tools::http`):
//! its roots are read once.
//!
//! reqwest reads the roots again for every client it builds: webpki's list, and the system's
//! store (turned on in reqwest by `object_store`'s S3 client, so every reqwest client of this
//! build trusts both), some 150 files read and parsed, milliseconds of the async worker that
//! also relays every call's audio and streams every web chat answer. A client built with
//! [`client_config`] trusts the same roots without reading them.

use std::sync::{Arc, OnceLock};

/// The roots: webpki's list and the system's store, read on first use (the gateway reads them
/// at start, [`warm`]).
pub fn roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let native = rustls_native_certs::load_native_certs();
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            if !native.errors.is_empty() || ignored > 0 {
                tracing::debug!(
                    added,
                    ignored,
                    errors = native.errors.len(),
                    "tls: the system's roots, read in part"
                );
            }
            Arc::new(roots)
        })
        .clone()
}

/// Reads the roots now, off the async workers' path (at start).
pub fn warm() {
    let _ = roots();
}

/// A client's TLS on [`roots`], offering (ALPN) HTTP/2 then HTTP/1.1, or HTTP/1.1 only; for
/// `reqwest::ClientBuilder::use_preconfigured_tls` (reqwest then offers exactly these, so the
/// client's HTTP versions must match).
pub fn client_config(http1_only: bool) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("the TLS configuration: {e}"))?
        .with_root_certificates(roots())
        .with_no_client_auth();
    config.alpn_protocols = if http1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_roots_are_read_once_and_a_config_offers_the_protocols_asked_for() {
        let first = roots();
        assert!(Arc::ptr_eq(&first, &roots()), "read once");
        assert_eq!(
            client_config(false).unwrap().alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(
            client_config(true).unwrap().alpn_protocols,
            [b"http/1.1".to_vec()]
        );
    }
}
