//! Syslog messages as bytes: a strict parser for RFC 5424 and RFC 3164
//! and the RFC 6587 stream framer (octet counting and LF), sans-IO.
//!
//! It owns the shape of a log line and nothing else: the edge
//! (`node/src/syslog.rs`) owns the sockets, the rule engine (`rules`) what
//! a line means. Senders are hostile: every field is bounded and checked,
//! nothing here panics or allocates per message (the framer keeps one
//! buffer no larger than the maximum message plus a read).
//!
//! Why not a crate: `syslog_loose` (Vector's) is lenient by design (a line
//! it cannot parse becomes a message with no host or program, and it
//! guesses host from program), pulls `chrono` and `nom`, and allocates the
//! structured data; `syslog_rfc5424` reads only one of the two formats.
//! The rules match on host and program, so a strict reading that says why
//! a line was refused is what we want; the timestamp is kept as text
//! (the rules run on arrival time, a sender's clock is not trusted).

/// Which RFC a line followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Rfc5424,
    Rfc3164,
}

/// A parsed line; every field borrows the input. Absent fields (5424's
/// `-`, a 3164 line without a host) are empty strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLine<'a> {
    pub format: Format,
    pub facility: u8,
    pub severity: u8,
    pub timestamp: &'a str,
    pub host: &'a str,
    /// 5424 APP-NAME, 3164 TAG.
    pub app: &'a str,
    pub procid: &'a str,
    pub msgid: &'a str,
    pub msg: &'a str,
}

/// Why a line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty line")]
    Empty,
    #[error("no <PRI> at the start")]
    NoPri,
    #[error("PRI out of range or not 1-3 digits")]
    BadPri,
    #[error("unsupported version after PRI")]
    BadVersion,
    #[error("bad timestamp")]
    BadTimestamp,
    #[error("bad or too long {0}")]
    BadField(&'static str),
    #[error("bad structured data")]
    BadStructuredData,
    #[error("message is not UTF-8")]
    NotUtf8,
}

impl ParseError {
    /// A metrics label.
    pub fn label(self) -> &'static str {
        match self {
            ParseError::Empty => "empty",
            ParseError::NoPri => "no_pri",
            ParseError::BadPri => "bad_pri",
            ParseError::BadVersion => "bad_version",
            ParseError::BadTimestamp => "bad_timestamp",
            ParseError::BadField(_) => "bad_field",
            ParseError::BadStructuredData => "bad_structured_data",
            ParseError::NotUtf8 => "not_utf8",
        }
    }
}

const MAX_HOST: usize = 255;
const MAX_APP: usize = 48;
const MAX_PROCID: usize = 128;
const MAX_MSGID: usize = 32;

/// Parses one syslog message (without framing or trailing newline; a
/// trailing `\n`, `\r\n` or NUL is tolerated). RFC 5424 when a version
/// digit follows the PRI, RFC 3164 otherwise.
pub fn parse(input: &[u8]) -> Result<LogLine<'_>, ParseError> {
    let mut end = input.len();
    while end > 0 && matches!(input[end - 1], b'\n' | b'\r' | 0) {
        end -= 1;
    }
    let input = &input[..end];
    if input.is_empty() {
        return Err(ParseError::Empty);
    }
    let (pri, rest) = parse_pri(input)?;
    let (facility, severity) = (pri >> 3, pri & 7);
    if rest.first().is_some_and(u8::is_ascii_digit) {
        parse_5424(facility, severity, rest)
    } else {
        parse_3164(facility, severity, rest)
    }
}

fn parse_pri(b: &[u8]) -> Result<(u8, &[u8]), ParseError> {
    if b.first() != Some(&b'<') {
        return Err(ParseError::NoPri);
    }
    let close = b
        .iter()
        .take(5)
        .position(|&c| c == b'>')
        .ok_or(ParseError::BadPri)?;
    let digits = &b[1..close];
    // RFC 5424 6.2.1: 1-3 digits, no leading zero except "0" itself.
    if digits.is_empty()
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits.len() > 1 && digits[0] == b'0')
    {
        return Err(ParseError::BadPri);
    }
    let v = digits
        .iter()
        .fold(0u16, |a, &d| a * 10 + u16::from(d - b'0'));
    if v > 191 {
        return Err(ParseError::BadPri);
    }
    Ok((v as u8, &b[close + 1..]))
}

/// Splits off the next space-terminated token (the space is consumed).
fn token(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let sp = b.iter().position(|&c| c == b' ')?;
    Some((&b[..sp], &b[sp + 1..]))
}

/// A 5424 header field: PRINTUSASCII, 1..=max, `-` for nil.
fn field<'a>(t: &'a [u8], max: usize, name: &'static str) -> Result<&'a str, ParseError> {
    if t.is_empty() || t.len() > max || !t.iter().all(|c| (33..=126).contains(c)) {
        return Err(ParseError::BadField(name));
    }
    if t == b"-" {
        return Ok("");
    }
    // All ASCII: cannot fail.
    std::str::from_utf8(t).map_err(|_| ParseError::BadField(name))
}

fn parse_5424(facility: u8, severity: u8, b: &[u8]) -> Result<LogLine<'_>, ParseError> {
    let (ver, b) = token(b).ok_or(ParseError::BadVersion)?;
    if ver != b"1" {
        return Err(ParseError::BadVersion);
    }
    let (ts, b) = token(b).ok_or(ParseError::BadTimestamp)?;
    let timestamp = timestamp_5424(ts)?;
    let (host, b) = token(b).ok_or(ParseError::BadField("hostname"))?;
    let host = field(host, MAX_HOST, "hostname")?;
    let (app, b) = token(b).ok_or(ParseError::BadField("app-name"))?;
    let app = field(app, MAX_APP, "app-name")?;
    let (procid, b) = token(b).ok_or(ParseError::BadField("procid"))?;
    let procid = field(procid, MAX_PROCID, "procid")?;
    // MSGID may end the line when there is no SD... but SD is mandatory
    // ("-" at least), so a space must follow MSGID.
    let (msgid, b) = token(b).ok_or(ParseError::BadField("msgid"))?;
    let msgid = field(msgid, MAX_MSGID, "msgid")?;
    let rest = structured_data(b)?;
    let msg = match rest {
        [] => &[][..],
        [b' ', m @ ..] => m.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(m),
        _ => return Err(ParseError::BadStructuredData),
    };
    let msg = std::str::from_utf8(msg).map_err(|_| ParseError::NotUtf8)?;
    Ok(LogLine {
        format: Format::Rfc5424,
        facility,
        severity,
        timestamp,
        host,
        app,
        procid,
        msgid,
        msg,
    })
}

/// `-` or FULL-DATE "T" FULL-TIME, checked for shape (digits and
/// separators in place), not for calendar sense.
fn timestamp_5424(t: &[u8]) -> Result<&str, ParseError> {
    if t == b"-" {
        return Ok("");
    }
    let shape = t.len() >= 20
        && t.len() <= 32
        && t[..4].iter().all(u8::is_ascii_digit)
        && t[4] == b'-'
        && t[7] == b'-'
        && t[10] == b'T'
        && t[13] == b':'
        && t[16] == b':'
        && t.iter()
            .all(|c| c.is_ascii_digit() || b"-T:.+Z".contains(c));
    let zone = t.ends_with(b"Z") || (t.len() >= 6 && matches!(t[t.len() - 6], b'+' | b'-'));
    if !shape || !zone {
        return Err(ParseError::BadTimestamp);
    }
    std::str::from_utf8(t).map_err(|_| ParseError::BadTimestamp)
}

/// Consumes `-` or one or more SD-ELEMENTs; returns what follows.
fn structured_data(b: &[u8]) -> Result<&[u8], ParseError> {
    if let Some(rest) = b.strip_prefix(b"-") {
        return Ok(rest);
    }
    if b.first() != Some(&b'[') {
        return Err(ParseError::BadStructuredData);
    }
    let mut i = 0;
    while b.get(i) == Some(&b'[') {
        i += 1;
        // SD-ID and PARAM-NAMEs: SD-NAME chars; values quoted with \" \\ \].
        let mut in_value = false;
        loop {
            let c = *b.get(i).ok_or(ParseError::BadStructuredData)?;
            i += 1;
            if in_value {
                match c {
                    b'\\' => i += 1,
                    b'"' => in_value = false,
                    _ => {}
                }
            } else {
                match c {
                    b']' => break,
                    b'"' => in_value = true,
                    b'=' | b' ' => {}
                    33..=126 => {}
                    _ => return Err(ParseError::BadStructuredData),
                }
            }
        }
    }
    b.get(i..).ok_or(ParseError::BadStructuredData)
}

fn ascii<'a>(s: &'a [u8], name: &'static str) -> Result<&'a str, ParseError> {
    std::str::from_utf8(s).map_err(|_| ParseError::BadField(name))
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

fn parse_3164(facility: u8, severity: u8, b: &[u8]) -> Result<LogLine<'_>, ParseError> {
    // "Mmm dd hh:mm:ss " exactly (RFC 3164 4.1.2; day space-padded).
    let ts = b.get(..15).ok_or(ParseError::BadTimestamp)?;
    let digit = |i: usize| ts[i].is_ascii_digit();
    let ok = MONTHS.iter().any(|m| &ts[..3] == *m)
        && ts[3] == b' '
        && (ts[4] == b' ' || digit(4))
        && digit(5)
        && ts[6] == b' '
        && digit(7)
        && digit(8)
        && ts[9] == b':'
        && digit(10)
        && digit(11)
        && ts[12] == b':'
        && digit(13)
        && digit(14)
        && b.get(15) == Some(&b' ');
    if !ok {
        return Err(ParseError::BadTimestamp);
    }
    let timestamp = std::str::from_utf8(ts).map_err(|_| ParseError::BadTimestamp)?;
    let b = &b[16..];
    // HOSTNAME then TAG; a sender that leaves the host out (a local
    // daemon relayed as is) puts the tag first, recognised by its ':'.
    let (first, after_first) = token(b).ok_or(ParseError::BadField("tag"))?;
    let (host, tagged) = if first.ends_with(b":") {
        (&[][..], b)
    } else {
        (first, after_first)
    };
    if host.len() > MAX_HOST || !host.iter().all(|c| (33..=126).contains(c)) {
        return Err(ParseError::BadField("hostname"));
    }
    let (tag, rest) = token(tagged).ok_or(ParseError::BadField("tag"))?;
    let tag = tag.strip_suffix(b":").ok_or(ParseError::BadField("tag"))?;
    let (app, procid) = match tag.iter().position(|&c| c == b'[') {
        Some(open) => {
            let pid = tag[open + 1..]
                .strip_suffix(b"]")
                .ok_or(ParseError::BadField("tag"))?;
            (&tag[..open], pid)
        }
        None => (tag, &[][..]),
    };
    let tag_char = |c: &u8| c.is_ascii_alphanumeric() || b"-_./".contains(c);
    if app.is_empty() || app.len() > MAX_APP || !app.iter().all(tag_char) {
        return Err(ParseError::BadField("tag"));
    }
    if procid.len() > MAX_PROCID || !procid.iter().all(|c| (33..=126).contains(c) && *c != b']') {
        return Err(ParseError::BadField("procid"));
    }
    Ok(LogLine {
        format: Format::Rfc3164,
        facility,
        severity,
        timestamp,
        host: ascii(host, "hostname")?,
        app: ascii(app, "tag")?,
        procid: ascii(procid, "procid")?,
        msgid: "",
        msg: std::str::from_utf8(rest).map_err(|_| ParseError::NotUtf8)?,
    })
}

/// What the framer found next in a TCP stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One message (without its length prefix or LF).
    Message(&'a [u8]),
    /// A message longer than the maximum, skipped whole (its bytes are
    /// dropped as they arrive, never buffered).
    Oversized,
    /// An octet-count that is not a number: the stream cannot be resynced
    /// and should be closed.
    Broken,
}

/// RFC 6587 framing for one TCP connection: octet counting (`LEN SP MSG`)
/// when a frame starts with a digit, LF-terminated otherwise (each frame
/// decides, as rsyslog does). Bounded: at most `max` bytes are buffered.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Consumed prefix of `buf`, compacted on the next `push`.
    start: usize,
    max: usize,
    /// Bytes still to drop of an oversized frame (`usize::MAX`: up to the
    /// next LF).
    skip: usize,
    broken: bool,
}

/// Digits allowed in an octet count (a count with more is broken).
const MAX_COUNT_DIGITS: usize = 9;

impl Framer {
    pub fn new(max: usize) -> Framer {
        Framer {
            buf: Vec::new(),
            start: 0,
            max: max.max(1),
            skip: 0,
            broken: false,
        }
    }

    /// Bytes buffered for a frame not yet complete.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// How much the caller may hand over now: reading no more than this
    /// keeps the buffer within `max` plus a count prefix.
    pub fn room(&self) -> usize {
        (self.max + MAX_COUNT_DIGITS + 2).saturating_sub(self.pending())
    }

    /// Adds bytes read from the stream. Bytes of a frame being skipped are
    /// dropped here, so an endless oversized frame costs no memory.
    pub fn push(&mut self, mut data: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        while self.skip > 0 && !data.is_empty() {
            if self.skip == usize::MAX {
                match data.iter().position(|&c| c == b'\n') {
                    Some(lf) => {
                        self.skip = 0;
                        data = &data[lf + 1..];
                    }
                    None => return,
                }
            } else {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
            }
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, or `None` until more bytes come.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        if self.broken {
            return None;
        }
        loop {
            let b = &self.buf[self.start..];
            let first = *b.first()?;
            if first.is_ascii_digit() {
                let Some(sp) = b.iter().take(MAX_COUNT_DIGITS + 1).position(|&c| c == b' ') else {
                    if b.len() > MAX_COUNT_DIGITS || !b.iter().all(u8::is_ascii_digit) {
                        self.broken = true;
                        return Some(Frame::Broken);
                    }
                    return None;
                };
                let digits = &b[..sp];
                if !digits.iter().all(u8::is_ascii_digit) || digits[0] == b'0' {
                    self.broken = true;
                    return Some(Frame::Broken);
                }
                let len = digits
                    .iter()
                    .fold(0usize, |a, &d| a * 10 + usize::from(d - b'0'));
                let body = sp + 1;
                if len > self.max {
                    let have = b.len() - body;
                    if have >= len {
                        self.start += body + len;
                    } else {
                        self.skip = len - have;
                        self.start = self.buf.len();
                    }
                    return Some(Frame::Oversized);
                }
                if b.len() < body + len {
                    return None;
                }
                let s = self.start;
                self.start += body + len;
                return Some(Frame::Message(&self.buf[s + body..s + body + len]));
            }
            match b.iter().position(|&c| c == b'\n') {
                Some(lf) => {
                    let s = self.start;
                    self.start += lf + 1;
                    let m = &self.buf[s..s + lf];
                    let m = m.strip_suffix(b"\r").unwrap_or(m);
                    if m.len() > self.max {
                        return Some(Frame::Oversized);
                    }
                    if m.is_empty() {
                        continue;
                    }
                    return Some(Frame::Message(m));
                }
                None if b.len() > self.max => {
                    // No LF within the limit: drop what we have and the
                    // rest of the line as it comes.
                    self.skip = usize::MAX;
                    self.start = self.buf.len();
                    return Some(Frame::Oversized);
                }
                None => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5424_logger_line() {
        let l = parse(b"<38>1 2026-11-26T15:00:00.123456+00:00 fw1 sshd 4242 - [timeQuality tzKnown=\"1\" isSynced=\"0\"] Failed password for root from 10.0.0.1 port 47336 ssh2\n").unwrap();
        assert_eq!(l.format, Format::Rfc5424);
        assert_eq!((l.facility, l.severity), (4, 6));
        assert_eq!(l.host, "fw1");
        assert_eq!(l.app, "sshd");
        assert_eq!(l.procid, "4242");
        assert_eq!(l.msgid, "");
        assert_eq!(
            l.msg,
            "Failed password for root from 10.0.0.1 port 47336 ssh2"
        );
    }

    #[test]
    fn rfc5424_nil_fields_bom_and_no_msg() {
        let l = parse(b"<13>1 - - - - - -").unwrap();
        assert_eq!((l.host, l.app, l.msg, l.timestamp), ("", "", "", ""));
        let l = parse(b"<13>1 2026-11-26T15:00:00Z h a - ID47 - \xEF\xBB\xBFhello").unwrap();
        assert_eq!((l.msgid, l.msg), ("ID47", "hello"));
        let l = parse(b"<0>1 2026-11-26T15:00:00Z h a - - [a b=\"x\\\"]y\"][c] m").unwrap();
        assert_eq!(l.msg, "m");
    }

    #[test]
    fn rfc3164_lines() {
        let l = parse(b"<13>Aug 26 13:55:13 vyos sshd[2755]: Failed password for root from 10.0.0.1 port 47336 ssh2").unwrap();
        assert_eq!(l.format, Format::Rfc3164);
        assert_eq!((l.host, l.app, l.procid), ("vyos", "sshd", "2755"));
        assert_eq!(
            l.msg,
            "Failed password for root from 10.0.0.1 port 47336 ssh2"
        );
        let l = parse(b"<13>Aug  6 16:07:59 vyos netplugd: eth1: state DOWN").unwrap();
        assert_eq!(
            (l.app, l.procid, l.msg),
            ("netplugd", "", "eth1: state DOWN")
        );
        // No host: the tag comes first.
        let l = parse(b"<13>Aug  6 16:07:59 sshd[1]: hi").unwrap();
        assert_eq!((l.host, l.app, l.msg), ("", "sshd", "hi"));
    }

    #[test]
    fn malformed_lines_say_why() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"", ParseError::Empty),
            (b"\n", ParseError::Empty),
            (b"hello", ParseError::NoPri),
            (b"<>1 - - - - - -", ParseError::BadPri),
            (b"<192>1 - - - - - -", ParseError::BadPri),
            (b"<013>1 - - - - - -", ParseError::BadPri),
            (b"<1234567", ParseError::BadPri),
            (b"<13>2 - - - - - -", ParseError::BadVersion),
            (b"<13>1 yesterday h a - - -", ParseError::BadTimestamp),
            (b"<13>1 - h a - - [x", ParseError::BadStructuredData),
            (b"<13>1 - h a - - x", ParseError::BadStructuredData),
            (b"<13>1 - h a - - -x", ParseError::BadStructuredData),
            (b"<13>1 - h\x01 a - - -", ParseError::BadField("hostname")),
            (b"<13>1 - h a - - - \xff\xfe", ParseError::NotUtf8),
            (b"<13>Foo 26 13:55:13 h t: m", ParseError::BadTimestamp),
            (b"<13>Aug 26 13:55:13 h t m", ParseError::BadField("tag")),
            (b"<13>Aug 26 13:55:13 h t[1: m", ParseError::BadField("tag")),
            (b"<13>Aug 26", ParseError::BadTimestamp),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let long_app = format!("<13>1 - h {} - - - m", "a".repeat(49));
        assert_eq!(
            parse(long_app.as_bytes()),
            Err(ParseError::BadField("app-name"))
        );
    }

    /// A small deterministic generator: no dependency, same cases each run.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    #[test]
    fn mutated_and_random_input_never_panics_and_fields_stay_inside() {
        let seeds: [&[u8]; 3] = [
            b"<38>1 2026-11-26T15:00:00Z fw1 sshd 42 - [a b=\"c\"] Failed password",
            b"<13>Aug 26 13:55:13 vyos sshd[2755]: Failed password for root",
            b"<13>Aug  6 16:07:59 sshd: x",
        ];
        let mut rng = Lcg(7);
        let mut parsed = 0;
        for i in 0..200_000 {
            let mut v = seeds[i % 3].to_vec();
            for _ in 0..=(rng.next() % 4) {
                let at = (rng.next() as usize) % (v.len() + 1);
                match rng.next() % 3 {
                    0 if at < v.len() => v[at] = rng.next() as u8,
                    1 => v.insert(at, rng.next() as u8),
                    _ => v.truncate(at),
                }
            }
            if let Ok(l) = parse(&v) {
                parsed += 1;
                for f in [l.host, l.app, l.procid, l.msgid] {
                    assert!(!f.contains(' '), "{f:?} in {v:?}");
                }
                assert!(l.host.len() <= MAX_HOST && l.app.len() <= MAX_APP);
                assert!(l.facility < 24 && l.severity < 8);
            }
        }
        assert!(parsed > 10_000, "mutations too destructive: {parsed}");
    }

    fn frames(f: &mut Framer) -> Vec<Result<Vec<u8>, &'static str>> {
        let mut out = Vec::new();
        while let Some(fr) = f.next_frame() {
            out.push(match fr {
                Frame::Message(m) => Ok(m.to_vec()),
                Frame::Oversized => Err("oversized"),
                Frame::Broken => Err("broken"),
            });
        }
        out
    }

    #[test]
    fn octet_counting_and_lf_framing_byte_by_byte() {
        let stream = b"5 hello3 abc\nline one\r\nline two\n\n11 <13>1 - - -";
        // Fed whole and fed one byte at a time: the same frames.
        for chunk in [stream.len(), 1, 2, 7] {
            let mut f = Framer::new(64);
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                f.push(c);
                got.extend(frames(&mut f));
            }
            let want: Vec<Result<Vec<u8>, &str>> = vec![
                Ok(b"hello".to_vec()),
                Ok(b"abc".to_vec()),
                Ok(b"line one".to_vec()),
                Ok(b"line two".to_vec()),
                Ok(b"<13>1 - - -".to_vec()),
            ];
            // The "3 abc" frame leaves "\n" behind: an empty LF frame, skipped.
            assert_eq!(got, want, "chunk {chunk}");
            assert_eq!(f.pending(), 0);
        }
    }

    #[test]
    fn oversized_frames_are_skipped_without_buffering() {
        let mut f = Framer::new(8);
        f.push(b"100 ");
        assert_eq!(frames(&mut f), vec![Err("oversized")]);
        for _ in 0..10 {
            f.push(&[b'x'; 10]);
            assert_eq!(f.pending(), 0);
        }
        f.push(b"2 ok");
        assert_eq!(frames(&mut f), vec![Ok(b"ok".to_vec())]);
        // LF framing: a line longer than the maximum, then a good one.
        f.push(b"abcdefghijkl");
        assert_eq!(frames(&mut f), vec![Err("oversized")]);
        f.push(b"mnop\nfine\n");
        assert_eq!(frames(&mut f), vec![Ok(b"fine".to_vec())]);
        assert!(f.room() <= 8 + MAX_COUNT_DIGITS + 2);
    }

    #[test]
    fn a_bad_count_breaks_the_stream() {
        let mut f = Framer::new(64);
        f.push(b"12x3 hello");
        assert_eq!(frames(&mut f), vec![Err("broken")]);
        let mut f = Framer::new(64);
        f.push(b"1234567890123 x");
        assert_eq!(frames(&mut f), vec![Err("broken")]);
        let mut f = Framer::new(64);
        f.push(b"05 hello");
        assert_eq!(frames(&mut f), vec![Err("broken")]);
    }
}
