//! The committed `src/bindings.rs` must be exactly what bindgen makes of
//! `include/vmmvar.h`: it is what vmm-sys builds from where libclang is
//! missing (and for the OpenBSD type-check), so a stale copy would silently
//! give those builds a different ABI.
//!
//! The comparison needs a fresh bindgen run; build.rs exports
//! `VMM_SYS_BINDGEN_RAN=1` when it made one, else `VMM_SYS_BINDGEN_SKIPPED`
//! with the reason, and then the test is reported as ignored.
use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// What build.rs wrote to OUT_DIR: bindgen's output, or the committed copy.
const GENERATED: &str = include_str!(env!("VMM_SYS_BINDINGS"));
const COMMITTED: &str = include_str!("../src/bindings.rs");
const NAME: &str = "committed_bindings_match_header";

fn compare() -> Result<(), Failed> {
    if GENERATED == COMMITTED {
        return Ok(());
    }
    let (g, c): (Vec<&str>, Vec<&str>) = (GENERATED.lines().collect(), COMMITTED.lines().collect());
    let first = g
        .iter()
        .zip(&c)
        .position(|(a, b)| a != b)
        .unwrap_or(g.len().min(c.len()));
    Err(format!(
        "vmm-sys/src/bindings.rs is stale: run `make bindings`\n\
         first difference at line {}:\n  generated: {:?}\n  committed: {:?}\n\
         (generated file: {})",
        first + 1,
        g.get(first).copied().unwrap_or("<end of file>"),
        c.get(first).copied().unwrap_or("<end of file>"),
        env!("VMM_SYS_BINDINGS"),
    )
    .into())
}

fn main() {
    let args = Arguments::from_args();
    let trial = match (
        option_env!("VMM_SYS_BINDGEN_RAN"),
        option_env!("VMM_SYS_BINDGEN_SKIPPED"),
    ) {
        (Some(_), _) => Trial::test(NAME, compare),
        (None, skipped) => {
            let reason = format!(
                "bindgen did not run: {}",
                skipped.unwrap_or("unknown reason")
            );
            if !args.list {
                eprintln!("note: {NAME} ignored: {reason}");
            }
            // With --ignored there is still nothing to compare against.
            Trial::ignorable_test(NAME, move || Ok(Completion::ignored_with(reason)))
                .with_ignored_flag(true)
        }
    };
    libtest_mimic::run(&args, vec![trial]).exit();
}
