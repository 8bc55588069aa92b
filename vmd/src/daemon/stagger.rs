//! Staggered start (vmd.c's `start_vm_batch` and `staggered_start_timer`):
//! the VMs vm.conf enables start `parallelism` at a time, the next batch
//! `delay` after the previous one, so that a host does not boot all its
//! guests at once.  `staggered start parallel N delay S` sets both;
//! without it vmd starts as many VMs as the host has CPUs, every 30 s.
//!
//! The clock is the caller's (`now`), so that the pacing can be tested
//! without waiting.
use std::time::{Duration, Instant};

use super::registry::Registry;
use crate::config::VMD_DEFAULT_STAGGERED_START_DELAY;
use vmd_proto::config::StaggeredStart;
use vmd_proto::msg::VM_STATE_WAITING;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stagger {
    /// VMs started per batch (`vmd_cfg.parallelism`).
    pub parallelism: usize,
    /// Between batches (`vmd_cfg.delay`).
    pub delay: Duration,
    /// When the timer fires, if armed.
    at: Option<Instant>,
}

impl Stagger {
    /// The settings of `staggered start`, or vmd's defaults without it:
    /// `ncpus` VMs every 30 s.
    pub fn new(cfg: Option<StaggeredStart>, ncpus: usize) -> Stagger {
        match cfg {
            Some(s) => Stagger {
                parallelism: s.parallelism.max(1) as usize,
                delay: Duration::from_secs(s.delay.max(0) as u64),
                at: None,
            },
            None => Stagger {
                parallelism: ncpus.max(1),
                delay: Duration::from_secs(VMD_DEFAULT_STAGGERED_START_DELAY as u64),
                at: None,
            },
        }
    }

    /// New settings (a reload); an armed timer stays armed.
    pub fn configure(&mut self, cfg: Option<StaggeredStart>, ncpus: usize) {
        let at = self.at;
        *self = Stagger::new(cfg, ncpus);
        self.at = at;
    }

    /// `start_vm_batch` at `now`: the ids of the VMs to start now, at most
    /// `parallelism` of those waiting to autostart, in vm.conf order, their
    /// waiting mark cleared.  When more wait, the timer is armed for the
    /// next batch.
    pub fn batch(&mut self, reg: &mut Registry, now: Instant) -> Vec<u32> {
        log::debug!("start_vm_batch: starting batch of {} vms", self.parallelism);
        let mut ids = Vec::new();
        for vm in reg.vms.iter_mut() {
            if vm.state & VM_STATE_WAITING == 0 {
                log::debug!(
                    "start_vm_batch: not starting vm {} (disabled)",
                    vm.params.name
                );
                continue;
            }
            if ids.len() == self.parallelism {
                self.at = Some(now + self.delay);
                break;
            }
            vm.state &= !VM_STATE_WAITING;
            ids.push(vm.id);
        }
        ids
    }

    /// When the timer fires, for the event loop's wait.
    pub fn deadline(&self) -> Option<Instant> {
        self.at
    }

    /// Whether the timer has fired by `now`; it is disarmed if so.
    pub fn fire(&mut self, now: Instant) -> bool {
        if self.at.is_some_and(|t| t <= now) {
            self.at = None;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmd_proto::config::VMOP_CREATE_KERNEL;
    use vmd_proto::msg::{VmopCreateParams, VM_STATE_DISABLED, VM_STATE_RUNNING};

    struct AnyGroups;
    impl super::super::registry::Groups for AnyGroups {
        fn primary_gid(&self, _: u32) -> Option<u32> {
            None
        }
        fn is_member(&self, _: u32, _: u32) -> bool {
            false
        }
    }

    /// vm.conf's VMs: `names` enabled, then `off` disabled.
    fn registry(names: &[&str], off: &[&str]) -> Registry {
        let mut r = Registry::new();
        for (name, state) in names
            .iter()
            .map(|n| (n, VM_STATE_WAITING))
            .chain(off.iter().map(|n| (n, VM_STATE_DISABLED)))
        {
            let p = VmopCreateParams {
                name: name.to_string(),
                flags: VMOP_CREATE_KERNEL,
                ..Default::default()
            };
            let i = r.register(p, None, 0, &AnyGroups).unwrap();
            r.vms[i].state |= state;
            r.vms[i].from_config = true;
        }
        r
    }

    /// One batch at `now`: the names of the VMs it starts.
    fn batch(s: &mut Stagger, r: &mut Registry, now: Instant) -> Vec<String> {
        let ids = s.batch(r, now);
        ids.iter()
            .map(|id| r.vms[r.by_id(*id).unwrap()].params.name.clone())
            .collect()
    }

    /// `staggered start parallel 1 delay 10`, three enabled VMs: one at
    /// once, the next when the timer fires 10 s later, never earlier.
    #[test]
    fn daemon_stagger_parallel_one() {
        let mut r = registry(&["a", "b", "c"], &["off"]);
        let cfg = StaggeredStart {
            parallelism: 1,
            delay: 10,
        };
        let mut s = Stagger::new(Some(cfg), 8);
        let t0 = Instant::now();
        let sec = Duration::from_secs(1);
        assert_eq!(batch(&mut s, &mut r, t0), ["a"]);
        assert_eq!(s.deadline(), Some(t0 + 10 * sec));
        assert!(!s.fire(t0 + 9 * sec));
        assert!(s.fire(t0 + 10 * sec));
        assert!(!s.fire(t0 + 10 * sec), "the timer fires once");
        assert_eq!(batch(&mut s, &mut r, t0 + 10 * sec), ["b"]);
        // A late timer: the next batch is a delay after it ran.
        assert!(s.fire(t0 + 25 * sec));
        assert_eq!(batch(&mut s, &mut r, t0 + 25 * sec), ["c"]);
        // Nothing waits any more (the disabled VM never does).
        assert_eq!(s.deadline(), None);
        assert!(s.batch(&mut r, t0 + 40 * sec).is_empty());
        assert_eq!(s.deadline(), None);
        assert_eq!(r.vms[3].state, VM_STATE_DISABLED);
    }

    /// Two at a time; a VM started by hand in between still takes its
    /// place in its batch (vmd clears its mark and config_setvm answers
    /// EALREADY without touching it).
    #[test]
    fn daemon_stagger_parallel_two() {
        let mut r = registry(&["a", "b", "c", "d", "e"], &[]);
        let cfg = StaggeredStart {
            parallelism: 2,
            delay: 5,
        };
        let mut s = Stagger::new(Some(cfg), 1);
        let t0 = Instant::now();
        assert_eq!(batch(&mut s, &mut r, t0), ["a", "b"]);
        r.vms[2].state |= VM_STATE_RUNNING;
        let t1 = s.deadline().unwrap();
        assert_eq!(t1, t0 + Duration::from_secs(5));
        assert!(s.fire(t1));
        assert_eq!(batch(&mut s, &mut r, t1), ["c", "d"]);
        let t2 = s.deadline().unwrap();
        assert!(s.fire(t2));
        assert_eq!(batch(&mut s, &mut r, t2), ["e"]);
        assert_eq!(s.deadline(), None);
    }

    /// Without `staggered start`: as many as CPUs, 30 s apart; a reload
    /// with new settings keeps an armed timer.
    #[test]
    fn daemon_stagger_defaults_and_reload() {
        let s = Stagger::new(None, 4);
        assert_eq!((s.parallelism, s.delay), (4, Duration::from_secs(30)));
        let mut r = registry(&["a", "b"], &[]);
        let mut s = Stagger::new(None, 1);
        let t0 = Instant::now();
        s.batch(&mut r, t0);
        let armed = s.deadline();
        assert!(armed.is_some());
        let cfg = StaggeredStart {
            parallelism: 3,
            delay: 0,
        };
        s.configure(Some(cfg), 1);
        assert_eq!(
            (s.parallelism, s.delay, s.deadline()),
            (3, Duration::ZERO, armed)
        );
    }
}
