"""A libtorrent 2.0 node of a sluice testnet (`--libtorrent K`).

    lt_node.py TORRENT SAVE_DIR [--up RATE] [--down RATE] [--slots N]
               [--peer HOST:PORT]...

Adds TORRENT with its data in SAVE_DIR (a seeder's is there already,
checked at start), listens on 127.0.0.1, prints `port N` once it runs,
then one JSON line of its state every 250 ms until stdin closes or it
gets SIGINT/SIGTERM:

    {"pieces": n, "total": n, "complete": bool, "down_rate": B/s,
     "up_rate": B/s, "downloaded": bytes, "uploaded": bytes,
     "hash_failures": n, "peers": [{"id": label, "client": name,
     "uploaded": bytes, "choked": bool}]}

Rates are bytes per second (libtorrent's session-wide limits), slots its
unchoke slots. Plaintext, no DHT, LSD, UPnP, NAT-PMP or uTP: it meets
the testnet's nodes only through the peers given and those that dial it.
Installed with the testnet; Debian's python3-libtorrent.
"""

import argparse
import json
import select
import signal
import sys
import time

import libtorrent as lt

INTERVAL = 0.25
# Given peers not connected are asked again this often.
REDIAL = 5.0


def label(pid):
    """A peer id as sluice shows it: the 8-byte client prefix (hex when
    not printable) and 4 bytes of the rest in hex."""
    raw = bytes(pid.to_bytes()) if hasattr(pid, "to_bytes") else bytes(pid)
    head, tail = raw[:8], raw[8:12]
    if all(0x21 <= b <= 0x7E for b in head):
        out = head.decode("ascii")
    else:
        out = head.hex()
    return out + tail.hex()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("torrent")
    ap.add_argument("save")
    ap.add_argument("--up", type=int, default=0)
    ap.add_argument("--down", type=int, default=0)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--peer", action="append", default=[])
    args = ap.parse_args()

    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    ses = lt.session({
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_incoming_utp": False,
        "enable_outgoing_utp": False,
        "allow_multiple_connections_per_ip": True,
        "out_enc_policy": lt.enc_policy.pe_disabled,
        "in_enc_policy": lt.enc_policy.pe_disabled,
        "upload_rate_limit": args.up,
        "download_rate_limit": args.down,
        "unchoke_slots_limit": args.slots,
        # The testnet's links are loopback: rate limits apply there too.
        "rate_limit_ip_overhead": False,
        "alert_mask": lt.alert.category_t.error_notification,
    })
    # libtorrent exempts local peers (loopback included) from its rate
    # limits: every address in the global class, so the limits hold here.
    everyone = lt.ip_filter()
    everyone.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
    ses.set_peer_class_filter(everyone)
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(args.torrent)
    atp.save_path = args.save
    h = ses.add_torrent(atp)
    piece_length = atp.ti.piece_length()
    print(f"port {ses.listen_port()}", flush=True)

    peers = []
    for p in args.peer:
        host, port = p.rsplit(":", 1)
        peers.append((host, int(port)))
    last_dial = 0.0
    while not stop:
        now = time.time()
        info = h.get_peer_info()
        # Given peers are dialed at start, and again while fewer are
        # connected than were given (one that dialed us shows an ephemeral
        # port, so addresses cannot tell who is missing; libtorrent drops
        # a second connection to the same peer by its peer id).
        if now - last_dial >= REDIAL and (last_dial == 0.0 or len(info) < len(peers)):
            last_dial = now
            connected = {(p.ip[0], p.ip[1]) for p in info}
            for p in peers:
                if p not in connected:
                    h.connect_peer(p)
        st = h.status()
        out = {
            "pieces": st.num_pieces,
            "total": h.torrent_file().num_pieces(),
            "complete": st.is_seeding,
            "down_rate": st.download_payload_rate,
            "up_rate": st.upload_payload_rate,
            "downloaded": st.total_payload_download,
            "uploaded": st.total_payload_upload,
            # libtorrent counts failed bytes, not pieces.
            "hash_failures": st.total_failed_bytes // piece_length,
            "peers": [
                {
                    "id": label(p.pid),
                    "client": p.client.decode("utf-8", "replace")
                    if isinstance(p.client, bytes)
                    else p.client,
                    "uploaded": p.total_upload,
                    "choked": bool(p.flags & lt.peer_info.choked),
                }
                for p in info
            ],
        }
        print(json.dumps(out), flush=True)
        r, _, _ = select.select([sys.stdin], [], [], INTERVAL)
        if r and not sys.stdin.read(1):
            break


if __name__ == "__main__":
    main()
