//! A BitTorrent peer's bytes after the handshake, fed to the metadata
//! fetcher (BEP 9 ut_metadata, BEP 52 hashes): it must end with the
//! metadata or an error, never panic, whatever the peer says. The peer's
//! stream ends after the input; what the fetcher writes is discarded.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use sluice_storage::InfoHash;
use sluice_swarm::bt::fetch::fetch;
use sluice_swarm::bt::wire::Handshake;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads the input, then end of stream; takes every write.
struct Peer<'a>(&'a [u8]);

impl AsyncRead for Peer<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.0.len().min(buf.remaining());
        buf.put_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the key: a v1 one or a v2 one.
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let key = if kind & 1 == 0 {
        InfoHash::of_v1([7; 20])
    } else {
        InfoHash([7; 32])
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let theirs = Handshake::ours([7; 20], [1; 20]);
    let _ = runtime.block_on(fetch(Peer(rest), &theirs, key, 1 << 20));
});
