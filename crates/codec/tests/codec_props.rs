//! Round-trip properties of the codecs, over generated values rather than
//! hand-picked ones.

use proptest::prelude::*;
use virtcard_codec::atr::Protocols;
use virtcard_codec::{ber, Atr, AtrBuilder, Command, Status};

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..300),
        1 => proptest::collection::vec(any::<u8>(), 0..66_000),
    ]
}

fn ne() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![
        Just(None),
        (1usize..=256).prop_map(Some),
        (1usize..=65_536).prop_map(Some)
    ]
}

proptest! {
    /// Building, encoding and parsing a command gives the same command.
    #[test]
    fn command_encode_parse(cla in any::<u8>(), ins in any::<u8>(), p1 in any::<u8>(),
                            p2 in any::<u8>(), data in data(), ne in ne()) {
        let data = &data[..data.len().min(65_535)];
        let mut cmd = Command::new(cla, ins, p1, p2).with_data(data);
        if let Some(n) = ne {
            cmd = cmd.with_ne(n);
        }
        let bytes = cmd.to_vec();
        let back = Command::parse(&bytes).expect("own encoding parses");
        prop_assert_eq!((back.cla, back.ins, back.p1, back.p2), (cmd.cla, ins, p1, p2));
        prop_assert_eq!(back.data, data);
        prop_assert_eq!(back.ne, ne);
        // Short form whenever it fits.
        let fits_short = data.len() <= 255 && ne.is_none_or(|n| n <= 256);
        prop_assert_eq!(back.extended, !fits_short);
        prop_assert_eq!(back.to_vec(), bytes);
    }

    /// Whatever parses encodes back to exactly the bytes it came from.
    #[test]
    fn command_parse_encode(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(cmd) = Command::parse(&bytes) {
            prop_assert_eq!(cmd.to_vec(), bytes);
        }
    }

    /// Commands whose Lc disagrees with the data are refused, never read past
    /// the end. (With nothing after it, the byte is Le: a valid case 2.)
    #[test]
    fn command_length_mismatch(header in any::<[u8; 4]>(), lc in 1u8..=255, extra in 0usize..300) {
        let mut bytes = header.to_vec();
        bytes.push(lc);
        bytes.extend(std::iter::repeat_n(0xAA, extra));
        let ok = extra == 0 || extra == lc as usize || extra == lc as usize + 1;
        prop_assert_eq!(Command::parse(&bytes).is_ok(), ok);
    }

    #[test]
    fn status_words_round_trip(sw in any::<u16>()) {
        let s = Status::from_u16(sw);
        prop_assert_eq!(u16::from_be_bytes(s.to_bytes()), sw);
        prop_assert_eq!(Status::from(u16::from(s)), s);
    }

    /// A sequence of objects, some nested, survives encoding and parsing.
    #[test]
    fn ber_sequences(objects in proptest::collection::vec(
        (prop_oneof![0x01u32..0x1E, 0x41u32..0x5E, 0x5F01u32..0x5F7F, 0x7F01u32..0x7F7F],
         proptest::collection::vec(any::<u8>(), 0..400)), 0..8)) {
        let mut flat = Vec::new();
        for (tag, value) in &objects {
            ber::push(&mut flat, *tag, value);
        }
        let mut nested = Vec::new();
        ber::push_constructed(&mut nested, 0x7F21, |v| v.extend_from_slice(&flat));
        let outer = ber::parse_all(&nested).expect("parses");
        prop_assert_eq!(outer.len(), 1);
        prop_assert!(outer[0].is_constructed());
        let inner: Vec<_> = outer[0].children().collect::<Result<_, _>>().expect("children parse");
        prop_assert_eq!(inner.len(), objects.len());
        for (t, (tag, value)) in inner.iter().zip(&objects) {
            prop_assert_eq!(t.tag, *tag);
            prop_assert_eq!(t.value, &value[..]);
        }
        if let Some((tag, value)) = objects.first() {
            prop_assert_eq!(ber::find(&flat, *tag), Some(&value[..]));
        }
    }

    /// Every length encodes minimally and parses back.
    #[test]
    fn ber_lengths(len in prop_oneof![0usize..300, 0usize..0x0100_0000]) {
        let mut v = Vec::new();
        ber::push_length(&mut v, len);
        let expected_size = match len {
            0..=0x7F => 1,
            0x80..=0xFF => 2,
            0x100..=0xFFFF => 3,
            _ => 4,
        };
        prop_assert_eq!(v.len(), expected_size);
        prop_assert_eq!(ber::parse_length(&v, 0), Ok((len, v.len())));
    }

    /// An ATR built from parts parses back to the same parts.
    #[test]
    fn atr_build_parse(historical in proptest::collection::vec(any::<u8>(), 0..=15),
                       protocols in prop_oneof![Just(Protocols::T0), Just(Protocols::T1), Just(Protocols::Both)],
                       ta1 in proptest::option::of(any::<u8>())) {
        let atr = AtrBuilder::new()
            .protocols(protocols)
            .ta1(ta1)
            .historical(&historical)
            .build()
            .expect("15 historical bytes fit");
        let parsed = Atr::parse(atr.as_bytes()).expect("own ATR parses");
        prop_assert_eq!(parsed.historical_bytes(), &historical[..]);
        prop_assert_eq!(parsed.offers_t1(), protocols != Protocols::T0);
        prop_assert_eq!(parsed.offers_t0(), protocols != Protocols::T1);
        prop_assert!(atr.as_bytes().len() <= 33);
    }

    #[test]
    fn atr_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
        if let Ok(a) = Atr::parse(&bytes) {
            prop_assert_eq!(a.as_bytes(), &bytes[..]);
        }
    }
}
