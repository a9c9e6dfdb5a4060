//! Map transport errors to the summary's error kinds.

use std::error::Error as StdError;
use std::io;

use super::ErrorKind;

/// Classify an error by walking its source chain.
pub(crate) fn classify(err: &(dyn StdError + 'static)) -> ErrorKind {
    let mut connect = false;
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(e) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            connect |= e.is_connect();
        }
        if let Some(e) = e.downcast_ref::<io::Error>() {
            use io::ErrorKind as K;
            match e.kind() {
                K::ConnectionRefused
                | K::AddrNotAvailable
                | K::HostUnreachable
                | K::NetworkUnreachable
                | K::NotFound => return ErrorKind::Connect,
                _ if connect => return ErrorKind::Connect,
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                    return ErrorKind::Reset;
                }
                K::TimedOut => return ErrorKind::Timeout,
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<hyper::Error>() {
            if e.is_timeout() {
                return ErrorKind::Timeout;
            }
            if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
                return if connect {
                    ErrorKind::Connect
                } else {
                    ErrorKind::Reset
                };
            }
            if e.is_parse() || e.is_parse_status() || e.is_user() {
                return ErrorKind::Protocol;
            }
        }
        if let Some(e) = e.downcast_ref::<h2::Error>() {
            if e.is_io() {
                cur = e.source();
                continue;
            }
            if e.is_reset() || e.is_go_away() {
                return ErrorKind::Reset;
            }
            return ErrorKind::Protocol;
        }
        cur = e.source();
    }
    if connect {
        ErrorKind::Connect
    } else {
        ErrorKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_kinds() {
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&e), ErrorKind::Connect);
        let e = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(classify(&e), ErrorKind::Reset);
        let e = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(classify(&e), ErrorKind::Timeout);
        let e = io::Error::other("x");
        assert_eq!(classify(&e), ErrorKind::Other);
    }
}
