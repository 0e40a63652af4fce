//! The fuzz targets' properties (netboot/fuzz/) as randomized tests that run in every
//! `cargo test`: random and mutated DHCP/TFTP packets never panic the parsers or the DHCP
//! engine, never produce short replies, parsed TFTP requests round-trip, and HTTP Range
//! headers never panic their parser.

use std::sync::{Mutex, OnceLock};

use ignite_netboot::testing::{check_range_header, check_tftp_round_trip, pxe_seed, Engines};
use ignite_netboot::tftp::{encode_rrq, parse, Packet};
use proptest::prelude::*;

/// One set of engines for all cases, so state accumulates as in a server under attack.
fn engines() -> &'static Mutex<Engines> {
    static E: OnceLock<Mutex<Engines>> = OnceLock::new();
    E.get_or_init(|| Mutex::new(Engines::new()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn dhcp_engine_survives_anything(
        kind in 0u8..4,
        flips in prop::collection::vec((0usize..400, any::<u8>()), 0..12),
        tail in prop::collection::vec(any::<u8>(), 0..64),
        cut in 0usize..400,
        random in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut e = engines().lock().unwrap_or_else(|p| p.into_inner());
        let mut p = pxe_seed(kind);
        for (i, b) in flips {
            let n = p.len();
            p[i % n] = b;
        }
        p.extend_from_slice(&tail);
        let cut_p = p[..cut.min(p.len())].to_vec();
        for pkt in [&p, &cut_p, &random] {
            if let Err(why) = e.check(pkt) {
                prop_assert!(false, "{}", why);
            }
        }
    }

    #[test]
    fn tftp_parser_never_panics_and_requests_round_trip(data in prop::collection::vec(any::<u8>(), 0..700)) {
        if let Err(why) = check_tftp_round_trip(&data) {
            prop_assert!(false, "{}", why);
        }
    }

    #[test]
    fn tftp_requests_parse_back(name in "[a-zA-Z0-9/._-]{1,60}", blk in 8u32..65464, win in 1u32..100) {
        let b = blk.to_string();
        let w = win.to_string();
        let pkt = encode_rrq(&name, "octet", &[("blksize", &b), ("windowsize", &w)]);
        let Ok(Packet::Read(r)) = parse(&pkt) else { panic!("valid request did not parse") };
        prop_assert_eq!(r.filename, name);
        prop_assert_eq!(r.options, vec![("blksize".to_string(), b), ("windowsize".to_string(), w)]);
    }

    #[test]
    fn range_headers_never_panic_and_stay_canonical(
        random in "(bytes|Bytes|items)? ?=? ?[0-9-, ]{0,20}",
        raw in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        for v in [random.as_bytes(), &raw[..]] {
            if let Err(why) = check_range_header(v) {
                prop_assert!(false, "{}", why);
            }
        }
    }
}
