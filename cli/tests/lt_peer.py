"""A libtorrent 2.0 peer for sluice's BitTorrent interop tests.

    lt_peer.py seed TORRENT DIR TIMEOUT
        Checks DIR against TORRENT, prints `port N` once it seeds every
        piece, and seeds until stdin closes or TIMEOUT seconds pass.
    lt_peer.py get TORRENT|MAGNET DIR PEER TIMEOUT [--no-recheck]
        Downloads TORRENT into DIR from PEER (HOST:PORT), then rechecks
        the data with libtorrent's own hashing (unless --no-recheck, for
        benchmarks) and prints one JSON line:
        {"finished": bool, "pieces": n, "total": n, "clients": [...],
         "seconds": time from adding the torrent to having every piece}.

Loopback only: no DHT, LSD, UPnP, NAT-PMP or uTP; plaintext (sluice
speaks no MSE/PE).
"""

import json
import select
import sys
import time

import libtorrent as lt


def session():
    return lt.session({
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_incoming_utp": False,
        "enable_outgoing_utp": False,
        "allow_multiple_connections_per_ip": True,
        # Keep seed-to-seed connections, so who we traded with is still
        # there to ask once the download is done.
        "close_redundant_connections": False,
        "out_enc_policy": lt.enc_policy.pe_disabled,
        "in_enc_policy": lt.enc_policy.pe_disabled,
        "alert_mask": lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification,
    })


def add(ses, torrent, save):
    """TORRENT is a .torrent file, or a magnet link (the metadata then
    comes from peers over ut_metadata)."""
    if torrent.startswith("magnet:"):
        atp = lt.parse_magnet_uri(torrent)
    else:
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(torrent)
    atp.save_path = save
    return ses.add_torrent(atp)


def wait_for(deadline, cond):
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def seed(torrent, save, timeout):
    deadline = time.time() + timeout
    ses = session()
    h = add(ses, torrent, save)
    if not wait_for(deadline, lambda: h.status().is_seeding):
        st = h.status()
        sys.exit(f"not seeding: {st.state} {st.num_pieces} pieces, error {st.errc.message()}")
    print(f"port {ses.listen_port()}", flush=True)
    # Until the test closes stdin (or the timeout, should it die).
    while time.time() < deadline:
        r, _, _ = select.select([sys.stdin], [], [], 0.2)
        if r and not sys.stdin.read(1):
            break


def get(torrent, save, peer, timeout, recheck=True):
    started = time.time()
    deadline = started + timeout
    ses = session()
    h = add(ses, torrent, save)
    host, port = peer.rsplit(":", 1)
    clients = set()

    def done():
        for p in h.get_peer_info():
            clients.add(p.client.decode("utf-8", "replace") if isinstance(p.client, bytes) else p.client)
        if not h.status().is_seeding:
            # Ask again until connected: the first try may race the
            # peer's start.
            if not h.get_peer_info():
                h.connect_peer((host, int(port)))
            return False
        return True

    finished = wait_for(deadline, done)
    seconds = time.time() - started
    # Peers whose extension handshake came in the last moments.
    wait_for(min(deadline, time.time() + 2), lambda: done() and bool(clients))
    ti = h.torrent_file()
    total = ti.num_pieces() if ti is not None else 0
    pieces = h.status().num_pieces
    rechecked = False
    if finished and recheck:
        # libtorrent's own check of what it downloaded: every piece read
        # back from disk and hashed; the count is what passed.
        ses.pop_alerts()
        h.force_recheck()

        def checked():
            return any(isinstance(a, lt.torrent_checked_alert) for a in ses.pop_alerts())

        rechecked = wait_for(deadline, checked)
        pieces = h.status().num_pieces
    print(json.dumps({
        "finished": finished,
        "pieces": pieces,
        "total": total,
        "clients": sorted(clients),
        "rechecked": rechecked,
        "seconds": seconds,
    }), flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "seed":
        seed(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    elif cmd == "get":
        get(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]),
            recheck="--no-recheck" not in sys.argv[6:])
    else:
        sys.exit(f"unknown command {cmd}")
