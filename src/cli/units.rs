//! Sizes, durations and listen addresses as flags and environment variables take them.
//!
//! A size is a number with an optional unit (`1 MiB`, `256KiB`, `1MB`; `bytesize` syntax); a
//! duration is a number with a unit (`5s`, `500ms`, `2m`; `humantime` syntax). A bare number
//! keeps the unit the flag always had, which its help names: bytes for most sizes, seconds for
//! most durations.

use std::time::Duration;

/// A size in bytes; a bare number is bytes.
pub fn bytes<T: TryFrom<u64>>(text: &str) -> Result<T, String> {
    scaled_size(text, 1)
}

/// A size in bytes; a bare number is MiB.
pub fn mebibytes(text: &str) -> Result<u64, String> {
    scaled_size(text, 1 << 20)
}

/// A duration; a bare number is seconds.
pub fn seconds(text: &str) -> Result<Duration, String> {
    scaled_duration(text, Duration::from_secs(1))
}

/// A duration; a bare number is milliseconds.
pub fn milliseconds(text: &str) -> Result<Duration, String> {
    scaled_duration(text, Duration::from_millis(1))
}

fn scaled_size<T: TryFrom<u64>>(text: &str, bare_unit: u64) -> Result<T, String> {
    let text = text.trim();
    let bytes = match text.parse::<u64>() {
        Ok(n) => n
            .checked_mul(bare_unit)
            .ok_or_else(|| format!("{text:?} is too large"))?,
        Err(_) => {
            text.parse::<bytesize::ByteSize>()
                .map_err(|_| {
                    format!("{text:?} is not a size: write e.g. 1048576, 1 MiB, 256KiB or 1MB")
                })?
                .0
        }
    };
    T::try_from(bytes).map_err(|_| format!("{text:?} is too large for this setting"))
}

fn scaled_duration(text: &str, bare_unit: Duration) -> Result<Duration, String> {
    let text = text.trim();
    match text.parse::<u32>() {
        Ok(n) => Ok(bare_unit.saturating_mul(n)),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("{text:?} is not a duration ({e}): write e.g. 5s, 500ms or 2m")),
    }
}

/// A `--listen` address: `PORT` (loopback), `IP:PORT`, or `HOST:PORT` (resolved when binding).
pub fn listen(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.contains("://") {
        return Err(format!(
            "{text:?} is a URL; --listen takes an address, e.g. 127.0.0.1:7788"
        ));
    }
    if let Ok(port) = text.parse::<u16>() {
        return Ok(format!("127.0.0.1:{port}"));
    }
    if text.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(text.to_owned());
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(text.to_owned())
        }
        _ => Err(format!(
            "{text:?} is not an address: write PORT, IP:PORT or HOST:PORT, e.g. 7788, \
             127.0.0.1:7788, localhost:7788, or 0.0.0.0:7788 for remote clients"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units_and_bare_numbers_keep_theirs() {
        assert_eq!(bytes::<u32>("1MiB"), Ok(1 << 20));
        assert_eq!(bytes::<u32>("1 MiB"), Ok(1 << 20));
        assert_eq!(bytes::<u32>("256 KiB"), Ok(256 << 10));
        assert_eq!(bytes::<u32>("1MB"), Ok(1_000_000));
        assert_eq!(bytes::<u32>("4096"), Ok(4096));
        assert_eq!(mebibytes("64"), Ok(64 << 20));
        assert_eq!(mebibytes("512 KiB"), Ok(512 << 10));
        assert!(bytes::<u32>("8GiB").unwrap_err().contains("too large"));
        assert!(bytes::<u32>("lots").unwrap_err().contains("not a size"));
    }

    #[test]
    fn durations_take_units_and_bare_numbers_keep_theirs() {
        assert_eq!(seconds("5"), Ok(Duration::from_secs(5)));
        assert_eq!(seconds("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(seconds("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(seconds("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(milliseconds("20"), Ok(Duration::from_millis(20)));
        assert_eq!(milliseconds("1s"), Ok(Duration::from_secs(1)));
        assert!(seconds("soon").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(listen("7795").as_deref(), Ok("127.0.0.1:7795"));
        assert_eq!(listen("localhost:7795").as_deref(), Ok("localhost:7795"));
        assert_eq!(listen("0.0.0.0:80").as_deref(), Ok("0.0.0.0:80"));
        assert_eq!(listen("[::1]:80").as_deref(), Ok("[::1]:80"));
        assert!(
            listen("ws://127.0.0.1:7788")
                .unwrap_err()
                .contains("is a URL")
        );
        assert!(listen("localhost").unwrap_err().contains("HOST:PORT"));
    }
}
