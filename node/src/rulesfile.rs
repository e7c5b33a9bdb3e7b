//! The responder's rules file (TOML) read into the core's
//! [`RuleSpec`]s, with errors naming the rule and key. Shared by `shoal
//! run` (`[syslog] rules`) and `shoal rules test`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use shoal_core::rules::{ActionSpec, Net, NetList, RuleSet, RuleSpec};

use crate::config::ConfigError;

/// Largest rules file read.
const MAX_RULES_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    /// Addresses never acted on (this cluster's own networks, monitors).
    #[serde(default)]
    ignore: Vec<String>,
    #[serde(default)]
    rules: Vec<RuleToml>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleToml {
    name: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    program: Option<String>,
    pattern: String,
    /// fail2ban style: `maxretry` events within `findtime_s` act...
    #[serde(default)]
    maxretry: Option<u32>,
    #[serde(default)]
    findtime_s: Option<u64>,
    /// ...or the bucket itself: `capacity` held, one leaks every
    /// `leak_every_ms`; the event that finds it full acts.
    #[serde(default)]
    capacity: Option<u32>,
    #[serde(default)]
    leak_every_ms: Option<u64>,
    action: String,
    ttl_s: u64,
    /// `mark`: `suspicious` (default) or `legitimate`.
    #[serde(default)]
    mark: Option<String>,
    /// `mode`: the resource and level raised.
    #[serde(default)]
    resource: Option<u64>,
    #[serde(default)]
    level: Option<u8>,
    /// `block`: the prefix blocked around an IPv4 address (32: the
    /// address alone) and around an IPv6 one (64: the subscriber's /64).
    #[serde(default)]
    prefix_v4: Option<u8>,
    #[serde(default)]
    prefix_v6: Option<u8>,
}

/// Longest action TTL: a day (records carry milliseconds in 32 bits).
const MAX_TTL_S: u64 = 86_400;

fn bad(rule: &str, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("rules[{rule}].{key}"),
        message: message.into(),
    }
}

impl RuleToml {
    fn spec(&self) -> Result<RuleSpec, ConfigError> {
        let n = self.name.as_str();
        if n.is_empty() || n.len() > 64 || !n.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(bad(n, "name", "1-64 printable characters, no spaces"));
        }
        let (capacity, leak_every) = match (
            self.maxretry,
            self.findtime_s,
            self.capacity,
            self.leak_every_ms,
        ) {
            (Some(m), Some(f), None, None) if m >= 1 && f >= 1 => {
                RuleSpec::leak_from_findtime(m, Duration::from_secs(f))
            }
            (None, None, Some(c), Some(l)) if l >= 1 => (c, Duration::from_millis(l)),
            _ => return Err(bad(
                n,
                "maxretry",
                "give maxretry (>= 1) and findtime_s (>= 1), or capacity and leak_every_ms (>= 1)",
            )),
        };
        if self.ttl_s == 0 || self.ttl_s > MAX_TTL_S {
            return Err(bad(n, "ttl_s", format!("1..={MAX_TTL_S}")));
        }
        let ttl = Duration::from_secs(self.ttl_s);
        if self.action != "block" && (self.prefix_v4.is_some() || self.prefix_v6.is_some()) {
            return Err(bad(
                n,
                "prefix_v4",
                "prefix_v4 and prefix_v6 are for action block",
            ));
        }
        let action = match self.action.as_str() {
            "block" => {
                let (v4, v6) = (self.prefix_v4.unwrap_or(32), self.prefix_v6.unwrap_or(64));
                if !(1..=32).contains(&v4) {
                    return Err(bad(n, "prefix_v4", "1..=32"));
                }
                if !(1..=128).contains(&v6) {
                    return Err(bad(n, "prefix_v6", "1..=128"));
                }
                ActionSpec::Block {
                    ttl,
                    prefix_v4: v4,
                    prefix_v6: v6,
                }
            }
            "mark" => ActionSpec::Mark {
                suspicious: match self.mark.as_deref() {
                    None | Some("suspicious") => true,
                    Some("legitimate") => false,
                    Some(o) => {
                        return Err(bad(n, "mark", format!("`{o}`: suspicious or legitimate")))
                    }
                },
                ttl,
            },
            "mode" => match (self.resource, self.level) {
                (Some(resource), Some(level)) if (1..=3).contains(&level) => ActionSpec::Mode {
                    resource,
                    level,
                    ttl,
                },
                _ => return Err(bad(n, "level", "mode needs resource and level 1..=3")),
            },
            o => return Err(bad(n, "action", format!("`{o}`: block, mark or mode"))),
        };
        Ok(RuleSpec {
            name: self.name.clone(),
            host: self.host.clone(),
            program: self.program.clone(),
            pattern: self.pattern.clone(),
            capacity,
            leak_every,
            action,
        })
    }
}

/// Parses rules text and compiles it.
pub fn parse_rules(text: &str) -> Result<RuleSet, ConfigError> {
    let file: RulesFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: "rules".into(),
        message: e.to_string(),
    })?;
    let mut ignore = Vec::with_capacity(file.ignore.len());
    for s in &file.ignore {
        ignore.push(s.parse::<Net>().map_err(|e| ConfigError::Invalid {
            key: "ignore".into(),
            message: e.to_string(),
        })?);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut specs = Vec::with_capacity(file.rules.len());
    for r in &file.rules {
        if !seen.insert(r.name.as_str()) {
            return Err(bad(&r.name, "name", "used twice"));
        }
        specs.push(r.spec()?);
    }
    RuleSet::compile(&specs, NetList(ignore)).map_err(|e| ConfigError::Invalid {
        key: "rules".into(),
        message: e.to_string(),
    })
}

/// Reads and compiles a rules file.
pub fn load_rules(path: &Path) -> Result<RuleSet, ConfigError> {
    let text =
        crate::config::read_bounded(path, MAX_RULES_BYTES).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    parse_rules(&text).map_err(|e| match e {
        ConfigError::Parse { message, .. } => ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        },
        other => other,
    })
}

/// What `shoal rules test` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TestSummary {
    pub lines: u64,
    pub malformed: u64,
    pub matched: u64,
    pub ignored: u64,
    pub bad_address: u64,
    /// Would-be actions: (line number, rule, address).
    pub actions: Vec<(u64, String, std::net::IpAddr)>,
    /// Matches per rule, in rule order.
    pub per_rule: Vec<(String, u64)>,
}

/// Seconds from a line's timestamp, to replay a file on its own clock:
/// RFC 3339 (5424) as days since 1970, RFC 3164 (`Mmm dd hh:mm:ss`, no
/// year) within one year. `None` when absent or unreadable.
fn line_seconds(ts: &str) -> Option<u64> {
    let num = |s: &str| s.trim().parse::<u64>().ok();
    let hms = |s: &str| -> Option<u64> {
        let mut it = s.get(..8)?.split(':');
        Some(num(it.next()?)? * 3600 + num(it.next()?)? * 60 + num(it.next()?)?)
    };
    if ts.len() >= 19 && ts.as_bytes().get(10) == Some(&b'T') {
        let (y, m, d) = (num(&ts[..4])?, num(&ts[5..7])?, num(&ts[8..10])?);
        // Days from civil (Howard Hinnant's algorithm), years >= 1970.
        let y = if m <= 2 { y - 1 } else { y };
        let era = y / 400;
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = (era * 146_097 + doe).checked_sub(719_468)?;
        return Some(days * 86_400 + hms(&ts[11..])?);
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|m| ts.starts_with(m))? as u64;
    let d = num(ts.get(4..6)?)?;
    Some((m * 31 + d) * 86_400 + hms(ts.get(7..)?)?)
}

/// An action in words, as `shoal rules test` prints it: `block
/// 203.0.113.0/24 for 600s`, `mark suspicious for 3600s`, `mode 2 on
/// resource 42 for 300s`.
pub(crate) fn describe(action: ActionSpec, addr: std::net::IpAddr) -> String {
    match action {
        ActionSpec::Block {
            ttl,
            prefix_v4,
            prefix_v6,
        } => match shoal_core::rules::block_prefix(addr, prefix_v4, prefix_v6) {
            Some(p) => format!("block {p} for {}s", ttl.as_secs()),
            None => format!("block {addr}: bad prefix length"),
        },
        ActionSpec::Mark { suspicious, ttl } => format!(
            "mark {} for {}s",
            if suspicious {
                "suspicious"
            } else {
                "legitimate"
            },
            ttl.as_secs()
        ),
        ActionSpec::Mode {
            resource,
            level,
            ttl,
        } => format!("mode {level} on resource {resource} for {}s", ttl.as_secs()),
    }
}

/// Runs a log file through the rules as the node would, on the lines'
/// own clock (all at one instant when they carry no time), and writes
/// each match and would-be action to `out`. Lines without a `<PRI>` (a
/// plain `/var/log/auth.log`) are read as RFC 3164 with PRI 13.
pub fn test_log(
    rules: RuleSet,
    log: impl std::io::BufRead,
    out: &mut impl std::io::Write,
    verbose: bool,
) -> std::io::Result<TestSummary> {
    use shoal_core::rules::{ClusterBuckets, Miss, Outcome, Responder};
    let mut per_rule: Vec<u64> = vec![0; rules.len()];
    let base = std::time::Instant::now();
    // The node's buckets, alone: no peers.
    let share = ((1 << 20) / rules.len().max(1)).clamp(1024, 65_536);
    let buckets = ClusterBuckets::new(&rules, share, base, 0);
    let mut r = Responder::new(rules, buckets);
    let mut sum = TestSummary::default();
    let mut first: Option<u64> = None;
    let mut with_pri = Vec::new();
    for (i, line) in log.split(b'\n').enumerate() {
        let line = line?;
        let n = i as u64 + 1;
        sum.lines += 1;
        let bytes: &[u8] = if line.first() == Some(&b'<') {
            &line
        } else {
            with_pri.clear();
            with_pri.extend_from_slice(b"<13>");
            with_pri.extend_from_slice(&line);
            &with_pri
        };
        let l = match shoal_core::syslog::parse(bytes) {
            Ok(l) => l,
            Err(e) => {
                sum.malformed += 1;
                if verbose {
                    writeln!(out, "line {n}: malformed: {e}")?;
                }
                continue;
            }
        };
        let secs = line_seconds(l.timestamp).unwrap_or(0);
        let t0 = *first.get_or_insert(secs);
        let now = base + std::time::Duration::from_secs(secs.saturating_sub(t0));
        match r.observe(now, l.host, l.app, l.msg) {
            // `rules test` reads a file: every line may block.
            Outcome::Miss(Miss::NoRule | Miss::Untrusted) => {}
            Outcome::Miss(Miss::Ignored) => sum.ignored += 1,
            Outcome::Miss(Miss::BadAddress) => sum.bad_address += 1,
            Outcome::Counted { hit, level } => {
                sum.matched += 1;
                per_rule[hit.rule] += 1;
                if verbose {
                    let name = r.rules.name(hit.rule);
                    writeln!(out, "line {n}: {name} {} level {level}", hit.addr)?;
                }
            }
            Outcome::Dropped { hit } => {
                sum.matched += 1;
                per_rule[hit.rule] += 1;
            }
            Outcome::Act { hit, action } => {
                sum.matched += 1;
                per_rule[hit.rule] += 1;
                let name = r.rules.name(hit.rule).to_string();
                writeln!(
                    out,
                    "line {n}: {name} {} -> {}",
                    hit.addr,
                    describe(action, hit.addr)
                )?;
                sum.actions.push((n, name, hit.addr));
            }
        }
    }
    sum.per_rule = per_rule
        .into_iter()
        .enumerate()
        .map(|(i, c)| (r.rules.name(i).to_string(), c))
        .collect();
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
ignore = ["10.0.0.0/8"]

[[rules]]
name = "sshd"
program = "sshd"
pattern = 'Failed password for (?:invalid user )?\S+ from <ADDR> port [0-9]+(?: ssh2)?'
maxretry = 5
findtime_s = 600
action = "mark"
ttl_s = 3600

[[rules]]
name = "web"
pattern = 'bad login from <ADDR>'
capacity = 10
leak_every_ms = 1000
action = "mode"
resource = 7
level = 2
ttl_s = 60
"#;

    #[test]
    fn test_log_finds_the_ban_and_not_the_injected_address() {
        let log = "\
Aug 26 13:55:13 vyos sshd[1]: Failed password for invalid user 1.2.3.4 from 5.6.7.8 port 22 ssh2
Aug 26 13:55:14 vyos sshd[1]: Failed password for invalid user 1.2.3.4 from 5.6.7.9 port 22 ssh2
Aug 26 13:55:15 vyos sshd[1]: Failed password for invalid user x from 1.2.3.4 port 22 from 5.6.7.10 port 22 ssh2
<38>1 2026-08-26T13:55:16Z vyos sshd 1 - - Failed password for root from 9.9.9.9 port 1 ssh2
Aug 26 13:55:17 vyos sshd[1]: Failed password for root from 9.9.9.9 port 1 ssh2
Aug 26 13:55:18 vyos sshd[1]: Failed password for root from 10.1.1.1 port 1 ssh2
garbage
Aug 26 13:55:19 vyos sshd[1]: Failed password for root from 9.9.9.9 port 1 ssh2
Aug 26 13:55:20 vyos sshd[1]: Failed password for root from 9.9.9.9 port 1 ssh2
Aug 26 13:55:21 vyos sshd[1]: Failed password for root from 9.9.9.9 port 1 ssh2
";
        let mut out = Vec::new();
        let sum = test_log(parse_rules(GOOD).unwrap(), log.as_bytes(), &mut out, true).unwrap();
        let text = String::from_utf8(out).unwrap();
        // maxretry 5: the fifth line from 9.9.9.9 acts (the 5424 line counts too).
        assert_eq!(
            sum.actions,
            vec![(10, "sshd".to_string(), "9.9.9.9".parse().unwrap())],
            "{text}"
        );
        assert_eq!(
            (sum.lines, sum.malformed, sum.ignored, sum.matched),
            (10, 1, 1, 7),
            "{text}"
        );
        assert!(!text.contains("1.2.3.4"), "{text}");
        assert!(text.contains("line 1: sshd 5.6.7.8 level 1"), "{text}");
    }

    #[test]
    fn block_rules_print_the_prefix_they_would_block() {
        let rules = GOOD.replace("action = \"mark\"", "action = \"block\"\nprefix_v4 = 24");
        let set = parse_rules(&rules).unwrap();
        assert!(matches!(
            set.action(0),
            ActionSpec::Block {
                prefix_v4: 24,
                prefix_v6: 64,
                ..
            }
        ));
        let log = (0..5)
            .map(|i| format!("Aug 26 13:55:1{i} vyos sshd[1]: Failed password for root from 203.0.113.9 port 22 ssh2\n"))
            .collect::<String>()
            + "Aug 26 13:56:00 vyos sshd[1]: Failed password for root from 2001:db8:7:8::9 port 22 ssh2\n";
        let mut out = Vec::new();
        let sum = test_log(set, log.as_bytes(), &mut out, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(sum.actions.len(), 1, "{text}");
        assert!(
            text.contains("line 5: sshd 203.0.113.9 -> block 203.0.113.0/24 for 3600s"),
            "{text}"
        );
        assert_eq!(
            describe(
                ActionSpec::Block {
                    ttl: Duration::from_secs(60),
                    prefix_v4: 24,
                    prefix_v6: 64
                },
                "2001:db8:7:8::9".parse().unwrap()
            ),
            "block 2001:db8:7:8::/64 for 60s"
        );
    }

    #[test]
    fn line_clock() {
        assert_eq!(line_seconds("1970-01-02T00:00:01Z"), Some(86_401));
        assert_eq!(
            line_seconds("2026-11-26T15:00:00.5+01:00").map(|s| s % 86_400),
            Some(54_000)
        );
        assert_eq!(
            line_seconds("Aug 26 13:55:14").unwrap() - line_seconds("Aug 26 13:55:13").unwrap(),
            1
        );
        assert_eq!(line_seconds(""), None);
        assert_eq!(line_seconds("Foo"), None);
    }

    #[test]
    fn a_good_file() {
        let set = parse_rules(GOOD).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.name(1), "web");
        assert!(matches!(
            set.action(1),
            ActionSpec::Mode {
                resource: 7,
                level: 2,
                ..
            }
        ));
    }

    #[test]
    fn bad_files_name_the_key() {
        for (edit, key) in [
            (GOOD.replace("maxretry = 5\n", ""), "rules[sshd].maxretry"),
            (
                GOOD.replace("ttl_s = 3600", "ttl_s = 0"),
                "rules[sshd].ttl_s",
            ),
            (
                GOOD.replace("action = \"mark\"", "action = \"ban\""),
                "rules[sshd].action",
            ),
            (GOOD.replace("level = 2", "level = 9"), "rules[web].level"),
            (GOOD.replace("10.0.0.0/8", "10.0.0.0/99"), "ignore"),
            (
                GOOD.replace("name = \"web\"", "name = \"sshd\""),
                "rules[sshd].name",
            ),
            (GOOD.replace("from <ADDR>'", "from x'"), "rules"),
            (
                GOOD.replace("ttl_s = 3600", "ttl_s = 3600\nprefix_v4 = 24"),
                "rules[sshd].prefix_v4",
            ),
            (
                GOOD.replace("action = \"mark\"", "action = \"block\"\nprefix_v4 = 0"),
                "rules[sshd].prefix_v4",
            ),
            (
                GOOD.replace("action = \"mark\"", "action = \"block\"\nprefix_v6 = 129"),
                "rules[sshd].prefix_v6",
            ),
        ] {
            match parse_rules(&edit) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        }
        assert!(matches!(
            parse_rules("[[rules]]\nnope = 1\n"),
            Err(ConfigError::Parse { .. })
        ));
    }
}
