//! History checkers for Arbor's Jepsen-style tests.
//!
//! - [`linear`]: linearizability (Wing–Gong–Lowe with memoisation, P-compositional) for
//!   `register`, `cas-register` and `kv` histories;
//! - [`elle`]: Elle-style transactional anomaly detection for list-append histories;
//! - [`set`] and [`bank`]: the classic Jepsen set and bank checks;
//! - [`watch`]: every watcher of a prefix saw the same changes, in the same per-key order,
//!   with every acknowledged write and nothing else.
//!
//! Histories are read by [`history`] (Arbor JSONL, Jepsen EDN via [`edn`], old Jepsen
//! console logs) into one operation model; every checker returns a [`verdict::Verdict`].
//! [`check`] dispatches on a [`Workload`]; the `arbor-jepsen` binary is a thin CLI over it.
//!
//! [`run`] is the cluster harness behind `arbor-jepsen run`: real `arbor server` processes in
//! network namespaces (or, without root, on loopback behind per-link TCP proxies), concurrent
//! clients, nemeses (partition, kill, pause, clock, member, leader), and a report per run.

pub mod bank;
pub mod edn;
pub mod elle;
pub mod hash;
pub mod history;
pub mod linear;
pub mod run;
pub mod set;
pub mod value;
pub mod verdict;
pub mod watch;

use std::time::Duration;
use thiserror::Error;

/// Which checker to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Linearizable read/write register.
    Register,
    /// Linearizable read/write/cas register.
    CasRegister,
    /// Linearizable per-key string store (get/put/append).
    Kv,
    /// Elle list-append transactions.
    ListAppend,
    /// Grow-only set with a final read.
    Set,
    /// Bank transfers with total-preserving reads.
    Bank,
    /// Puts and guarded deletes under a prefix, and the streams of its watchers.
    Watch,
}

impl Workload {
    /// Parses a command-line model name.
    pub fn parse(name: &str) -> Option<Workload> {
        Some(match name {
            "register" => Workload::Register,
            "cas-register" => Workload::CasRegister,
            "kv" => Workload::Kv,
            "list-append" => Workload::ListAppend,
            "set" => Workload::Set,
            "bank" => Workload::Bank,
            "watch" => Workload::Watch,
            _ => return None,
        })
    }
}

/// Options for [`check`].
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Linearizability limits (time, memory, threads).
    pub linear: linear::LinOptions,
    /// List-append options (models, anomalies).
    pub elle: elle::ElleOptions,
    /// Bank: expected total of all balances (inferred from the first read if absent).
    pub bank_total: Option<i64>,
    /// Overall time budget, applied to the linearizability and cycle searches.
    pub time_limit: Option<Duration>,
}

/// Errors that prevent a check (malformed operations for the chosen workload).
#[derive(Debug, Error)]
pub enum CheckError {
    /// Linearizability input error.
    #[error(transparent)]
    Linear(#[from] linear::LinError),
    /// List-append input or option error.
    #[error(transparent)]
    Elle(#[from] elle::ElleError),
    /// Set input error.
    #[error(transparent)]
    Set(#[from] set::SetError),
    /// Bank input error.
    #[error(transparent)]
    Bank(#[from] bank::BankError),
    /// Watch input error.
    #[error(transparent)]
    Watch(#[from] watch::WatchError),
}

/// Runs the checker for `workload` on `history`.
pub fn check(
    workload: Workload,
    history: &history::History,
    opts: &CheckOptions,
) -> Result<verdict::Verdict, CheckError> {
    let mut lin = opts.linear.clone();
    let mut elle = opts.elle.clone();
    if opts.time_limit.is_some() {
        lin.time_limit = opts.time_limit;
        elle.time_limit = opts.time_limit;
    }
    Ok(match workload {
        Workload::Register => linear::check(linear::LinModel::Register, history, &lin)?,
        Workload::CasRegister => linear::check(linear::LinModel::CasRegister, history, &lin)?,
        Workload::Kv => linear::check(linear::LinModel::Kv, history, &lin)?,
        Workload::ListAppend => elle::check(history, &elle)?,
        Workload::Set => set::check(history)?,
        Workload::Bank => bank::check(history, opts.bank_total)?,
        Workload::Watch => watch::check(history)?,
    })
}
