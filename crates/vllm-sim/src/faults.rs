//! Faults a test can switch on at start-up or at run time (`GET`/`PUT /sim/faults`).

use serde::{Deserialize, Serialize};
use std::sync::RwLock;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added to every `/tokenize` call.
    pub tokenize_delay_ms: u64,
    /// Fraction (0–1) of `/tokenize` calls answered 500.
    pub tokenize_error_rate: f64,
    /// `/tokenize` never answers.
    pub tokenize_hang: bool,
    /// `/health` answers 503.
    pub health_fail: bool,
}

impl Faults {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.tokenize_error_rate) {
            return Err(format!("tokenize_error_rate must be within 0..=1, got {}", self.tokenize_error_rate));
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct FaultSwitch(RwLock<Faults>);

impl FaultSwitch {
    pub fn new(f: Faults) -> Self {
        Self(RwLock::new(f))
    }
    pub fn get(&self) -> Faults {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
    pub fn set(&self, f: Faults) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = f;
    }
}
