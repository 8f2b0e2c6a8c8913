//! Who is calling, as far as the network tells.
use actix_web::HttpRequest;

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most
/// X-Forwarded-For entry that is not itself a trusted proxy. X-Forwarded-For from anyone else is
/// ignored, so clients cannot choose the address recorded for them.
pub fn client_ip(req: &HttpRequest, trusted: &[ipnet::IpNet]) -> Option<String> {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut client = req.peer_addr()?.ip();
    if !is_trusted(&client) {
        return Some(client.to_string());
    }
    let hops: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.trim().parse::<std::net::IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    Some(client.to_string())
}
