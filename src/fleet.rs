//! The fleet: the instances of one server that fragment together, and must not all drain at
//! once. This family's members will answer the monitor's one question — may this instance
//! drain now? — between the policy's wish and the drain, and be told of every transition, so
//! that a slot is given back once the recycled server is healthy again.
//!
//! Only [`Alone`] exists today: an instance on its own, which may always drain and keeps
//! nothing of what it is told. A member on Kubernetes Leases is the next one; like a source,
//! it comes with its settings beside its code, built by `config` and started in `sidecar`.

use crate::policy::Transition;

/// What the monitor tells the fleet, and will ask it.
pub trait Coordinator: Send {
    /// This instance's state changed (a drain began, a recycle was asked, a new incarnation
    /// was found, it is healthy again).
    fn told(&mut self, transition: &Transition);
}

/// One instance, coordinating with nobody.
pub struct Alone;

impl Coordinator for Alone {
    fn told(&mut self, _transition: &Transition) {}
}
