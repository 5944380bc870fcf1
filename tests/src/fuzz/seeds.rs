//! The valid frames the fuzzer starts from, over both families: IKE to UDP 500 and 4500,
//! ESP in UDP and bare, a UDP checksum of 0, first and non-first fragments, TCP 443, ICMP
//! fragmentation needed / ICMPv6 packet too big about a reply, ARP and neighbour
//! solicitation, and backends' replies (UDP, ESP, TCP, fragments) to a client with a
//! persistence entry. Built with `crate::packet` and `crate::packet6` (checksums from
//! scratch); the unmutated seeds are forwarded or passed by today's program as
//! `tests/prog_test_run*.rs` expect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::PersistValue;

use crate::packet::{
    arp_request, icmp_frag_needed, ike_message, non_esp, IpFrame, Ipv4Frame, TcpFlags, PROTO_ESP,
};
use crate::packet6::{esp_body, icmpv6_error, neighbour_solicitation, Ipv6Frame};
use crate::xdp::{
    backend_mac, backend_v4, backend_v6, now_ticks, Fixture, Side, EXT_MAC, INT_MAC, PORT_EXT,
    ROUTER4, ROUTER6, ROUTER_MAC, VIP4, VIP6,
};

/// Clients with a persistence entry (the replies' clients) and without one.
pub const P4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
pub const N4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
pub const P6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7);
pub const N6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x20);
/// A router on the way to the clients that reports a too-small MTU.
const PATH_ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const PATH_ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 1);
/// Bytes of IP payload in a first fragment (a multiple of 8; small keeps the sweep short).
const FRAG: usize = 48;

pub struct Seed {
    pub name: &'static str,
    pub frame: Vec<u8>,
    /// The interface it arrives on.
    pub side: Side,
    /// A backend's reply (its client is the destination).
    pub reverse: bool,
    /// Today's program forwards it as it is (ARP and neighbour solicitation it passes).
    pub forwarded: bool,
    /// The client and backend of the persistence entry the frame relies on, written again
    /// (fresh) before each run of it: the fuzzed frames may move or age it.
    pub persist: Option<(IpAddr, u32)>,
}

/// A persistence entry on `backend`, stamped now, learned from the router on `ext`.
pub fn entry(backend: u32) -> PersistValue {
    PersistValue {
        backend,
        atime: now_ticks(),
        client_mac: ROUTER_MAC,
        port: PORT_EXT as u8,
        flags: 0,
    }
}

fn ike(exchange: u8, spi_r: u64, body: usize) -> Vec<u8> {
    ike_message(0x1122_3344_5566_7788, spi_r, exchange, 0x08, body)
}

fn seed(name: &'static str, frame: Vec<u8>, persist: Option<(IpAddr, u32)>) -> Seed {
    let side = if frame[..6] == INT_MAC {
        Side::Int
    } else {
        Side::Ext
    };
    Seed {
        name,
        frame,
        side,
        reverse: side == Side::Int,
        forwarded: true,
        persist,
    }
}

fn passed(s: Seed) -> Seed {
    Seed {
        forwarded: false,
        ..s
    }
}

/// Every seed; the fixture gives the persisted clients' backends (their ring choices).
pub fn all(lb: &mut Fixture) -> Vec<Seed> {
    let mut s = v4(lb);
    s.extend(v6(lb));
    s
}

fn v4(lb: &mut Fixture) -> Vec<Seed> {
    let b = lb.ring_choice(P4.into());
    let p = Some((IpAddr::from(P4), b));
    let udp = |c: Ipv4Addr, port: u16, data: &[u8]| {
        Ipv4Frame::udp(ROUTER_MAC, EXT_MAC, (c, port), (VIP4, port), data)
    };
    let reply = |port: u16, data: &[u8]| {
        Ipv4Frame::udp(
            backend_mac(b),
            INT_MAC,
            (backend_v4(b), port),
            (P4, port),
            data,
        )
    };
    let (frag1, frag2) = udp(P4, 4500, &non_esp(&ike(35, 9, 200))).fragments(FRAG);
    let (rfrag1, rfrag2) = reply(4500, &non_esp(&ike(35, 9, 200))).fragments(FRAG);
    let to_client = Ipv4Frame::udp(
        EXT_MAC,
        ROUTER_MAC,
        (VIP4, 4500),
        (P4, 4500),
        &ike(35, 9, 64),
    );
    let flags = |syn, ack| TcpFlags {
        syn,
        ack,
        psh: !syn,
        rst: false,
    };
    let tcp = |data: &[u8], fl| {
        let (seq, ack) = (0x1000_0000, 0x2000_0000);
        Ipv4Frame::tcp_segment(
            ROUTER_MAC,
            EXT_MAC,
            (P4, 40_000),
            (VIP4, 443),
            seq,
            ack,
            fl,
            data,
        )
    };
    let tls = [0x16, 0x03, 0x01, 0x00, 0x40, 1, 0, 0, 0x3c, 3, 3];
    vec![
        seed(
            "v4 IKE_SA_INIT to 500",
            udp(P4, 500, &ike(34, 0, 80)).bytes(),
            p,
        ),
        seed(
            "v4 IKE_SA_INIT to 500, new client",
            udp(N4, 500, &ike(34, 0, 80)).bytes(),
            None,
        ),
        seed(
            "v4 IKE_AUTH to 4500",
            udp(P4, 4500, &non_esp(&ike(35, 9, 96))).bytes(),
            p,
        ),
        seed(
            "v4 ESP in UDP 4500",
            udp(P4, 4500, &esp_body(0xc0ffee, 7, 64)).bytes(),
            p,
        ),
        seed(
            "v4 UDP 4500, checksum 0",
            udp(N4, 4500, &esp_body(0xc0ffee, 8, 40))
                .without_udp_checksum()
                .bytes(),
            None,
        ),
        seed(
            "v4 ESP",
            Ipv4Frame::raw(
                ROUTER_MAC,
                EXT_MAC,
                P4,
                VIP4,
                PROTO_ESP,
                &esp_body(0xbeef, 3, 64),
            )
            .bytes(),
            p,
        ),
        seed("v4 first fragment", frag1.bytes(), p),
        seed("v4 non-first fragment", frag2.bytes(), p),
        seed("v4 TCP 443 SYN", tcp(&[], flags(true, false)).bytes(), p),
        seed("v4 TCP 443 data", tcp(&tls, flags(false, true)).bytes(), p),
        seed(
            "v4 ICMP fragmentation needed",
            icmp_frag_needed(
                ROUTER_MAC,
                EXT_MAC,
                PATH_ROUTER4,
                VIP4,
                &to_client,
                28,
                1400,
            )
            .bytes(),
            p,
        ),
        passed(seed(
            "v4 ARP who-has VIP",
            arp_request(ROUTER_MAC, ROUTER4, VIP4),
            None,
        )),
        seed("v4 reply from 500", reply(500, &ike(34, 9, 80)).bytes(), p),
        seed(
            "v4 reply from 4500",
            reply(4500, &non_esp(&ike(35, 9, 64))).bytes(),
            p,
        ),
        seed(
            "v4 reply ESP",
            Ipv4Frame::raw(
                backend_mac(b),
                INT_MAC,
                backend_v4(b),
                P4,
                PROTO_ESP,
                &esp_body(0xfeed, 4, 64),
            )
            .bytes(),
            p,
        ),
        seed(
            "v4 reply TCP 443 SYN-ACK",
            Ipv4Frame::tcp_segment(
                backend_mac(b),
                INT_MAC,
                (backend_v4(b), 443),
                (P4, 40_000),
                0x3000_0000,
                0x1000_0001,
                flags(true, true),
                &[],
            )
            .bytes(),
            p,
        ),
        seed("v4 reply first fragment", rfrag1.bytes(), p),
        seed("v4 reply non-first fragment", rfrag2.bytes(), p),
    ]
}

fn v6(lb: &mut Fixture) -> Vec<Seed> {
    let b = lb.ring_choice(P6.into());
    let p = Some((IpAddr::from(P6), b));
    let udp = |c: Ipv6Addr, port: u16, data: &[u8]| {
        Ipv6Frame::udp(ROUTER_MAC, EXT_MAC, (c, port), (VIP6, port), data)
    };
    let reply = |port: u16, data: &[u8]| {
        Ipv6Frame::udp(
            backend_mac(b),
            INT_MAC,
            (backend_v6(b), port),
            (P6, port),
            data,
        )
    };
    let (frag1, frag2) = udp(P6, 4500, &non_esp(&ike(35, 9, 200))).fragments(FRAG, 0x51);
    let (rfrag1, rfrag2) = reply(4500, &non_esp(&ike(35, 9, 200))).fragments(FRAG, 0x52);
    let to_client = Ipv6Frame::udp(
        EXT_MAC,
        ROUTER_MAC,
        (VIP6, 4500),
        (P6, 4500),
        &ike(35, 9, 64),
    );
    let tls = [0x16, 0x03, 0x01, 0x00, 0x40, 1, 0, 0, 0x3c, 3, 3];
    vec![
        seed(
            "v6 IKE_SA_INIT to 500",
            udp(P6, 500, &ike(34, 0, 80)).bytes(),
            p,
        ),
        seed(
            "v6 IKE_SA_INIT to 500, new client",
            udp(N6, 500, &ike(34, 0, 80)).bytes(),
            None,
        ),
        seed(
            "v6 IKE_AUTH to 4500",
            udp(P6, 4500, &non_esp(&ike(35, 9, 96))).bytes(),
            p,
        ),
        seed(
            "v6 ESP in UDP 4500",
            udp(P6, 4500, &esp_body(0xc0ffee, 7, 64)).bytes(),
            p,
        ),
        seed(
            "v6 ESP",
            Ipv6Frame::raw(
                ROUTER_MAC,
                EXT_MAC,
                P6,
                VIP6,
                PROTO_ESP,
                &esp_body(0xbeef, 3, 64),
            )
            .bytes(),
            p,
        ),
        seed("v6 first fragment", frag1.bytes(), p),
        seed("v6 non-first fragment", frag2.bytes(), p),
        seed(
            "v6 TCP 443 SYN",
            Ipv6Frame::tcp(ROUTER_MAC, EXT_MAC, (P6, 40_000), (VIP6, 443), &[]).bytes(),
            p,
        ),
        seed(
            "v6 TCP 443 data",
            Ipv6Frame::tcp(ROUTER_MAC, EXT_MAC, (P6, 40_000), (VIP6, 443), &tls).bytes(),
            p,
        ),
        seed(
            "v6 ICMPv6 packet too big",
            icmpv6_error(
                ROUTER_MAC,
                EXT_MAC,
                PATH_ROUTER6,
                VIP6,
                2,
                0,
                1280,
                &to_client,
                16,
            )
            .bytes(),
            p,
        ),
        passed(seed(
            "v6 neighbour solicitation for VIP",
            neighbour_solicitation(ROUTER_MAC, ROUTER6, VIP6),
            None,
        )),
        seed("v6 reply from 500", reply(500, &ike(34, 9, 80)).bytes(), p),
        seed(
            "v6 reply from 4500",
            reply(4500, &non_esp(&ike(35, 9, 64))).bytes(),
            p,
        ),
        seed(
            "v6 reply ESP",
            Ipv6Frame::raw(
                backend_mac(b),
                INT_MAC,
                backend_v6(b),
                P6,
                PROTO_ESP,
                &esp_body(0xfeed, 4, 64),
            )
            .bytes(),
            p,
        ),
        seed(
            "v6 reply TCP 443",
            Ipv6Frame::tcp(
                backend_mac(b),
                INT_MAC,
                (backend_v6(b), 443),
                (P6, 40_000),
                &tls,
            )
            .bytes(),
            p,
        ),
        seed("v6 reply first fragment", rfrag1.bytes(), p),
        seed("v6 reply non-first fragment", rfrag2.bytes(), p),
    ]
}
