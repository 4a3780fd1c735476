//! The common names (CN, 2.5.4.3) in a certificate's subject, read from its
//! DER (RFC 5280 4.1, X.690) with a small reader that checks every length
//! against what is left and gives up on anything unexpected: a malformed
//! certificate has no names, never a panic. webpki reads only the subject
//! alternative names; this is the fallback for certificates that name their
//! host in the CN alone. No signature or validity is checked here.

/// Tags this reader meets (universal class, X.690 8.1.2).
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
/// `[0] EXPLICIT Version` at the start of a v2/v3 tbsCertificate.
const VERSION: u8 = 0xa0;
/// The encoded OID 2.5.4.3 (id-at-commonName).
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// One element read off the front of a DER buffer.
struct Tlv<'a> {
    tag: u8,
    value: &'a [u8],
}

/// A cursor over the concatenated elements of one constructed value.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(der: &'a [u8]) -> Self {
        Reader { rest: der }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next element; `None` when the input is malformed or used up.
    /// Only low tag numbers (all X.509 needs) and definite lengths of up
    /// to four bytes are read.
    fn next(&mut self) -> Option<Tlv<'a>> {
        let (&tag, rest) = self.rest.split_first()?;
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let (bytes, after) = rest.split_at(count);
            rest = after;
            bytes.iter().fold(0usize, |n, &b| n << 8 | usize::from(b))
        };
        if rest.len() < len {
            return None;
        }
        let (value, after) = rest.split_at(len);
        self.rest = after;
        Some(Tlv { tag, value })
    }

    /// The next element, which must carry `tag`.
    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        self.next().filter(|t| t.tag == tag).map(|t| t.value)
    }
}

/// The common names of the certificate `der`, in the order they appear;
/// empty for a certificate without one or one that cannot be read.
pub fn common_names(der: &[u8]) -> Vec<String> {
    subject(der).map(names_in).unwrap_or_default()
}

/// The contents of the subject's RDNSequence: tbsCertificate's sixth field
/// (fifth when the v1 certificate has no version).
fn subject(der: &[u8]) -> Option<&[u8]> {
    let certificate = Reader::new(der).expect(SEQUENCE)?;
    let mut tbs = Reader::new(Reader::new(certificate).expect(SEQUENCE)?);
    let mut field = tbs.next()?;
    if field.tag == VERSION {
        field = tbs.next()?;
    }
    if field.tag != INTEGER {
        return None;
    }
    tbs.expect(SEQUENCE)?; // signature algorithm
    tbs.expect(SEQUENCE)?; // issuer
    tbs.expect(SEQUENCE)?; // validity
    tbs.expect(SEQUENCE)
}

/// The whole subjectPublicKeyInfo element (tag and length included) of
/// the certificate `der`, as a TLSA record with selector 1 hashes it
/// (RFC 6698 2.1.2); `None` when the certificate cannot be read.
pub(crate) fn public_key_info(der: &[u8]) -> Option<&[u8]> {
    let certificate = Reader::new(der).expect(SEQUENCE)?;
    let mut tbs = Reader::new(Reader::new(certificate).expect(SEQUENCE)?);
    let mut field = tbs.next()?;
    if field.tag == VERSION {
        field = tbs.next()?;
    }
    if field.tag != INTEGER {
        return None;
    }
    for _ in 0..4 {
        tbs.expect(SEQUENCE)?; // signature algorithm, issuer, validity, subject
    }
    let before = tbs.rest;
    tbs.expect(SEQUENCE)?;
    Some(&before[..before.len() - tbs.rest.len()])
}

/// The CN values in an RDNSequence; an unreadable sequence yields none.
fn names_in(rdns: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut rdns = Reader::new(rdns);
    while !rdns.is_empty() {
        let Some(set) = rdns.expect(SET) else { return Vec::new() };
        let mut attributes = Reader::new(set);
        while !attributes.is_empty() {
            let Some(attribute) = attributes.expect(SEQUENCE) else { return Vec::new() };
            let mut attribute = Reader::new(attribute);
            let (Some(oid), Some(value)) = (attribute.expect(OID), attribute.next()) else { return Vec::new() };
            if oid == COMMON_NAME
                && let Some(name) = directory_string(&value)
            {
                names.push(name);
            }
        }
    }
    names
}

/// The text of a DirectoryString (RFC 5280 4.1.2.4) or of the ASCII
/// string types older issuers used; `None` for anything else.
fn directory_string(value: &Tlv<'_>) -> Option<String> {
    match value.tag {
        // UTF8String, NumericString, PrintableString, TeletexString (read
        // as UTF-8: a host name is ASCII in any of them), IA5String,
        // VisibleString.
        0x0c | 0x12 | 0x13 | 0x14 | 0x16 | 0x1a => std::str::from_utf8(value.value).ok().map(str::to_string),
        // UniversalString: UTF-32BE.
        0x1c if value.value.len().is_multiple_of(4) => {
            value.value.chunks_exact(4).map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))).collect()
        }
        // BMPString: UCS-2, read as UTF-16BE.
        0x1e if value.value.len().is_multiple_of(2) => {
            let units = value.value.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units).collect::<Result<String, _>>().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair};

    fn cert(subject: DistinguishedName, sans: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = subject;
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    fn dn(entries: Vec<(DnType, DnValue)>) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        for (ty, value) in entries {
            dn.push(ty, value);
        }
        dn
    }

    /// An element in DER, for certificates rcgen would not make.
    fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match value.len() {
            n @ 0..0x80 => out.push(n as u8),
            n @ 0x80..0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(value);
        out
    }

    fn cn(value: &[u8]) -> Vec<u8> {
        tlv(SET, &tlv(SEQUENCE, &[tlv(OID, COMMON_NAME), value.to_vec()].concat()))
    }

    /// A v1 certificate (no version field) with `rdns` as its subject and
    /// nothing after it: all the reader looks at.
    fn v1(rdns: &[u8]) -> Vec<u8> {
        let tbs = [tlv(INTEGER, &[1]), tlv(SEQUENCE, &[]), tlv(SEQUENCE, &[]), tlv(SEQUENCE, &[]), tlv(SEQUENCE, rdns)];
        tlv(SEQUENCE, &tlv(SEQUENCE, &tbs.concat()))
    }

    #[test]
    fn names_in_certificates_rcgen_makes() {
        let long = format!("{}.example.org", "a".repeat(200));
        let cases: Vec<(DistinguishedName, &[&str], Vec<&str>)> = vec![
            (dn(vec![(DnType::CommonName, "cn-only.example.org".into())]), &[], vec!["cn-only.example.org"]),
            (dn(vec![]), &["san-only.example.org"], vec![]),
            (
                dn(vec![
                    (DnType::CountryName, DnValue::PrintableString("DE".try_into().unwrap())),
                    (DnType::OrganizationName, "Example".into()),
                    (DnType::CommonName, "mx.example.org".into()),
                    (DnType::OrganizationalUnitName, "Mail".into()),
                ]),
                &["mx.example.org"],
                vec!["mx.example.org"],
            ),
            (
                dn(vec![(DnType::CommonName, DnValue::PrintableString("printable.example.org".try_into().unwrap()))]),
                &[],
                vec!["printable.example.org"],
            ),
            (
                dn(vec![(DnType::CommonName, DnValue::Ia5String("*.ia5.example.org".try_into().unwrap()))]),
                &[],
                vec!["*.ia5.example.org"],
            ),
            (
                dn(vec![(DnType::CommonName, DnValue::TeletexString("t61.example.org".try_into().unwrap()))]),
                &[],
                vec!["t61.example.org"],
            ),
            (
                dn(vec![(DnType::CommonName, DnValue::BmpString("bmp.example.org".try_into().unwrap()))]),
                &[],
                vec!["bmp.example.org"],
            ),
            (
                dn(vec![(DnType::CommonName, DnValue::UniversalString("ucs4.example.org".try_into().unwrap()))]),
                &[],
                vec!["ucs4.example.org"],
            ),
            (dn(vec![(DnType::CommonName, "müller.example".into())]), &[], vec!["müller.example"]),
            // A name long enough for a two-byte length.
            (dn(vec![(DnType::CommonName, long.as_str().into())]), &[], vec![long.as_str()]),
        ];
        for (subject, sans, expected) in cases {
            let der = cert(subject, sans);
            assert_eq!(common_names(&der), expected);
        }
    }

    #[test]
    fn names_in_hand_made_certificates() {
        let utf8 = |s: &str| tlv(0x0c, s.as_bytes());
        let cases: Vec<(Vec<u8>, Vec<&str>)> = vec![
            (v1(&cn(&utf8("v1.example.org"))), vec!["v1.example.org"]),
            (v1(&[cn(&utf8("one.example")), cn(&utf8("two.example"))].concat()), vec!["one.example", "two.example"]),
            // A multi-valued RDN: CN and O in one SET.
            (
                v1(&tlv(
                    SET,
                    &[
                        tlv(SEQUENCE, &[tlv(OID, &[0x55, 0x04, 0x0a]), utf8("Org")].concat()),
                        tlv(SEQUENCE, &[tlv(OID, COMMON_NAME), utf8("multi.example")].concat()),
                    ]
                    .concat(),
                )),
                vec!["multi.example"],
            ),
            // A CN that is not a string, or not valid in its type, is skipped.
            (v1(&[cn(&tlv(INTEGER, &[5])), cn(&utf8("ok.example"))].concat()), vec!["ok.example"]),
            (v1(&cn(&tlv(0x0c, b"\xff\xfe"))), vec![]),
            (v1(&cn(&tlv(0x1e, b"\x00a\x00"))), vec![]),
            (v1(&cn(&tlv(0x1e, b"\xd8\x00\x00a"))), vec![]),
            (v1(&cn(&tlv(0x1c, b"\x00\x11\x00\x00"))), vec![]),
            // An OID that only starts like commonName.
            (v1(&tlv(SET, &tlv(SEQUENCE, &[tlv(OID, &[0x55, 0x04, 0x03, 0x01]), utf8("x")].concat()))), vec![]),
            // Broken RDNs: no names at all rather than some.
            (v1(&[cn(&utf8("a.example")), tlv(SEQUENCE, &[])].concat()), vec![]),
            (v1(&[cn(&utf8("a.example")), vec![SET, 0x05, 0x30]].concat()), vec![]),
            (v1(&tlv(SET, &tlv(SEQUENCE, &tlv(OID, COMMON_NAME)))), vec![]),
            // Not a certificate.
            (vec![], vec![]),
            (tlv(SEQUENCE, &[]), vec![]),
            (tlv(SEQUENCE, &tlv(SEQUENCE, &tlv(SEQUENCE, &[]))), vec![]),
            (tlv(INTEGER, &tlv(SEQUENCE, &[])), vec![]),
            // Indefinite, oversized and high-tag-number forms.
            (vec![SEQUENCE, 0x80, 0x00, 0x00], vec![]),
            (vec![SEQUENCE, 0x85, 0xff, 0xff, 0xff, 0xff, 0xff], vec![]),
            (vec![SEQUENCE, 0x84, 0xff, 0xff, 0xff, 0xff], vec![]),
            (vec![0x3f, 0x01, 0x00], vec![]),
        ];
        for (der, expected) in cases {
            assert_eq!(common_names(&der), expected, "{der:02x?}");
        }
    }

    #[test]
    fn damaged_certificates_never_panic() {
        let mut params = CertificateParams::new(vec!["mx.example.org".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "mx.example.org");
        let der = params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec();
        assert_eq!(common_names(&der), ["mx.example.org"]);
        for end in 0..der.len() {
            let names = common_names(&der[..end]);
            assert!(names.is_empty() || names == ["mx.example.org"], "{end}");
        }
        for i in 0..der.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = der.clone();
                damaged[i] ^= flip;
                common_names(&damaged);
            }
        }
    }
}
