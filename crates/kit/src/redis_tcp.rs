//! Redis clients with `TCP_NODELAY`: redis-rs leaves Nagle's algorithm on by
//! default, and a command written in more than one segment then waits for
//! the server's delayed ACK (about 40 ms on Linux) — every round trip of a
//! consumer or a cache miss would pay it.

use redis::IntoConnectionInfo;
use redis::io::tcp::TcpSettings;

/// A client of `url` whose connections set `TCP_NODELAY`.
pub(crate) fn client(url: &str) -> redis::RedisResult<redis::Client> {
    let info = url.into_connection_info()?.set_tcp_settings(TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)
}
