use super::*;

fn announce() -> Announce {
    Announce {
        info_hash:
            *b"\x12\x34\x56\x78\x9a\xbc\xde\xf1\x23\x45\x67\x89\xab\xcd\xef\x12\x34\x56\x78\x9a",
        peer_id: *b"-SL0100-abcdefghijkl",
        port: 6881,
        uploaded: 1,
        downloaded: 2,
        left: 3,
        event: Event::Started,
        key: 0xdead_beef,
    }
}

#[test]
fn http_urls_escape_binary_and_keep_the_trackers_own_query() {
    let url = http_url("http://t.example/announce", &announce());
    assert_eq!(
        url,
        "http://t.example/announce?info_hash=%124Vx%9A%BC%DE%F1%23Eg%89%AB%CD%EF%124Vx%9A\
         &peer_id=-SL0100-abcdefghijkl&port=6881&uploaded=1&downloaded=2&left=3\
         &compact=1&no_peer_id=1&numwant=50&key=deadbeef&event=started"
    );
    let url = http_url("http://t.example/a?passkey=x", &announce());
    assert!(
        url.starts_with("http://t.example/a?passkey=x&info_hash="),
        "{url}"
    );
    let mut quiet = announce();
    quiet.event = Event::None;
    assert!(!http_url("http://t/a", &quiet).contains("event="));
}

#[test]
fn http_replies_in_every_form() {
    // Compact IPv4 and IPv6, keys out of order, a short interval clamped.
    let mut body = b"d8:intervali5e5:peers12:".to_vec();
    body.extend_from_slice(&[127, 0, 0, 1, 0x1a, 0xe1, 10, 0, 0, 2, 0, 0]);
    body.extend_from_slice(b"6:peers618:");
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x1a, 0xe2]);
    body.extend_from_slice(b"8:completei3e10:incompletei4ee");
    let r = parse_http(&body).unwrap();
    assert_eq!(r.interval, MIN_INTERVAL);
    assert_eq!(
        r.peers,
        vec![
            "127.0.0.1:6881".parse().unwrap(),
            "[::1]:6882".parse().unwrap()
        ],
        "port 0 dropped"
    );
    assert_eq!((r.seeders, r.leechers), (Some(3), Some(4)));
    // The dict list form.
    let body = b"d8:intervali1800e5:peersld2:ip9:127.0.0.14:porti51413eed2:ip3:bad4:porti1eeee";
    let r = parse_http(body).unwrap();
    assert_eq!(r.interval, Duration::from_secs(1800));
    assert_eq!(r.peers, vec!["127.0.0.1:51413".parse().unwrap()]);
    // A refusal.
    assert_eq!(
        parse_http(b"d14:failure reason17:unregistered hashe"),
        Err(TrackerError::Refused("unregistered hash".into()))
    );
    // Garbage.
    for bad in [
        &b"<html>"[..],
        b"d5:peers3:abce",
        b"d8:intervali60e5:peers5:abcdee",
    ] {
        assert!(
            matches!(parse_http(bad), Err(TrackerError::Malformed(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn udp_exchange() {
    let req = udp::connect_request(7);
    assert_eq!(&req[..8], &0x41727101980u64.to_be_bytes());
    let mut resp = vec![0, 0, 0, 0, 0, 0, 0, 7];
    resp.extend_from_slice(&42u64.to_be_bytes());
    assert_eq!(udp::parse_connect(&resp, 7), Ok(42));
    assert!(udp::parse_connect(&resp, 8).is_err(), "another transaction");

    let a = announce();
    let req = udp::announce_request(42, 9, &a);
    assert_eq!(&req[16..36], &a.info_hash);
    assert_eq!(&req[80..84], &2u32.to_be_bytes(), "started");
    assert_eq!(&req[96..98], &6881u16.to_be_bytes());

    let mut resp = vec![
        0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0x07, 0x08, 0, 0, 0, 1, 0, 0, 0, 2,
    ];
    resp.extend_from_slice(&[127, 0, 0, 1, 0x1a, 0xe1]);
    let r = udp::parse_announce(&resp, 9, false).unwrap();
    assert_eq!(r.interval, Duration::from_secs(1800));
    assert_eq!((r.seeders, r.leechers), (Some(2), Some(1)));
    assert_eq!(r.peers, vec!["127.0.0.1:6881".parse().unwrap()]);

    let mut err = vec![0, 0, 0, 3, 0, 0, 0, 9];
    err.extend_from_slice(b"torrent not registered");
    assert_eq!(
        udp::parse_announce(&err, 9, false),
        Err(TrackerError::Refused("torrent not registered".into()))
    );
    assert!(
        udp::parse_announce(&resp[..21], 9, false).is_err(),
        "half a peer"
    );
}

#[test]
fn tracker_urls() {
    assert_eq!(
        TrackerUrl::parse("udp://tracker.example:6969/announce"),
        Ok(TrackerUrl::Udp("tracker.example:6969".into()))
    );
    assert!(matches!(
        TrackerUrl::parse("HTTPS://t/a"),
        Ok(TrackerUrl::Http(_))
    ));
    for bad in ["wss://t/a", "udp://nohost/announce", "udp://", "t:1"] {
        assert!(TrackerUrl::parse(bad).is_err(), "{bad}");
    }
}
