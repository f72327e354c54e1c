//! Who a visitor is without keeping who they are: the client's address as far as it can be
//! believed, and the hashes that stand for visitors in the log.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use sha2::{Digest, Sha256};

/// The client address: the socket peer, or, when the peer is a trusted proxy, the nearest
/// hop of `X-Forwarded-For` that is not itself trusted (hops further left can be forged).
pub fn client_ip(
    trusted: &[IpNet],
    peer: Option<SocketAddr>,
    forwarded: Option<&str>,
) -> Option<IpAddr> {
    let peer = peer.map(|p| p.ip());
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    match (peer, forwarded) {
        (Some(ip), Some(xff)) if is_trusted(&ip) => {
            let hops: Vec<IpAddr> = xff
                .split(',')
                .filter_map(|h| h.trim().parse().ok())
                .collect();
            hops.iter()
                .rev()
                .find(|h| !is_trusted(h))
                .or(hops.first())
                .copied()
                .or(Some(ip))
        }
        (ip, _) => ip,
    }
}

/// The visitor of a tracker-supplied `visitor_id`; the erase endpoint finds visitors by it.
pub fn visitor_id_hash(site: &str, visitor_id: &str) -> u64 {
    hash64(&[b"visitor-id", site.as_bytes(), visitor_id.as_bytes()])
}

pub fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let digest = h.finalize();
    u64::from_le_bytes(digest[..8].try_into().unwrap_or([0; 8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 4000))
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = Some("198.51.100.7, 203.0.113.9, 10.0.0.2");
        // From the load balancer: the nearest untrusted hop, not the forgeable leftmost one.
        assert_eq!(
            client_ip(&trusted, peer("10.0.0.1"), xff),
            Some("203.0.113.9".parse().unwrap())
        );
        // From anyone else the header is ignored.
        assert_eq!(
            client_ip(&trusted, peer("192.0.2.1"), xff),
            Some("192.0.2.1".parse().unwrap())
        );
        // A trusted peer without the header is the client.
        assert_eq!(
            client_ip(&trusted, peer("10.0.0.1"), None),
            Some("10.0.0.1".parse().unwrap())
        );
        // Garbage hops are skipped.
        assert_eq!(
            client_ip(&trusted, peer("10.0.0.1"), Some("nonsense")),
            Some("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn visitor_hash_separates_sites_and_fields() {
        assert_ne!(
            hash64(&[b"ab", b"c"]),
            hash64(&[b"a", b"bc"]),
            "length-prefixed parts"
        );
        assert_ne!(
            hash64(&[b"salt", b"site1", b"ip"]),
            hash64(&[b"salt", b"site2", b"ip"])
        );
    }
}
