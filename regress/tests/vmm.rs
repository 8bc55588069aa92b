//! The vmm(4) regress suite (after OpenBSD's regress/sys/arch/amd64/vmm),
//! run against the host's backend.  Every test needs the hypervisor and is
//! reported as ignored, with the reason, where it is missing; a test that
//! finds this host's hypervisor unable to do what it checks reports itself
//! as ignored at run time, with the reason.
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use vmm_regress::*;

#[path = "vmm/cpuid.rs"]
mod cpuid;
#[path = "vmm/emulation.rs"]
mod emulation;
#[path = "vmm/events.rs"]
mod events;
#[path = "vmm/mmio.rs"]
mod mmio;
#[path = "vmm/params.rs"]
mod params;
#[path = "vmm/pio.rs"]
mod pio;
#[path = "vmm/regs.rs"]
mod regs;
#[path = "vmm/verbs.rs"]
mod verbs;

/// How a test ends when it does not fail.
pub enum Outcome {
    Passed,
    /// The host cannot do what the test checks; the reason says what.
    Unsupported(String),
}

pub enum Test {
    Plain(fn() -> Result<()>),
    /// May find the host unable to run it.
    Probing(fn() -> Result<Outcome>),
}

pub type Tests = Vec<(&'static str, Test)>;

fn main() {
    let args = Arguments::from_args();
    let skip = missing_hypervisor();
    let mut tests: Tests = Vec::new();
    tests.extend(verbs::tests());
    tests.extend(pio::tests());
    tests.extend(mmio::tests());
    tests.extend(events::tests());
    tests.extend(regs::tests());
    tests.extend(params::tests());
    tests.extend(emulation::tests());
    tests.extend(cpuid::tests());
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            let t = Trial::ignorable_test(name, move || match f {
                Test::Plain(f) => f().map(|()| Completion::Completed).map_err(Failed::from),
                Test::Probing(f) => match f() {
                    Ok(Outcome::Passed) => Ok(Completion::Completed),
                    Ok(Outcome::Unsupported(why)) => Ok(Completion::ignored_with(why)),
                    Err(e) => Err(Failed::from(e)),
                },
            });
            match &skip {
                Some(why) => t.with_ignored_flag(true).with_kind(why.clone()),
                None => t,
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
