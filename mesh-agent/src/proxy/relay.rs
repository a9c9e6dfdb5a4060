//! Copying bytes between two TCP streams with half-close and reset propagation.
use std::time::Duration;

use tokio::net::TcpStream;

/// Bytes moved (a→b, b→a), and whether it ended in an error (then both sides were reset).
pub struct RelayResult {
    pub a_to_b: u64,
    pub b_to_a: u64,
    pub error: Option<std::io::Error>,
}

pub async fn relay(mut a: TcpStream, mut b: TcpStream) -> RelayResult {
    match tokio::io::copy_bidirectional(&mut a, &mut b).await {
        Ok((a_to_b, b_to_a)) => RelayResult {
            a_to_b,
            b_to_a,
            error: None,
        },
        Err(e) => {
            // One side reset (or failed): reset the other too instead of a graceful close.
            reset(&a);
            reset(&b);
            RelayResult {
                a_to_b: 0,
                b_to_a: 0,
                error: Some(e),
            }
        }
    }
}

/// Makes the next close send RST.
pub fn reset(s: &TcpStream) {
    // A zero linger never blocks: close sends RST at once.
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}
