//! `[alerts]`: thresholds behind the fleet gauges that alert rules read (`src/fleet_stats.rs`,
//! `dashboards/alerts.yml`). The rules themselves compare the gauges with 0; what counts as
//! "low" is decided here, where the data is, so that the gauge needs no device id label.

use serde::{Deserialize, Deserializer, Serialize};

/// `[alerts]`: thresholds for the fleet gauges.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// A device whose latest `battery_v` (table `devices`) is below this many volts counts in
    /// `fleetflow_devices_low_battery`. Must be a positive, finite number. Default 3.4 (a
    /// single Li-ion cell with about 10 % charge left under load).
    #[serde(default = "default_low_battery_v", deserialize_with = "positive_volts")]
    pub low_battery_v: f64,
}

fn default_low_battery_v() -> f64 {
    3.4
}

/// Refuses a threshold that would count every device (NaN: PostgreSQL sorts it above every
/// number) or none (0 or less, infinity).
fn positive_volts<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be a positive number of volts, got {v}"
        )))
    }
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            low_battery_v: default_low_battery_v(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn the_example_config_sets_the_low_battery_threshold() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fleetflow.example.toml"
        ))
        .unwrap();
        let cfg = Config::from_toml(&text).unwrap();
        assert_eq!(cfg.alerts.low_battery_v, 3.4);
    }

    #[test]
    fn the_low_battery_threshold_defaults_to_3_4_volts() {
        assert_eq!(Config::from_toml("").unwrap().alerts.low_battery_v, 3.4);
        let cfg = Config::from_toml("[alerts]\nlow_battery_v = 3.6\n").unwrap();
        assert_eq!(cfg.alerts.low_battery_v, 3.6);
    }

    #[test]
    fn a_threshold_that_is_not_a_positive_number_is_refused() {
        for bad in ["0.0", "-1.0", "nan", "inf"] {
            let e = Config::from_toml(&format!("[alerts]\nlow_battery_v = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("low_battery_v"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_alerts_fields_are_refused_with_their_name() {
        let e = Config::from_toml("[alerts]\nlow_battery = 3.4\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("low_battery"), "{e}");
    }
}
