//! Retention (`prune`), with restic's semantics: snapshots are grouped (by name and labels);
//! within a group, newest first, `--keep-daily 7` keeps the newest snapshot of each of the last
//! 7 days *that have snapshots*; rules are ORed; `--keep-within D` keeps everything within D
//! of the group's newest snapshot. Calendar buckets are in UTC; weeks are ISO weeks.

use crate::error::{Error, Result};
use crate::snapshot::Manifest;
use chrono::{DateTime, Datelike, Utc};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
    /// Seconds.
    pub within: Option<i64>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        [
            self.last,
            self.hourly,
            self.daily,
            self.weekly,
            self.monthly,
            self.yearly,
        ]
        .iter()
        .all(Option::is_none)
            && self.within.is_none()
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    pub id: String,
    pub name: String,
    pub time: i64,
    pub keep: bool,
    /// Why it is kept (`daily 2`, `within 7d`), empty when it goes.
    pub reasons: Vec<String>,
}

/// `1y2m3d4h` (restic's form: years, months, days, hours) into seconds; months are 30 days.
pub fn parse_duration(s: &str) -> Result<i64> {
    let bad = || Error::Invalid(format!("duration {s:?}: write it like 7d, 2w, 1y6m or 12h"));
    let mut total = 0i64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        num.clear();
        total += n * match c {
            'y' => 365 * 86400,
            'm' => 30 * 86400,
            'w' => 7 * 86400,
            'd' => 86400,
            'h' => 3600,
            _ => return Err(bad()),
        };
    }
    if !num.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

fn group_key(m: &Manifest) -> String {
    let labels: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{} [{}]", m.name, labels.join(","))
}

/// Decides for every snapshot; refuses an empty policy (it would remove everything).
pub fn apply(policy: &Policy, snapshots: &[Manifest]) -> Result<Vec<Decision>> {
    if policy.is_empty() {
        return Err(Error::Invalid(
            "no --keep-* option given; refusing to remove every snapshot".into(),
        ));
    }
    let mut groups: BTreeMap<String, Vec<&Manifest>> = BTreeMap::new();
    for m in snapshots {
        groups.entry(group_key(m)).or_default().push(m);
    }
    let mut out = Vec::new();
    for (_, mut group) in groups {
        group.sort_by(|a, b| (b.time, b.time_nsec, &b.id).cmp(&(a.time, a.time_nsec, &a.id))); // newest first
        let newest = group[0].time;
        type Bucket = fn(&DateTime<Utc>) -> i64;
        let rules: [(&str, Option<u32>, Bucket); 6] = [
            ("last", policy.last, |_| i64::MIN),
            ("hourly", policy.hourly, |t| t.timestamp() / 3600),
            ("daily", policy.daily, |t| t.num_days_from_ce() as i64),
            ("weekly", policy.weekly, |t| {
                let w = t.iso_week();
                w.year() as i64 * 100 + w.week() as i64
            }),
            ("monthly", policy.monthly, |t| {
                t.year() as i64 * 100 + t.month() as i64
            }),
            ("yearly", policy.yearly, |t| t.year() as i64),
        ];
        let mut left: Vec<Option<u32>> = rules.iter().map(|r| r.1).collect();
        let mut last_bucket: Vec<Option<i64>> = vec![None; rules.len()];
        for (seq, m) in group.iter().enumerate() {
            let t = DateTime::<Utc>::from_timestamp(m.time, 0).unwrap_or_default();
            let mut reasons = Vec::new();
            for (i, (name, _, bucket)) in rules.iter().enumerate() {
                let Some(n) = left[i] else { continue };
                if n == 0 {
                    continue;
                }
                // "last" keeps each snapshot: its bucket is the snapshot itself.
                let b = if *name == "last" {
                    seq as i64
                } else {
                    bucket(&t)
                };
                if last_bucket[i] != Some(b) {
                    last_bucket[i] = Some(b);
                    left[i] = Some(n - 1);
                    reasons.push(format!("{name} {}", rules[i].1.unwrap() - n + 1));
                }
            }
            if let Some(w) = policy.within {
                if m.time >= newest - w {
                    reasons.push(format!("within {}d of newest", w / 86400));
                }
            }
            out.push(Decision {
                id: m.id.clone(),
                name: group_key(m),
                time: m.time,
                keep: !reasons.is_empty(),
                reasons,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{SnapshotKind, SnapshotStats};

    fn snap(id: &str, time: i64) -> Manifest {
        Manifest {
            id: id.into(),
            name: "web".into(),
            kind: SnapshotKind::Tree,
            time,
            time_nsec: 0,
            labels: Default::default(),
            parent: None,
            data_sha256: String::new(),
            data_len: 0,
            image_size: None,
            block_size: None,
            stats: SnapshotStats::default(),
        }
    }

    const DAY: i64 = 86400;
    // 2026-01-05 00:00 UTC is a Monday.
    const MON: i64 = 1_767_571_200;

    #[test]
    fn daily_keeps_newest_of_each_day_with_snapshots() {
        // Two snapshots a day for 10 days.
        let snaps: Vec<_> = (0..20)
            .map(|i| snap(&format!("s{i:02}"), MON + (i / 2) * DAY + (i % 2) * 3600))
            .collect();
        let d = apply(
            &Policy {
                daily: Some(3),
                ..Default::default()
            },
            &snaps,
        )
        .unwrap();
        let kept: Vec<_> = d.iter().filter(|d| d.keep).map(|d| d.id.as_str()).collect();
        assert_eq!(kept, vec!["s19", "s17", "s15"]);
    }

    #[test]
    fn rules_are_ored_and_reasons_given() {
        let snaps: Vec<_> = (0..30)
            .map(|i| snap(&format!("s{i:02}"), MON + i * DAY))
            .collect();
        let p = Policy {
            last: Some(2),
            weekly: Some(2),
            ..Default::default()
        };
        let d = apply(&p, &snaps).unwrap();
        let kept: Vec<_> = d.iter().filter(|d| d.keep).collect();
        // s29 (last 1, weekly 1), s28 (last 2), s27 = Sunday of the previous ISO week (weekly 2).
        assert_eq!(
            kept.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            vec!["s29", "s28", "s27"]
        );
        assert_eq!(kept[0].reasons, vec!["last 1", "weekly 1"]);
    }

    #[test]
    fn within_and_grouping() {
        let mut snaps: Vec<_> = (0..10)
            .map(|i| snap(&format!("a{i}"), MON + i * DAY))
            .collect();
        let mut other = snap("b0", MON);
        other.labels.insert("guest".into(), "db1".into());
        snaps.push(other);
        let p = Policy {
            within: Some(parse_duration("3d").unwrap()),
            ..Default::default()
        };
        let d = apply(&p, &snaps).unwrap();
        let kept: Vec<_> = d.iter().filter(|d| d.keep).map(|d| d.id.as_str()).collect();
        // Group web: a9 back to a6 (within 3 days of a9); group web+db1: its only snapshot.
        assert_eq!(kept, vec!["a9", "a8", "a7", "a6", "b0"]);
    }

    #[test]
    fn empty_policy_is_refused() {
        assert!(apply(&Policy::default(), &[snap("x", 0)]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), 7 * DAY);
        assert_eq!(parse_duration("1y2m").unwrap(), 425 * DAY);
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("x").is_err());
    }
}
