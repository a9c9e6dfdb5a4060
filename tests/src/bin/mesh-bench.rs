//! mesh-bench: the TCP micro-benchmark client behind `cargo xtask bench capture`. It talks to a TCP
//! echo server (`mesh-echo --tcp-port`) and prints one JSON object.
//!
//! - `rr`: request/response latency on one connection (blocking socket, TCP_NODELAY, like a plain
//!   app): N round trips of SIZE bytes after a warm-up; per-round-trip microseconds.
//! - `crr`: connect, one SIZE-byte round trip, close — repeated for DURATION; connections per second.
//! - `stream`: BYTES sent while the echo is read back concurrently (half-close at the end); MB/s.
use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Parser)]
#[command(
    version,
    about = "TCP micro-benchmarks against an echo server (JSON output)"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Request/response latency on one connection.
    Rr {
        addr: String,
        #[arg(short, default_value_t = 2000)]
        n: usize,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value_t = 100)]
        warmup: usize,
        /// Fixed request rate (requests per second); default: back to back.
        #[arg(long)]
        rate: Option<f64>,
    },
    /// New connections per second (connect + one round trip + close).
    Crr {
        addr: String,
        #[arg(short, long, default_value = "1s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 100)]
        size: usize,
    },
    /// Bulk throughput through the echo (bytes each way).
    Stream {
        addr: String,
        /// Total bytes (split evenly over the streams).
        #[arg(long, default_value_t = 64 << 20)]
        bytes: usize,
        /// Parallel connections.
        #[arg(long, default_value_t = 1)]
        streams: usize,
    },
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .with_context(|| format!("{addr}: no address"))
}

/// read_exact that tolerates spurious EAGAIN (sockets in a sockmap can report it even when blocking).
fn read_full(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_full(s: &mut TcpStream, buf: &[u8]) -> std::io::Result<()> {
    let mut sent = 0;
    while sent < buf.len() {
        match s.write(&buf[sent..]) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::Rr {
            addr,
            n,
            size,
            warmup,
            rate,
        } => {
            let mut s = TcpStream::connect(resolve(&addr)?)?;
            s.set_nodelay(true)?;
            let req = vec![b'x'; size];
            let mut resp = vec![0u8; size];
            let mut samples = Vec::with_capacity(n);
            let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r));
            let start = Instant::now();
            for i in 0..warmup + n {
                if let Some(iv) = interval {
                    // Open loop: request i is due at start + i × interval.
                    let due = start + iv * i as u32;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                }
                let t = Instant::now();
                write_full(&mut s, &req)?;
                read_full(&mut s, &mut resp)?;
                if i >= warmup {
                    samples.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            samples.sort_by(f64::total_cmp);
            println!(
                "{}",
                json!({"mode": "rr", "n": n, "p50_us": percentile(&samples, 50.0), "p90_us": percentile(&samples, 90.0), "p99_us": percentile(&samples, 99.0), "min_us": samples.first(), "max_us": samples.last()})
            );
        }
        Mode::Crr {
            addr,
            duration,
            size,
        } => {
            let target = resolve(&addr)?;
            let req = vec![b'x'; size];
            let mut resp = vec![0u8; size];
            let start = Instant::now();
            let (mut ok, mut failed) = (0u64, 0u64);
            while start.elapsed() < duration {
                let r = (|| -> std::io::Result<()> {
                    let mut s = TcpStream::connect(target)?;
                    s.set_nodelay(true)?;
                    write_full(&mut s, &req)?;
                    read_full(&mut s, &mut resp)
                })();
                match r {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{}",
                json!({"mode": "crr", "connections": ok, "failed": failed, "seconds": secs, "per_second": ok as f64 / secs})
            );
        }
        Mode::Stream {
            addr,
            bytes,
            streams,
        } => {
            let target = resolve(&addr)?;
            let per = bytes / streams.max(1);
            let start = Instant::now();
            let workers: Vec<_> = (0..streams.max(1))
                .map(|_| std::thread::spawn(move || stream_one(target, per)))
                .collect();
            for w in workers {
                w.join().map_err(|_| anyhow::anyhow!("stream panicked"))??;
            }
            let secs = start.elapsed().as_secs_f64();
            let total = per * streams.max(1);
            println!(
                "{}",
                json!({"mode": "stream", "streams": streams, "bytes": total, "seconds": secs, "mb_per_s": (total as f64 / 1e6) / secs})
            );
        }
    }
    Ok(())
}

/// One connection: `bytes` out and the same back.
fn stream_one(target: SocketAddr, bytes: usize) -> anyhow::Result<()> {
    {
        {
            let mut s = TcpStream::connect(target)?;
            let mut r = s.try_clone()?;

            let reader = std::thread::spawn(move || -> std::io::Result<usize> {
                let mut buf = vec![0u8; 1 << 16];
                let mut got = 0;
                loop {
                    match r.read(&mut buf) {
                        Ok(0) => return Ok(got),
                        Ok(n) => got += n,
                        Err(e)
                            if matches!(
                                e.kind(),
                                ErrorKind::WouldBlock | ErrorKind::Interrupted
                            ) =>
                        {
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
            });
            let block = vec![b'y'; 1 << 16];
            let mut sent = 0;
            while sent < bytes {
                let n = block.len().min(bytes - sent);
                write_full(&mut s, &block[..n])?;
                sent += n;
            }
            s.shutdown(Shutdown::Write)?;
            let got = reader
                .join()
                .map_err(|_| anyhow::anyhow!("reader panicked"))??;
            if got != bytes {
                bail!("sent {bytes} bytes, {got} came back");
            }
        }
    }
    Ok(())
}
