//! Noticing that a client hung up while its request waits for inference. actix-web keeps running
//! a handler after the peer closes, so the handler peeks at the socket itself.

use std::any::Any;
use std::time::Duration;

use actix_web::dev::Extensions;

/// The raw socket of a connection, recorded when it is accepted.
#[derive(Clone, Copy, Debug)]
pub struct ClientSocket(#[allow(dead_code)] i32);

pub fn remember_socket(conn: &dyn Any, ext: &mut Extensions) {
    #[cfg(unix)]
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        use std::os::fd::AsRawFd;
        ext.insert(ClientSocket(tcp.as_raw_fd()));
    }
    #[cfg(not(unix))]
    let _ = (conn, ext);
}

/// Whether the peer has closed its side: a non-blocking peek that reads end-of-stream.
#[cfg(unix)]
fn peer_closed(s: ClientSocket) -> bool {
    let mut byte = 0u8;
    // SAFETY: peeks at most one byte into a valid buffer; the descriptor stays open while
    // actix serves this request, and MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            s.0,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
}

#[cfg(not(unix))]
fn peer_closed(_: ClientSocket) -> bool {
    false
}

/// Resolves when the client's connection closes (never, when it cannot be watched).
pub async fn closed(client: Option<ClientSocket>) {
    match client {
        Some(s) => loop {
            if peer_closed(s) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        },
        None => std::future::pending::<()>().await,
    }
}
