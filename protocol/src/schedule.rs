//! Wake schedules for GXP cameras and the wake handshake's decision, as pure logic, plus the
//! in-memory [`ScheduleBook`] the device actors read so that answering `"Alive"` needs no
//! database round trip. The book is loaded from `device_schedules` at start, kept current by
//! the admin API and NOTIFY, and written back (next wake per device) through the Postgres sink.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::ids::DeviceId;

/// How often a device wakes to capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleMode {
    /// `captures_per_day` captures spread evenly (default 2: every 12 hours).
    PerDay {
        /// 1..=1440.
        captures_per_day: u32,
    },
    /// Fixed local wake times (`"08:00"`, `"17:30"`).
    Fixed {
        /// `HH:MM`, in the schedule's time zone.
        times: Vec<String>,
    },
    /// Test mode: every N minutes.
    EveryMinutes {
        /// 1..=1440.
        minutes: u32,
    },
}

/// A device's schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// The mode and its parameters.
    #[serde(flatten)]
    pub mode: ScheduleMode,
    /// IANA time zone for fixed times and for `ACK_OK`'s `next_wake_time` (default UTC).
    #[serde(default = "utc_name")]
    pub timezone: String,
}

fn utc_name() -> String {
    "UTC".into()
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            mode: ScheduleMode::PerDay {
                captures_per_day: 2,
            },
            timezone: utc_name(),
        }
    }
}

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Unknown IANA time zone.
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
    /// A count or interval outside 1..=1440.
    #[error("{0} must be between 1 and 1440")]
    Range(&'static str),
    /// A fixed time that is not `HH:MM`.
    #[error("wake time {0:?} is not HH:MM")]
    Time(String),
    /// Fixed mode without times, or too many.
    #[error("fixed mode needs 1 to 48 wake times")]
    Times,
}

/// A validated schedule, ready to compute wake times.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledSchedule {
    /// As configured.
    pub source: Schedule,
    tz: Tz,
    times: Vec<NaiveTime>,
}

impl Schedule {
    /// Validates the schedule.
    pub fn compile(self) -> Result<CompiledSchedule, ScheduleError> {
        let tz: Tz = self
            .timezone
            .parse()
            .map_err(|_| ScheduleError::TimeZone(self.timezone.clone()))?;
        let mut times = Vec::new();
        match &self.mode {
            ScheduleMode::PerDay { captures_per_day } if !(1..=1440).contains(captures_per_day) => {
                return Err(ScheduleError::Range("captures_per_day"))
            }
            ScheduleMode::EveryMinutes { minutes } if !(1..=1440).contains(minutes) => {
                return Err(ScheduleError::Range("minutes"))
            }
            ScheduleMode::Fixed { times: raw } => {
                if raw.is_empty() || raw.len() > 48 {
                    return Err(ScheduleError::Times);
                }
                for t in raw {
                    let parsed = NaiveTime::parse_from_str(t, "%H:%M")
                        .map_err(|_| ScheduleError::Time(t.clone()))?;
                    times.push(parsed);
                }
                times.sort();
            }
            _ => {}
        }
        Ok(CompiledSchedule {
            source: self,
            tz,
            times,
        })
    }
}

impl CompiledSchedule {
    /// The next wake after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match &self.source.mode {
            ScheduleMode::PerDay { captures_per_day } => {
                now + Duration::minutes(i64::from(1440 / captures_per_day.max(&1)))
            }
            ScheduleMode::EveryMinutes { minutes } => now + Duration::minutes(i64::from(*minutes)),
            ScheduleMode::Fixed { .. } => self.next_fixed(now),
        }
    }

    fn next_fixed(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let local = now.with_timezone(&self.tz).date_naive();
        for day in 0..3 {
            let date = local + Duration::days(day);
            for t in &self.times {
                // A local time skipped by a DST change has no instant; take the next one.
                if let Some(at) = self.tz.from_local_datetime(&date.and_time(*t)).earliest() {
                    let at = at.with_timezone(&Utc);
                    // A time within the wake tolerance is the one being served now (a device
                    // that woke 20 s early for 08:00 captures for 08:00, next is the one after).
                    if at > now + Duration::seconds(WAKE_TOLERANCE_SECS) {
                        return at;
                    }
                }
            }
        }
        now + Duration::days(1)
    }

    /// `H:MMAM` / `H:MMPM` in the schedule's time zone, as `ACK_OK.next_wake_time`.
    pub fn local_clock(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.tz).format("%-I:%M%p").to_string()
    }
}

/// What the engine answers a wake-up hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeAnswer {
    /// Take a picture now; the next wake was set to `next`.
    Capture {
        /// The next wake, recorded.
        next: DateTime<Utc>,
    },
    /// Sleep until `until`.
    Sleep {
        /// The recorded next wake.
        until: DateTime<Utc>,
    },
}

/// How early a device may wake and still be due: devices wake ±30 s.
pub const WAKE_TOLERANCE_SECS: i64 = 30;

/// The handshake: capture when the device was never scheduled or its time has come (the
/// original worker's rule), else sleep until the recorded wake.
pub fn answer_wake(
    schedule: &CompiledSchedule,
    next_wake: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> WakeAnswer {
    match next_wake {
        Some(at) if now + Duration::seconds(WAKE_TOLERANCE_SECS) < at => {
            WakeAnswer::Sleep { until: at }
        }
        _ => WakeAnswer::Capture {
            next: schedule.next_after(now),
        },
    }
}

/// One device's entry in the book.
#[derive(Debug, Clone, Default)]
pub struct DeviceWake {
    /// Its schedule, when configured (else the default).
    pub schedule: Option<Arc<CompiledSchedule>>,
    /// The recorded next wake.
    pub next_wake: Option<DateTime<Utc>>,
}

/// Every device's schedule and next wake, shared by the device actors (read on `"Alive"`)
/// and the control plane (which edits schedules). Short critical sections only.
#[derive(Debug)]
pub struct ScheduleBook {
    default: Arc<CompiledSchedule>,
    devices: RwLock<HashMap<DeviceId, DeviceWake>>,
}

impl Default for ScheduleBook {
    fn default() -> Self {
        Self::new()
    }
}

impl ScheduleBook {
    /// An empty book with the default schedule (2 captures a day, UTC).
    pub fn new() -> Self {
        Self {
            default: Arc::new(
                Schedule::default()
                    .compile()
                    .expect("the default schedule is valid"),
            ),
            devices: RwLock::new(HashMap::new()),
        }
    }

    /// A device's entry (the default schedule when none is set).
    pub fn get(&self, id: &DeviceId) -> (Arc<CompiledSchedule>, Option<DateTime<Utc>>) {
        let map = self.devices.read().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some(w) => (
                w.schedule.clone().unwrap_or_else(|| self.default.clone()),
                w.next_wake,
            ),
            None => (self.default.clone(), None),
        }
    }

    /// Records a device's next wake.
    pub fn set_next_wake(&self, id: &DeviceId, at: DateTime<Utc>) {
        let mut map = self.devices.write().unwrap_or_else(|e| e.into_inner());
        map.entry(id.clone()).or_default().next_wake = Some(at);
    }

    /// Sets (or with `None` clears) a device's schedule and its recorded next wake.
    pub fn set(
        &self,
        id: &DeviceId,
        schedule: Option<CompiledSchedule>,
        next_wake: Option<DateTime<Utc>>,
    ) {
        let mut map = self.devices.write().unwrap_or_else(|e| e.into_inner());
        let e = map.entry(id.clone()).or_default();
        e.schedule = schedule.map(Arc::new);
        e.next_wake = next_wake;
    }

    /// Devices in the book.
    pub fn len(&self) -> usize {
        self.devices.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_never_scheduled_device_captures_then_sleeps_until_its_interval_has_passed() {
        let s = Schedule::default().compile().unwrap();
        let now = at("2025-10-07T04:00:00Z");
        let first = answer_wake(&s, None, now);
        let WakeAnswer::Capture { next } = first else {
            panic!("{first:?}")
        };
        assert_eq!(next, at("2025-10-07T16:00:00Z"), "2 a day: 12 h later");
        let again = answer_wake(&s, Some(next), now + Duration::minutes(1));
        assert_eq!(again, WakeAnswer::Sleep { until: next });
        let due = answer_wake(&s, Some(next), next - Duration::seconds(10));
        assert!(matches!(due, WakeAnswer::Capture { .. }), "within ±30 s");
    }

    #[test]
    fn fixed_times_follow_the_local_time_zone_and_the_ack_clock_is_local() {
        let s = Schedule {
            mode: ScheduleMode::Fixed {
                times: vec!["17:30".into(), "08:00".into()],
            },
            timezone: "Europe/Paris".into(),
        }
        .compile()
        .unwrap();
        // 10:00 UTC = 12:00 in Paris (CEST): next is 17:30 local = 15:30 UTC.
        let next = s.next_after(at("2025-10-07T10:00:00Z"));
        assert_eq!(next, at("2025-10-07T15:30:00Z"));
        assert_eq!(s.local_clock(next), "5:30PM");
        // A device waking 20 s early for 17:30 captures for it; its next wake is tomorrow's 08:00.
        assert_eq!(
            s.next_after(at("2025-10-07T15:29:40Z")),
            at("2025-10-08T06:00:00Z")
        );
        // After the last time of the day: tomorrow's first.
        assert_eq!(
            s.next_after(at("2025-10-07T20:00:00Z")),
            at("2025-10-08T06:00:00Z")
        );
    }

    #[test]
    fn test_mode_wakes_every_n_minutes_and_bad_schedules_are_refused() {
        let s = Schedule {
            mode: ScheduleMode::EveryMinutes { minutes: 5 },
            timezone: "UTC".into(),
        }
        .compile()
        .unwrap();
        assert_eq!(
            s.next_after(at("2025-10-07T10:00:00Z")),
            at("2025-10-07T10:05:00Z")
        );
        assert_eq!(s.local_clock(at("2025-10-07T00:05:00Z")), "12:05AM");
        let bad_tz = Schedule {
            timezone: "Mars/Olympus".into(),
            ..Schedule::default()
        };
        assert!(matches!(bad_tz.compile(), Err(ScheduleError::TimeZone(_))));
        let bad_time = Schedule {
            mode: ScheduleMode::Fixed {
                times: vec!["25:00".into()],
            },
            timezone: "UTC".into(),
        };
        assert!(matches!(bad_time.compile(), Err(ScheduleError::Time(_))));
        let zero = Schedule {
            mode: ScheduleMode::PerDay {
                captures_per_day: 0,
            },
            timezone: "UTC".into(),
        };
        assert!(matches!(zero.compile(), Err(ScheduleError::Range(_))));
    }

    #[test]
    fn schedules_read_the_api_json() {
        let s: Schedule = serde_json::from_str(r#"{"mode":"every_minutes","minutes":5}"#).unwrap();
        assert_eq!(s.mode, ScheduleMode::EveryMinutes { minutes: 5 });
        assert_eq!(s.timezone, "UTC");
        let book = ScheduleBook::new();
        let id = DeviceId::parse("AABBCCDDEEFF").unwrap();
        assert_eq!(book.get(&id).1, None);
        book.set_next_wake(&id, at("2025-10-07T10:05:00Z"));
        assert_eq!(book.get(&id).1, Some(at("2025-10-07T10:05:00Z")));
    }
}
