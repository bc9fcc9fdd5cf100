# Helper for tests/interop_libtorrent.rs: libtorrent (Debian's
# python3-libtorrent) as the reference BitTorrent v2 implementation.
#   create CONTENT PIECE_SIZE OUT KIND -> writes a .torrent made by libtorrent,
#                                    KIND v1, v2 (only) or hybrid (its default)
#   inspect TORRENT                -> prints what libtorrent reads from a .torrent, as JSON
import json
import os
import sys

import libtorrent as lt

mode = sys.argv[1]
if mode == "create":
    content, piece_size, out, kind = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    fs = lt.file_storage()
    lt.add_files(fs, content)
    flags = {"v2": lt.create_torrent.v2_only, "hybrid": 0, "v1": lt.create_torrent.v1_only}[kind]
    ct = lt.create_torrent(fs, piece_size, flags=flags)
    lt.set_piece_hashes(ct, os.path.dirname(os.path.abspath(content)))
    with open(out, "wb") as f:
        f.write(lt.bencode(ct.generate()))
elif mode == "inspect":
    ti = lt.torrent_info(sys.argv[2])
    fs = ti.files()
    files = []
    for i in range(fs.num_files()):
        if fs.file_flags(i) & lt.file_storage.flag_pad_file:
            continue
        files.append({
            "path": fs.file_path(i),
            "size": fs.file_size(i),
            "root": str(fs.root(i)) if fs.file_size(i) > 0 and ti.info_hashes().has_v2() else None,
            "first_piece": fs.piece_index_at_file(i) if fs.file_size(i) > 0 else None,
            "offset": fs.file_offset(i),
        })
    print(json.dumps({
        "name": ti.name(),
        "info_hash": str(ti.info_hashes().v2) if ti.info_hashes().has_v2() else None,
        "v1_info_hash": str(ti.info_hashes().v1) if ti.info_hashes().has_v1() else None,
        "piece_length": ti.piece_length(),
        "num_pieces": ti.num_pieces(),
        "files": files,
    }))
else:
    sys.exit("unknown mode " + mode)
