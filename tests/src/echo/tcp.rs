//! Raw TCP echo: every byte read is written back; on the client's half-close we finish echoing
//! and then shut down our write side.

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

pub(super) async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(async move {
                    match echo(stream).await {
                        Ok(n) => debug!(%peer, bytes = n, "tcp echo done"),
                        Err(e) => debug!(%peer, error = %e, "tcp echo failed"),
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn echo(mut stream: TcpStream) -> std::io::Result<u64> {
    let _ = stream.set_nodelay(true);
    let (mut r, mut w) = stream.split();
    let n = tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await?;
    Ok(n)
}
