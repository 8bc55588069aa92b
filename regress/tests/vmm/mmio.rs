use crate::Tests;

pub fn tests() -> Tests {
    vec![]
}
